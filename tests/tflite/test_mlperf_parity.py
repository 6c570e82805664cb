"""The MLPerf Tiny int8 models (AD01, KWS DS-CNN, ResNet-8) simulated by mrq on the two TFLite
profiles: 0 mismatching elements in the output and in every intermediate tensor, against

* LiteRT (``tflite-int8`` vs BUILTIN_REF, ``litert-default`` vs the default XNNPACK interpreter,
  per tensor with preserve_all_tensors, and the output of the fused default interpreter);
* the numpy reference of tests/reference/tflite_ref.py (always, fewer inputs).

CI keeps it light (MRQ_TFLITE_PARITY_INPUTS random inputs per model, default 20, plus 20 real
AD01 windows); bench/litert_parity_count.py runs the >= 100-input count.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from tests.reference import tflite_ref  # noqa: E402
from tflite_helpers import (MLPERF, PROFILE_FLAVOUR, ad01_windows, compare_rows, litert,  # noqa: E402
                            litert_run, model_path, mrq_run, quantize_tflite)

N_INPUTS = int(os.environ.get("MRQ_TFLITE_PARITY_INPUTS", "20"))
PROFILES = ("tflite-int8", "litert-default")

pytestmark = pytest.mark.skipif(not os.path.exists(model_path("kws")),
                                reason="MLPerf Tiny models not found (set MRQ_MLPERF_TINY)")


def _inputs(key: str, graph, n: int, seed: int = 0) -> dict:
    name = graph.inputs[0]
    t = graph.tensors[name]
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(n,) + tuple(t.shape[1:])).astype(np.int8)
    if key == "ad01":
        real = ad01_windows(n)
        x = np.concatenate([x, quantize_tflite(real, float(t.qparams.scale[0]), int(t.qparams.zero_point[0]))])
    return {name: x}


def _assert_exact(counts: dict, graph):
    out = graph.outputs[0]
    assert out in counts, "the graph output was not compared"
    assert len(counts) >= len(graph.nodes) - 1, f"only {len(counts)} tensors compared"
    bad = {k: v for k, v in counts.items() if v[0]}
    assert not bad, f"mismatching elements (tensor: [mismatches, elements]): {bad}"


@pytest.mark.skipif(litert() is None, reason="ai_edge_litert is not installed")
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("key", sorted(MLPERF))
def test_mlperf_vs_litert(key, profile):
    path = model_path(key)
    from mrq.tflite_import import import_tflite
    graph = import_tflite(path)
    feeds = _inputs(key, graph, N_INPUTS)
    graph, outputs, trace = mrq_run(graph, profile, feeds)
    rows = litert_run(path, feeds, profile, preserve_all=True)
    _assert_exact(compare_rows(trace, rows), graph)
    out = graph.outputs[0]
    assert outputs[out].dtype == rows[0][out].dtype
    assert outputs[out].shape == (len(rows),) + rows[0][out].shape[1:]
    fused = litert_run(path, feeds, profile, preserve_all=False)
    assert np.array_equal(outputs[out], np.concatenate([r[out] for r in fused]))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("key", sorted(MLPERF))
def test_mlperf_vs_numpy_reference(key, profile):
    path = model_path(key)
    from mrq.tflite_import import import_tflite
    graph = import_tflite(path)
    feeds = _inputs(key, graph, 4, seed=1)
    graph, outputs, trace = mrq_run(graph, profile, feeds)
    interp = tflite_ref.Interpreter(path, flavour=PROFILE_FLAVOUR[profile])
    name = graph.inputs[0]
    rows = [interp.run({name: feeds[name][i:i + 1]}) for i in range(len(feeds[name]))]
    _assert_exact(compare_rows(trace, rows), graph)


@pytest.mark.skipif(litert() is None, reason="ai_edge_litert is not installed")
def test_resnet8_paths_differ():
    """The reference kernels and the default (XNNPACK) path give different ResNet-8 outputs, and
    each profile follows its own path."""
    path = model_path("resnet8")
    from mrq.tflite_import import import_tflite
    graph = import_tflite(path)
    feeds = _inputs("resnet8", graph, 40, seed=3)
    out = graph.outputs[0]
    sims = {p: mrq_run(graph, p, feeds)[1][out] for p in PROFILES}
    lits = {p: np.concatenate([r[out] for r in litert_run(path, feeds, p, preserve_all=False)])
            for p in PROFILES}
    assert np.count_nonzero(lits["tflite-int8"] != lits["litert-default"]) > 0
    for p in PROFILES:
        assert np.array_equal(sims[p], lits[p]), p


def test_cli_sim_tflite(tmp_path):
    """`mrq sim MODEL.tflite --profile ... --inputs IN.npz --out OUT.npz`: outputs keyed by the
    TFLite output names with LiteRT's dtype and shape, equal to LiteRT bit for bit."""
    path = model_path("kws")
    from mrq.tflite_import import import_tflite
    graph = import_tflite(path)
    feeds = _inputs("kws", graph, 3, seed=5)
    inp, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inp, **feeds)
    for profile in PROFILES:
        proc = subprocess.run([sys.executable, "-m", "mrq.cli", "sim", path, "--profile", profile,
                               "--inputs", str(inp), "--out", str(out), "-q"],
                              cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        got = dict(np.load(out))
        assert list(got) == graph.outputs
        expected = mrq_run(graph, profile, feeds)[1]
        arr = got[graph.outputs[0]]
        assert arr.dtype == np.int8 and arr.shape == (3, 12)
        assert np.array_equal(arr, expected[graph.outputs[0]])
        if litert() is not None:
            rows = litert_run(path, feeds, profile, preserve_all=False)
            assert np.array_equal(arr, np.concatenate([r[graph.outputs[0]] for r in rows]))
