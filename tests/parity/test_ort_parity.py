"""Parity with ONNX Runtime: random float CNNs quantized by ORT's quantize_static (QDQ and
QOperator; u8/s8 activations; s8/u8 weights; per-channel on/off; symmetric activations and weights
on/off), each run by ORT (CPU EP, default optimization level, session.qdqisint8allowed=1) and by
`mrq sim --profile onnxruntime-cpu` on random inputs (some far outside the calibration range):
0 mismatching output elements.

Most models go through the in-process API (mrq.api.simulate_model); every CLI_EVERY-th model also
goes through the CLI (the first in a subprocess, the others through mrq.cli.main in-process). Environment knobs: MRQ_PARITY_COUNT (models, default
120), MRQ_PARITY_INPUTS (input sets per model, default 2). The summary (models, elements,
mismatching elements) is printed at the end of the session (visible with -s) and written to
<pytest basetemp>/ort_parity_summary.txt.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import numpy as np
import pytest

from . import compare, zoo
from .ort_runner import inexact_ops, optimized_graph, run_ort

COUNT = int(os.environ.get("MRQ_PARITY_COUNT", "120"))
INPUTS_PER_MODEL = int(os.environ.get("MRQ_PARITY_INPUTS", "2"))
SEED = 20261126
CLI_EVERY = 25  # models 0, 25, 50, 75, 100 also run through the CLI (configs 0, 25, 2, 27, 4)
GRID = zoo.config_grid()
IDS = [f"m{i:03d}-{GRID[i % len(GRID)].key}" for i in range(COUNT)]


@pytest.fixture(scope="session")
def zoo_cases(tmp_path_factory):
    t = time.perf_counter()
    cases = zoo.generate_shared(tmp_path_factory, COUNT, SEED)
    return cases, time.perf_counter() - t


@pytest.fixture(scope="session")
def parity_record(tmp_path_factory):
    rec = {"models": Counter(), "elements": Counter(), "mismatch": Counter(), "bad": {}}
    yield rec
    n_models = len(rec["models"])
    if not n_models:
        return
    per_cfg = Counter()
    for name, n in rec["mismatch"].items():
        per_cfg[name.split("_", 1)[1]] += n
    line = (f"ORT parity: {n_models} models, {sum(rec['elements'].values())} output elements, "
            f"{sum(rec['mismatch'].values())} mismatching elements, "
            f"{sum(1 for v in rec['mismatch'].values() if v)} models with mismatches")
    lines = [line] + [f"  {k}: {v} mismatching elements" for k, v in sorted(per_cfg.items()) if v]
    lines += [f"  {name}: {msg}" for name, msg in sorted(rec["bad"].items())]
    text = "\n".join(lines) + "\n"
    out = tmp_path_factory.getbasetemp() / "ort_parity_summary.txt"
    out.write_text(text)
    print("\n" + text + f"(written to {out})")


# ------------------------------------------------------------------------------------------
# The zoo itself (runs without mrq)
# ------------------------------------------------------------------------------------------


def test_zoo_covers_the_grid(zoo_cases):
    cases, seconds = zoo_cases
    assert len(cases) == COUNT
    assert COUNT < 100 or len(cases) >= 100
    cfgs = Counter(c.config for c in cases)
    if COUNT >= 2 * len(GRID):
        assert set(cfgs) == set(GRID) and min(cfgs.values()) >= 2
    for attr in ("quant_format", "activation_type", "weight_type", "per_channel",
                 "activation_symmetric", "weight_symmetric"):
        assert len({getattr(c.config, attr) for c in cases}) == 2, attr
    # distinct architectures (the arch string includes every layer's hyper-parameters)
    assert len({(c.arch, c.input_shape_chw) for c in cases}) >= 0.95 * len(cases)
    ops = " ".join(c.arch for c in cases)
    for needed in ("conv", "/g", "add", "mul", "mul(broadcast)", "concat", "maxpool",
                   "avgpool", "cip0", "cip1", "gap", "gemm", "matmul", "flatten", "reshape",
                   "relu", "clip6", "/d2", "/s2"):
        assert needed in ops, needed
    assert seconds < 60, f"zoo generation took {seconds:.1f} s"


def test_zoo_ort_graphs_are_exact(zoo_cases, tmp_path):
    """Every model's ORT-optimized graph consists of integer kernels, data movement, and
    single-rounding float ops only (no float Conv/Gemm/pool reductions)."""
    cases, _ = zoo_cases
    bad = {}
    for c in cases:
        g = optimized_graph(c.path, tmp_path / "opt.onnx")
        if inexact_ops(g):
            bad[c.name] = inexact_ops(g)
    assert not bad


def test_zoo_inputs_saturate(zoo_cases):
    """The test inputs go beyond the input quantizer's range (calibrated on milder data)."""
    import onnx
    from onnx import numpy_helper

    cases, _ = zoo_cases
    checked = 0
    for c in cases[:: max(1, len(cases) // 20)]:
        m = onnx.load(str(c.path))
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == zoo.INPUT_NAME]
        if not qs:  # e.g. QOperator model starting with a float MaxPool
            continue
        q = qs[0]
        checked += 1
        scale, zp = float(inits[q.input[1]]), int(inits[q.input[2]])
        info = np.iinfo(inits[q.input[2]].dtype)
        x = c.make_inputs(0)[zoo.INPUT_NAME]
        codes = np.rint(x / scale) + zp
        assert ((codes < info.min) | (codes > info.max)).mean() > 0.02, c.name
    assert checked >= 10


def test_ort_runs_deterministically(zoo_cases):
    cases, _ = zoo_cases
    for c in cases[:: max(1, len(cases) // 10)]:
        feeds = c.make_inputs(0)
        a, b = run_ort(c.path, feeds), run_ort(c.path, feeds)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


# ------------------------------------------------------------------------------------------
# Parity
# ------------------------------------------------------------------------------------------


def _check(case, simulate, record, label):
    problems = []
    for k in range(INPUTS_PER_MODEL):
        feeds = case.make_inputs(k)
        ref = run_ort(case.path, feeds)
        record["models"][case.name] += 1
        record["elements"][case.name] += sum(v.size for v in ref.values())
        try:
            got = simulate(case.path, feeds)
        except Exception as e:
            record["mismatch"][case.name] += sum(v.size for v in ref.values())
            record["bad"][case.name] = f"{label} raised {type(e).__name__}: {e}"
            raise AssertionError(f"{label} failed on {case.name} (config {case.config.key}, "
                                 f"inputs #{k})\narch: {case.arch}") from e
        for d in compare.diff_outputs(ref, got):
            record["mismatch"][case.name] += d.n_mismatch
            if d.n_mismatch or d.problem:
                problems.append(f"inputs #{k}, output {d.name!r}: {d.problem or ''}"
                                f"{d.n_mismatch}/{d.n_elements} elements differ; first (index, "
                                f"ORT, mrq): {d.examples}")
        record["mismatch"][case.name] += 0
        if not problems:
            for name, a in ref.items():  # the literal requirement, as a belt-and-braces check
                assert got[name].dtype == a.dtype and got[name].shape == a.shape
                np.testing.assert_array_equal(got[name], a)
    if problems:
        record["bad"][case.name] = problems[0][:300]
        pytest.fail(
            f"{label} vs ORT mismatch for {case.name} (config {case.config.key})\n"
            f"arch: {case.arch}\n" + "\n".join(problems)
            + "\nORT optimized graph:\n" + compare.describe_model(case.path),
            pytrace=False,
        )


@pytest.mark.parametrize("idx", range(COUNT), ids=IDS)
def test_parity_api(idx, zoo_cases, parity_record):
    if not compare.api_available():
        pytest.skip("mrq/api.py (simulate_model) does not exist yet")
    _check(zoo_cases[0][idx], compare.simulate_api, parity_record, "mrq.api.simulate_model")


@pytest.mark.parametrize("idx", range(0, COUNT, CLI_EVERY), ids=IDS[::CLI_EVERY])
def test_parity_cli(idx, zoo_cases, tmp_path):
    if not compare.cli_available():
        pytest.skip("the mrq CLI (mrq/__main__.py or an `mrq` executable) does not exist yet")
    # the first through a real process (the entry point); the others through mrq.cli.main in
    # this one: the same command line and files, 2 s of interpreter start-up less each
    sim = lambda p, f: compare.simulate_cli(p, f, workdir=tmp_path, in_process=idx > 0)  # noqa: E731
    _check(zoo_cases[0][idx], sim, {"models": Counter(), "elements": Counter(),
                                    "mismatch": Counter(), "bad": {}}, "mrq sim (CLI)")
