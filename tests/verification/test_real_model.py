"""The verification kit on a real model: the first of bench/models/*.onnx (e.g. the QAT
MobileNetV2 on Fashion-MNIST) or the MLPerf Tiny int8 TFLite models in /work/shared/models
(skipped when neither is available, e.g. in a clean CI clone)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import load_real_model, real_inputs, run_cli
from test_verify import flip, manifest

from mrq.golden import load_golden, make_golden
from mrq.testing import assert_matches_golden
from mrq.verify import verify_dirs

PROFILE = "tflite-int8"


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    graph, path = load_real_model()
    feeds = real_inputs(graph, batch=2)
    d = tmp_path_factory.mktemp("real") / "golden"
    make_golden(path, PROFILE, feeds, str(d), write_bin=True)
    return path, graph, feeds, d


def test_golden_set_covers_every_layer_and_verifies(real, tmp_path):
    path, _graph, _feeds, d = real
    m = manifest(d)
    kinds = {e["kind"] for e in m["layers"]}
    assert kinds & {"conv", "gemm"}
    n_acc = sum(1 for e in m["layers"] if e.get("accumulator"))
    assert n_acc == len(m["accumulators"]) > 0
    for a in m["accumulators"]:
        assert a["static_min"] <= a["observed_min"] <= a["observed_max"] <= a["static_max"]
    dump = shutil.copytree(d, tmp_path / "dump")
    r = run_cli("verify", d, "--actual", dump, "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_matches_golden(path, PROFILE, str(d))


def _mutations(d, rng):
    """(tensor entry, format, flat index, bit) for a tensor of each role, then for eight other
    tensors drawn at random; the formats take turns."""
    metas = manifest(d)["tensors"]
    roles_seen = set()
    picks = [m for m in metas if m["role"] not in roles_seen and not roles_seen.add(m["role"])]
    others = [m for m in metas if m not in picks]
    picks += [others[i] for i in rng.choice(len(others), size=min(8, len(others)), replace=False)]
    out = []
    for k, meta in enumerate(picks):
        flat = int(rng.integers(0, int(np.prod(meta["shape"]))))
        bit = int(rng.integers(0, 23 if meta["encoding"] == "ieee754-binary32" else meta["bits"]))
        out.append((meta, ("npy", "hex", "bin")[k % 3], flat, bit))
    return out


@pytest.mark.slow
def test_mutations_on_the_real_model_are_caught(real, tmp_path):
    """Every mutation of :func:`_mutations` in one dump, so that one verify reads the whole set
    (it checks each tensor on its own): each mutated tensor, and no other, is reported with one
    differing element at its coordinates, and the first mismatch is the earliest of them."""
    _, _, _, d = real
    dump = shutil.copytree(d, tmp_path / "dump")
    want = {}
    for meta, fmt, flat, bit in _mutations(d, np.random.default_rng(7)):
        flip(dump, meta, fmt, flat, bit)
        want[meta["name"]] = tuple(int(c) for c in np.unravel_index(flat, meta["shape"]))
    report = verify_dirs(str(d), str(dump))
    bad = {c.name: c for c in report.checks if not c.ok}
    assert set(bad) == set(want)
    for name, index in want.items():
        assert bad[name].n_diff == 1 and bad[name].first_index == index, name
    fm = report.first_mismatch
    assert fm is not None and fm.layer_index == min(c.layer_index for c in bad.values())


@pytest.mark.long
def test_mutations_on_the_real_model_are_caught_one_at_a_time(real, tmp_path):
    """The same mutations one at a time (a verify of the whole set each): each is then the first
    mismatch, and the restored dump verifies."""
    _, _, _, d = real
    dump = shutil.copytree(d, tmp_path / "dump")
    for meta, fmt, flat, bit in _mutations(d, np.random.default_rng(7)):
        flip(dump, meta, fmt, flat, bit)
        fm = verify_dirs(str(d), str(dump)).first_mismatch
        assert fm is not None and fm.name == meta["name"] and fm.n_diff == 1
        assert fm.first_index == tuple(int(c) for c in np.unravel_index(flat, meta["shape"]))
        shutil.copyfile(os.path.join(d, meta["files"][fmt]), os.path.join(dump, meta["files"][fmt]))
    assert verify_dirs(str(d), str(dump)).ok


def test_layout_mistake_on_the_real_model(real, tmp_path):
    _, _, _, d = real
    gs = load_golden(str(d))
    t = next((t for t in gs.tensors.values() if t.role == "activation" and t.array.ndim == 4
              and len(set(t.array.shape[1:])) == 3 and t.array.std() > 0), None)
    if t is not None:
        axes = t.layout
        perm = (0, 3, 1, 2) if axes == "NHWC" else (0, 2, 3, 1)
    else:   # a model without 4-D activations: a [K, N] weight written as [N, K]
        t = next(t for t in gs.tensors.values() if t.role == "weight" and t.array.ndim == 2
                 and t.array.shape[0] != t.array.shape[1])
        axes, perm = t.layout, (1, 0)
    dump = tmp_path / "dump"
    dump.mkdir()
    np.ascontiguousarray(t.array.transpose(perm)).tofile(dump / f"{t.file}.bin")
    fm = verify_dirs(str(d), str(dump)).first_mismatch
    want = "".join(axes[i] for i in perm)
    assert fm.name == t.name and f"the dump is in {want} order" in fm.diagnosis[0]


def test_check_and_compare_on_the_real_model(real, tmp_path):
    path, _graph, feeds, _ = real
    np.savez(tmp_path / "in.npz", **feeds)
    r = run_cli("check", path, "--profile", PROFILE, "--inputs", tmp_path / "in.npz", "--json", tmp_path / "c.json")
    assert r.returncode in (0, 1) and "accumulators" in r.stdout
    rep = json.loads((tmp_path / "c.json").read_text())
    assert rep["accumulators"] and all(a["observed_max"] is not None for a in rep["accumulators"])
    r = run_cli("compare", path, "--profiles", PROFILE, "nna-sym8", "--inputs", tmp_path / "in.npz",
                "-o", tmp_path / "r.html", "--json", tmp_path / "r.json", "--no-progress")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    for p in rep["profiles"]:
        assert p["error"] is None and p["layers"], p
