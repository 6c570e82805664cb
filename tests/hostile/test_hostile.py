"""Every case of the hostile-input corpus (:mod:`tests.hostile.corpus`): exit code 2, exactly one
line on stderr (no traceback) that names the offending file or node, nothing left in the output
folder, and, for the cases that could hang or allocate, an end within a deadline under an
address-space cap."""
from __future__ import annotations

import os
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from tests.hostile import models as M
from tests.hostile.corpus import CASES, Assets, Ctx, problems
from tests.hostile.isolate import run_in_process, run_isolated, start

DEADLINE_S = 20.0          # an isolated case that has not ended by then hangs


def _run(argv) -> tuple:
    return run_in_process(argv)


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Assets:
    start()   # the fork server imports mrq meanwhile
    root = tmp_path_factory.mktemp("hostile_assets")
    conv = M.write_onnx(M.conv_qdq(), root / "conv.onnx")
    inputs = str(root / "conv_in.npz")
    np.savez(inputs, x=np.random.default_rng(3).standard_normal((2, 4, 6, 6)).astype(np.float32))
    profile = root / "profile.yaml"
    profile.write_text((pathlib.Path(__file__).resolve().parents[2] / "hw_profiles" /
                        "onnxruntime-cpu.yaml").read_text())
    tfl = root / "conv.tflite"
    tfl.write_bytes(M.conv_tflite())
    golden = str(root / "golden")
    code, err, _ = _run(["golden", conv, "--profile", "onnxruntime-cpu", "--inputs", inputs, "-o", golden, "-q"])
    assert code == 0, err
    return Assets(root, conv, inputs, str(profile), str(tfl), golden)


def test_corpus_size():
    assert len(CASES) >= 250


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case, assets, tmp_path):
    (tmp_path / "case").mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv, expect = case.build(Ctx(tmp_path / "case", out_dir, assets))
    if case.isolated:
        code, err, stdout = run_isolated(argv, DEADLINE_S)
    else:
        code, err, stdout = _run(argv)
    wrong = problems(case, expect, code, err, stdout, sorted(os.listdir(out_dir)))
    assert not wrong, "; ".join(wrong) + f"\nstderr:\n{err[:3000]}"
