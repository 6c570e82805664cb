"""Accumulator analysis (static worst case, safe width, observed range) and `mrq check`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import DEMO_MODEL, cnn_inputs, demo_feeds, make_cnn, run_cli
from mrq import accumulators as accmod
from mrq.commands.check import check_model
from simulator.program import Step


@pytest.mark.parametrize("lo,hi,bits", [(0, 0, 1), (-1, 0, 1), (0, 1, 2), (-128, 127, 8), (-129, 0, 9),
                                        (0, 128, 9), (-(2 ** 31), 2 ** 31 - 1, 32), (-(2 ** 31) - 1, 0, 33)])
def test_signed_bits_for(lo, hi, bits):
    assert accmod.signed_bits_for(lo, hi) == bits


def _gemm_step(w, wzp, bias, xzp, acc_bits=64):
    return Step("gemm", "g", ("x",), ("y",), {
        "weight": w, "weight_zero_point": wzp, "bias": bias, "input_zero_point": xzp,
        "acc_bits": acc_bits, "acc_overflow": "wrap", "rq_mode": "none", "out_dtype": "int64",
        "channel_axis": -1})


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 40), n=st.integers(1, 6), seed=st.integers(0, 10 ** 6),
       x_dtype=st.sampled_from(["int8", "uint8", "int16"]))
def test_static_bound_is_attained_and_never_exceeded(k, n, seed, x_dtype):
    """The worst-case input (x = max where w' > 0, min where w' < 0) reaches the static maximum
    exactly, the opposite input the minimum, and random inputs stay inside."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(x_dtype)
    x_lo = int(rng.integers(info.min, 0)) if info.min < 0 else int(rng.integers(0, 50))
    x_hi = int(rng.integers(max(x_lo, 1), info.max + 1))
    xzp = int(rng.integers(x_lo, x_hi + 1))
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    wzp = rng.integers(-3, 4, n).astype(np.int64)
    bias = rng.integers(-50000, 50000, n).astype(np.int64)
    step = _gemm_step(w, wzp, bias, xzp)
    lo, hi, worst = accmod.static_range(step, (x_lo, x_hi))
    ws = w.astype(np.int64) - wzp[None, :]
    x_max = np.where(ws > 0, x_hi, x_lo).T.astype(x_dtype)       # [n, k]: one row per channel
    x_min = np.where(ws > 0, x_lo, x_hi).T.astype(x_dtype)
    acc_max = accmod.compute_accumulator(step, x_max, exact=True)  # [n, n]
    acc_min = accmod.compute_accumulator(step, x_min, exact=True)
    assert max(int(acc_max[c, c]) for c in range(n)) == hi
    assert min(int(acc_min[c, c]) for c in range(n)) == lo
    xr = rng.integers(x_lo, x_hi + 1, (16, k)).astype(x_dtype)
    acc = accmod.compute_accumulator(step, xr, exact=True)
    assert lo <= acc.min() and acc.max() <= hi
    assert accmod.signed_bits_for(lo, hi) >= accmod.signed_bits_for(int(acc.min()), int(acc.max()))


def test_value_ranges_follow_fused_clamps_and_movement():
    from mrq.lower import arithmetic_from_profile, lower
    from mrq.hw_profile import load_profile
    g = make_cnn(0)
    g.node("conv1").attrs["clamp"] = (0.0, 3.0)        # ReLU6-like: 3.0 / 0.05 = 60 codes above zp -128
    lowered = lower(g, arithmetic_from_profile(load_profile("nna-sym8")))
    ranges = accmod.value_ranges(lowered.program)
    assert ranges["a1"] == (-128, -68)
    assert ranges["f"] == ranges["g"]                   # reshape passes the range on
    rows = {r.layer: r for r in accmod.static_analysis(lowered.program)}
    assert rows["dwconv"].input_range == (-128, -68)
    assert rows["conv1"].input_range == (-128, 127)


def test_observed_range_and_overflow_on_a_generated_model():
    g = make_cnn(0, big_weights=True, channels=(32, 16, 16))
    feeds = cnn_inputs(g)
    feeds["x"] = np.abs(feeds["x"]) * 3
    lines, rows, _ = check_model(g, "nna-sym8-acc20", feeds)
    r = {row.layer: row for row in rows}["conv1"]
    assert r.can_overflow and r.safe_bits == 24 and r.acc_bits == 20
    assert r.observed_bits > 20 and r.observed_overflow > 0
    assert r.static_min <= r.observed_min and r.observed_max <= r.static_max
    assert any(line.startswith("conv1: accumulator can overflow") and "needs 24 bits" in line for line in lines)
    # the same model fits a 32-bit accumulator
    lines32, rows32, _ = check_model(g, "nna-sym8", feeds)
    assert not any("accumulator" in line for line in lines32)
    assert all(not row.can_overflow and row.observed_overflow == 0 for row in rows32)


def test_golden_manifest_carries_the_analysis(demo_golden):
    m = json.loads((demo_golden / "manifest.json").read_text())
    acc = {a["layer"]: a for a in m["accumulators"]}
    assert set(acc) == {"stem_conv", "dw_conv", "pw_conv", "down_conv", "classifier"}
    for a in acc.values():
        assert a["static_min"] <= a["observed_min"] <= a["observed_max"] <= a["static_max"]
        assert a["safe_bits"] == accmod.signed_bits_for(a["static_min"], a["static_max"])
        assert a["acc_bits"] == 32 and a["can_overflow"] is False and a["observed_overflow"] == 0
    assert acc["down_conv"]["safe_bits"] == 21


def test_cli_check_exit_codes_and_table(tmp_path):
    r = run_cli("check", DEMO_MODEL, "--profile", "onnxruntime-cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "satisfies profile 'onnxruntime-cpu'" in r.stdout and "down_conv" in r.stdout
    np.savez(tmp_path / "in.npz", **demo_feeds(2))
    r = run_cli("check", DEMO_MODEL, "--profile", "nna-sym8-acc20", "--inputs", tmp_path / "in.npz",
                "--json", tmp_path / "c.json")
    assert r.returncode == 1
    out = r.stdout.splitlines()
    assert any(line.startswith("down_conv: accumulator can overflow") and "needs 21 bits" in line and
               "has 20" in line for line in out)
    assert any(line.startswith("r1_QuantizeLinear_Output: activations: zero point -128") for line in out)
    assert "OVERFLOW" in r.stdout and "observed [min, max]" in r.stdout
    rep = json.loads((tmp_path / "c.json").read_text())
    assert rep["ok"] is False and any(a["layer"] == "down_conv" and a["can_overflow"] for a in rep["accumulators"])
    # -q: one line per violation and nothing else
    r = run_cli("check", DEMO_MODEL, "--profile", "nna-sym8-acc20", "-q")
    assert r.returncode == 1 and len(r.stdout.strip().splitlines()) == len(rep["violations"])


def test_check_flags_weight_codes_outside_the_profile_width():
    from mrq.onnx_import import load_model
    lines, _, _ = check_model(load_model(DEMO_MODEL), "nna-w4a8")
    assert any("weights:" in line and "outside the profile's 4-bit range [-7, 7]" in line for line in lines)


def test_check_user_errors(tmp_path):
    r = run_cli("check", tmp_path / "missing.onnx", "--profile", "nna-sym8")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("check", DEMO_MODEL, "--profile", "no-such-profile")
    assert r.returncode == 2
