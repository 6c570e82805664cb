"""The one rounding table (simulator/rounding.py) and every path that rounds with it, against
exact ``Fraction`` arithmetic (tests/reference/primitives_ref.round_fraction evaluates a mode's
rule on the exact value).

Paths: the jitted scalar ``round_float``, ``rounding_shift_right``, ``rounding_divide`` and
``mul_shift_round``; ``quant.requantize`` for rq_mode fixed/shift/fp32/fp32_zp_in through the
general kernel, the scalar branch-free epilogue and the 16-lane vector epilogue; every 16-lane
epilogue kind directly, its hardware fast paths against the IR generated from the rule alone;
``quantize`` (the vector float rounding); numpy ``round_array``; the SIMD-off build in a
subprocess; and a ``half_down`` profile end to end. Values: exact ties (positive and negative),
their float neighbours, random values, int64/int32 extremes and float specials.
"""
import contextlib
import io
import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fractions import Fraction  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from numba import njit  # noqa: E402

from simulator import primitives as prim  # noqa: E402
from simulator import rounding as R  # noqa: E402
from simulator.kernels import epilogue as ep_k  # noqa: E402
from simulator.kernels import quant, simd  # noqa: E402
from tests.reference import primitives_ref as ref  # noqa: E402
from tests.reference import quant_ref  # noqa: E402

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)
MODES = R.NAMES
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
HALF = Fraction(1, 2)

# What each name means, written independently of the table's predicates. A new mode needs its
# closed form here: the table's rule is checked against it.
CLOSED_FORMS = {
    "half_even": round,  # Python rounds a Fraction half to even
    "half_away": lambda v: math.floor(v + HALF) if v >= 0 else -math.floor(-v + HALF),
    "half_up": lambda v: math.floor(v + HALF),
    "floor": math.floor,
    "toward_zero": math.trunc,
    "half_down": lambda v: math.ceil(v - HALF),
}


def sat64(v: int) -> int:
    return ref.saturate_to(v, I64_MIN, I64_MAX)


def tie_fractions():
    """Exact ties k + 1/2 and their rational neighbours k + 1/2 +- 1/64, k, k +- 1/4."""
    out = []
    for k in range(-9, 10):
        out += [Fraction(k), Fraction(2 * k + 1, 2), Fraction(2 * k + 1, 2) + Fraction(1, 64),
                Fraction(2 * k + 1, 2) - Fraction(1, 64), Fraction(4 * k + 1, 4),
                Fraction(4 * k - 1, 4)]
    return out


def tie_floats():
    """float64 ties, their nextafter neighbours, integers, extremes and tiny values."""
    vals = []
    for k in range(-9, 10):
        t = k + 0.5
        vals += [float(k), t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf), k + 0.25,
                 k - 0.25]
    for big in (2.0**51, 2.0**52, 2.0**53, 2.0**62, 2.0**63):
        for v in (big, big - 0.5, big + 0.5, big - 1.5, np.nextafter(big, 0.0)):
            vals += [v, -v]
    vals += [5e-324, -5e-324, 0.49999999999999994, -0.49999999999999994, 0.5000000000000001,
             -0.5000000000000001, 0.0, -0.0, 1e300, -1e300]
    return [float(v) for v in vals]


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------
def test_table_names_codes_and_rules_agree():
    assert len(set(R.NAMES)) == len(R.MODES)
    assert list(R.CODES.values()) == list(range(len(R.MODES)))
    for code, m in enumerate(R.MODES):
        assert R.CODES[m.name] == code == m.code
        assert R.get_mode(m.name) is m and R.get_mode(code) is m
        assert tuple(R.RULE_TABLE[code]) == (m.above.table, m.tie.table, m.below.table)
    assert prim.ROUNDING_CODES is R.CODES
    for bad in ("nearest", len(R.MODES), -1, True, None):
        with pytest.raises(KeyError):
            R.get_mode(bad)


def test_every_mode_means_its_name():
    assert set(CLOSED_FORMS) == set(R.NAMES)
    rng = np.random.default_rng(1)
    values = tie_fractions() + [Fraction(int(n), int(d)) for n, d in
                                zip(rng.integers(-10**12, 10**12, 300), rng.integers(1, 10**6, 300))]
    for name in R.NAMES:
        for v in values:
            assert ref.round_fraction(v, name) == CLOSED_FORMS[name](v), (name, v)


def test_half_down_is_ties_toward_minus_infinity():
    got = [ref.round_fraction(Fraction(k, 2), "half_down") for k in range(-5, 6)]
    assert got == [-3, -2, -2, -1, -1, 0, 0, 1, 1, 2, 2]


def test_quant_rejects_unknown_mode_listing_the_table():
    with pytest.raises(quant.KernelInputError, match="half_down"):
        quant.rounding_code("nearest")


# --------------------------------------------------------------------------------------------
# numpy round_array (lowering, verify)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_round_array_ties_neighbours_extremes(mode):
    x = np.array(tie_floats())
    got = R.round_array(x, mode)
    assert got.dtype == np.float64 and got.shape == x.shape
    for v, g in zip(x, got):
        assert Fraction(float(g)) == ref.round_float(v, mode), (v, mode)
    specials = np.array([np.inf, -np.inf, np.nan])
    out = R.round_array(specials, R.CODES[mode])
    assert out[0] == np.inf and out[1] == -np.inf and np.isnan(out[2])
    assert R.round_array(np.float32(2.5), mode).shape == ()


@SETTINGS
@given(xs=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=40),
       mode=st.sampled_from(MODES))
def test_round_array_random(xs, mode):
    got = R.round_array(np.array(xs), mode)
    assert [Fraction(float(g)) for g in got] == [ref.round_float(v, mode) for v in xs]


def test_round_up_on_python_ints():
    # mrq.verify rounds products wider than int64 as object arrays of Python ints
    num = np.array([2**70 + 2**9, -(2**70) - 2**9, 3 * 2**69 + 2**9 + 1, -5], dtype=object)
    s = 10
    q = num >> s
    r = num - (q << s)
    half = 1 << (s - 1)
    cmp = np.asarray(r > half, np.int64) - np.asarray(r < half, np.int64)
    for mode in MODES:
        up = R.round_up(q, cmp, r != 0, mode)
        assert [int(a) + int(b) for a, b in zip(q, up)] == \
            [ref.round_fraction(Fraction(int(n), 2**s), mode) for n in num]


# --------------------------------------------------------------------------------------------
# Scalar jitted primitives
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_round_float_ties_neighbours_extremes_specials(mode):
    code = R.CODES[mode]
    for v in tie_floats():
        assert prim.round_float(v, code) == sat64(ref.round_float(v, mode)), (v, mode)
        if abs(v) < 3e38:
            v32 = np.float32(v)
            assert prim.round_float(v32, code) == sat64(ref.round_float(v32, mode)), (v32, mode)
    assert prim.round_float(np.nan, code) == I64_MIN
    assert prim.round_float(np.inf, code) == I64_MAX
    assert prim.round_float(-np.inf, code) == I64_MIN
    assert prim.round_float(np.float32(np.nan), code) == I64_MIN


@SETTINGS
@given(x=st.floats(allow_nan=False, allow_infinity=False), mode=st.sampled_from(MODES))
def test_round_float_random(x, mode):
    assert prim.round_float(x, R.CODES[mode]) == sat64(ref.round_float(x, mode))


def _int_ties(shift):
    """x with x / 2**shift an exact tie, its neighbours, and the int64 extremes."""
    xs = [I64_MIN, I64_MIN + 1, I64_MAX, I64_MAX - 1, -(2**31), 2**31 - 1, 0, 1, -1]
    if 1 <= shift <= 62:
        for k in (-4, -3, -2, -1, 0, 1, 2, 3, 2**20, -(2**20)):
            t = (2 * k + 1) << (shift - 1)
            xs += [t - 1, t, t + 1]
    return [x for x in xs if I64_MIN <= x <= I64_MAX]


@pytest.mark.parametrize("mode", MODES)
def test_rounding_shift_right_ties_and_extremes(mode):
    code = R.CODES[mode]
    for shift in list(range(-3, 66)) + [100]:
        for x in _int_ties(shift):
            assert prim.rounding_shift_right(x, shift, code) == \
                sat64(ref.rounding_shift_right(x, shift, mode)), (x, shift, mode)


@pytest.mark.parametrize("mode", MODES)
def test_rounding_divide_ties(mode):
    code = R.CODES[mode]
    for d in (1, 2, 3, 4, 6, 8, 10, 2**20):
        for k in range(-6, 7):
            for x in (k * d + d // 2 - 1, k * d + d // 2, k * d + d // 2 + 1, k * d):
                assert prim.rounding_divide(x, d, code) == ref.rounding_divide(x, d, mode)
        for x in (-(2**61), 2**61, -(2**61) + 1):
            assert prim.rounding_divide(x, d, code) == ref.rounding_divide(x, d, mode)


@SETTINGS
@given(x=st.integers(I64_MIN, I64_MAX), shift=st.integers(-70, 130), mode=st.sampled_from(MODES))
def test_rounding_shift_right_random(x, shift, mode):
    assert prim.rounding_shift_right(x, shift, R.CODES[mode]) == \
        sat64(ref.rounding_shift_right(x, shift, mode))


@pytest.mark.parametrize("mode", MODES)
def test_mul_shift_round_ties_and_extremes(mode):
    code = R.CODES[mode]
    xs = [0, 1, -1, 3, -3, 2**62 - 1, -(2**62) + 1, 2**31, -(2**31), 2**31 - 1]
    ms = [1, -1, 3, -3, 2**32 - 1, -(2**32) + 1, 2**31, 1518500250]
    for shift in (-3, 0, 1, 2, 30, 31, 32, 33, 61, 62, 63, 64, 93, 94, 95, 126):
        for x in xs:
            for m in ms:
                assert prim.mul_shift_round(x, m, shift, code) == \
                    sat64(ref.mul_shift_round(x, m, shift, mode)), (x, m, shift)
    for shift in range(1, 93):  # x * m an exact tie, with the tie bit below and above bit 31
        for k in (-3, -1, 0, 2):
            for m in (1, 3, -5, 2**31 + 1):
                t = (2 * k + 1) << (shift - 1)
                for d in (-1, 0, 1):
                    num = t + d
                    if num % m == 0 and abs(num // m) < 2**62:
                        x = num // m
                        assert prim.mul_shift_round(x, m, shift, code) == \
                            sat64(ref.mul_shift_round(x, m, shift, mode)), (x, m, shift)


@SETTINGS
@given(x=st.integers(-(2**62) + 1, 2**62 - 1), m=st.integers(-(2**32) + 1, 2**32 - 1),
       shift=st.integers(-40, 100), mode=st.sampled_from(MODES))
def test_mul_shift_round_random(x, m, shift, mode):
    assert prim.mul_shift_round(x, m, shift, R.CODES[mode]) == \
        sat64(ref.mul_shift_round(x, m, shift, mode))


@pytest.mark.parametrize("mode", MODES)
def test_round_small_of_the_scalar_epilogue(mode):
    code = R.CODES[mode]
    for v in tie_floats():
        if abs(v) < 2.0**51:
            assert ep_k.round_small(v, code) == ref.round_float(v, mode), (v, mode)


# --------------------------------------------------------------------------------------------
# quant.requantize: general kernel, scalar epilogue, vector epilogue
# --------------------------------------------------------------------------------------------
def _dense_acc(center, n=2048):
    """``n`` consecutive accumulators (every residue, so every tie) around ``center``."""
    return np.arange(center - n // 2, center + n // 2, dtype=np.int64)


# (rq_mode, parameters, accumulators, out_dtype, expected path)
def _requant_cases():
    i32x = np.array([-(2**31), -(2**31) + 1, 2**31 - 1, 2**31 - 2], np.int64)
    return [
        ("shift-vector", "shift", dict(rq_multiplier=np.ones(1, np.int64),
                                       rq_shift=np.array([5], np.int64)),
         np.concatenate([_dense_acc(0), i32x]), "int32", "vector"),
        ("fixed-vector", "fixed", dict(rq_multiplier=np.array([80], np.int64),
                                       rq_shift=np.array([10], np.int64)),
         np.concatenate([_dense_acc(-40), i32x]), "int32", "vector"),
        ("fixed-vector-big-m", "fixed", dict(rq_multiplier=np.array([2**32 - 3], np.int64),
                                             rq_shift=np.array([37], np.int64)),
         np.concatenate([_dense_acc(7), np.array([2**29, -(2**29)], np.int64)]), "int32",
         "vector"),
        ("fp32-vector", "fp32", dict(rq_multiplier=np.array([0.125], np.float32)),
         _dense_acc(3), "int16", "vector"),
        ("fp32_zp_in-vector", "fp32_zp_in", dict(rq_multiplier=np.array([0.25], np.float32)),
         _dense_acc(-5), "int16", "vector"),
        ("shift-scalar-ep", "shift", dict(rq_multiplier=np.ones(1, np.int64),
                                          rq_shift=np.array([20], np.int64)),
         np.concatenate([_dense_acc(2**40 + 2**19), _dense_acc(-(2**40) - 2**19)]), "int32",
         "scalar"),
        ("fixed-scalar-ep", "fixed", dict(rq_multiplier=np.array([3], np.int64),
                                          rq_shift=np.array([12], np.int64)),
         _dense_acc(-(2**35) + 2**11), "int32", "scalar"),
        ("fp32-scalar-ep", "fp32", dict(rq_multiplier=np.array([2.0**-20], np.float32)),
         _dense_acc(2**35 + 2**19), "int16", "scalar"),
        ("shift-general", "shift", dict(rq_multiplier=np.ones(1, np.int64),
                                        rq_shift=np.array([63], np.int64)),
         np.array([I64_MIN, I64_MIN + 1, I64_MAX, -(2**62), 2**62, 0, -1, 1], np.int64),
         "int32", "general"),
        ("fixed-general", "fixed", dict(rq_multiplier=np.array([2**32 - 1], np.int64),
                                        rq_shift=np.array([40], np.int64)),
         np.concatenate([_dense_acc(2**39), np.array([2**62 - 1, -(2**62) + 1], np.int64)]),
         "int32", "general"),
        # (an int32 clamp is not exact in float32, so the reference's float clamp differs from
        # the simulator's integer one at saturation: values in range only)
        ("fp32-general", "fp32", dict(rq_multiplier=np.array([0.5], np.float32)),
         np.concatenate([_dense_acc(0), _dense_acc(2**26 + 7, 64), _dense_acc(-(2**32) + 99, 64)]),
         "int32", "general"),
    ]


def _path(params, acc):
    ep = params.epilogue()
    if ep is None or (ep.acc_limit is not None and np.abs(acc).max() > ep.acc_limit):
        return "general"
    return "vector" if -(2**31) <= acc.min() and acc.max() < 2**31 else "scalar"


@pytest.mark.parametrize("case", _requant_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("mode", MODES)
def test_requantize_every_path(case, mode):
    _, rq_mode, kw, acc, out_dtype, path = case
    zp = 3
    params = quant.requant_params(rq_mode=rq_mode, rq_rounding=mode, out_zero_point=zp,
                                  out_dtype=out_dtype, **kw)
    assert _path(params, acc) == path
    got, n_sat = quant.requantize(acc, rq_mode=rq_mode, rq_rounding=mode, out_zero_point=zp,
                                  out_dtype=out_dtype, **kw)
    lo, hi = quant.dtype_range(out_dtype)
    exp, exp_sat = quant_ref.requantize(acc, rq_mode, kw["rq_multiplier"], kw.get("rq_shift"),
                                        mode, zp, lo, hi, out_dtype, -1)
    assert np.array_equal(got, exp), (mode, np.nonzero(got != exp)[0][:5])
    assert n_sat == exp_sat


# --------------------------------------------------------------------------------------------
# The 16-lane epilogue, every kind, and its fast paths against the rule's generic IR
# --------------------------------------------------------------------------------------------
_EP_KINDS = (ep_k.EP_FP32, ep_k.EP_FP32_ZP_IN, ep_k.EP_INT, ep_k.EP_INT32, ep_k.EP_INT_P32)


def _make_ep16_all(rnd):
    @njit
    def run(acc, mf, mi, s, zpf, zp, lo, hi, out, cnt):
        """Each kind over the same lanes: out[k] and cnt[k] for _EP_KINDS[k]."""
        for i in range(0, acc.shape[0], 16):
            a = simd.vload_i32(acc, i)
            mfv = simd.vload_f32(mf, i)
            miv = simd.vload_i64(mi, i)
            sv = simd.vload_i64(s, i)
            c, k = ep_k._ep16_vec(1, rnd, a, mfv, miv, sv, sv, zpf, zp, lo, hi, 16)
            simd.vstore_codes(out[0], i, c)
            cnt[0] += k
            c, k = ep_k._ep16_vec(2, rnd, a, mfv, miv, sv, sv, zpf, zp, lo, hi, 16)
            simd.vstore_codes(out[1], i, c)
            cnt[1] += k
            c, k = ep_k._ep16_vec(3, rnd, a, mfv, miv, sv, sv, zpf, zp, lo, hi, 16)
            simd.vstore_codes(out[2], i, c)
            cnt[2] += k
            c, k = ep_k._ep16_vec(6, rnd, a, mfv, miv, sv, sv, zpf, zp, lo, hi, 16)
            simd.vstore_codes(out[3], i, c)
            cnt[3] += k
            c, k = ep_k._ep16_vec(7, rnd, a, mfv, miv, sv, sv, zpf, zp, lo, hi, 16)
            simd.vstore_codes(out[4], i, c)
            cnt[4] += k
    return run


def test_ep16_kind_codes_are_the_ones_the_kernel_hard_codes():
    assert _EP_KINDS == (1, 2, 3, 6, 7)


@pytest.mark.parametrize("mode", MODES)
def test_ep16_every_kind(mode):
    rng = np.random.default_rng(R.CODES[mode])
    n = 4096
    # every residue mod 2**s around 0 for small shifts, ties included; per-lane parameters
    acc = np.concatenate([np.arange(-1024, 1024), rng.integers(-(2**15), 2**15, n - 2048)])
    acc = acc.astype(np.int32)
    s = rng.integers(0, 12, n).astype(np.int64)
    mi = rng.integers(-(2**15) + 1, 2**15, n).astype(np.int64)
    mi[::7] = 1
    mf = (rng.integers(-64, 64, n) / 64.0).astype(np.float32)  # dyadic: exact ties happen
    mf[::5] = rng.uniform(-0.5, 0.5, n // 5 + 1).astype(np.float32)[: len(mf[::5])]
    zp, lo, hi = 5, -300, 400
    zpf = np.float32(zp)
    out = np.zeros((5, n), np.int32)
    cnt = np.zeros(5, np.int64)
    _make_ep16_all(R.CODES[mode])(acc, mf, mi, s, zpf, zp, lo, hi, out, cnt)
    expected = {}   # the three integer kinds share one reference: the same calls, made once
    for k, (kind, rq) in enumerate(zip(_EP_KINDS, ("fp32", "fp32_zp_in", "fixed", "fixed",
                                                    "fixed"))):
        if rq not in expected:
            expected[rq] = [quant_ref.requant_value(int(a), rq, f if rq != "fixed" else int(m),
                                                    int(sh), mode, zp, lo, hi)
                            for a, f, m, sh in zip(acc, mf, mi, s)]
        exp = expected[rq]
        assert out[k].tolist() == [v for v, _ in exp], (kind, mode)
        assert cnt[k] == sum(sat for _, sat in exp), (kind, mode)


def _make_fast_vs_generic(rnd):
    fp32_f, fp32_g = simd.ep16_fp32, simd._make_ep16_fp32(fast=False)
    zpin_f, zpin_g = simd.ep16_fp32_zp_in, simd._make_ep16_fp32_zp_in(fast=False)
    vq_f, vq_g = simd.vquant, simd._make_vquant(fast=False)

    @njit
    def run(acc, mf, f, zp, lo, hi, out):
        for i in range(0, acc.shape[0], 16):
            a = simd.vload_i32(acc, i)
            m = simd.vload_f32(mf, i)
            fv = simd.vload_f32(f, i)
            c, _ = fp32_f(a, m, zp, lo, hi, 16, rnd)
            simd.vstore_codes(out[0], i, c)
            c, _ = fp32_g(a, m, zp, lo, hi, 16, rnd)
            simd.vstore_codes(out[1], i, c)
            c, _ = zpin_f(a, m, np.float32(zp), lo, hi, 16, rnd)
            simd.vstore_codes(out[2], i, c)
            c, _ = zpin_g(a, m, np.float32(zp), lo, hi, 16, rnd)
            simd.vstore_codes(out[3], i, c)
            c, _ = vq_f(fv, lo, hi, 16, rnd)
            simd.vstore_codes(out[4], i, c)
            c, _ = vq_g(fv, lo, hi, 16, rnd)
            simd.vstore_codes(out[5], i, c)
    return run


@pytest.mark.parametrize("mode", MODES)
def test_fast_paths_equal_the_rule(mode):
    """The one-instruction roundings (vcvtps2dq, roundeven, floor, trunc, floor(g + 1/2),
    trunc(g + copysign(1/2, g))) against the IR generated from the rule alone, on every
    multiple of 1/16 in [-2**9, 2**9], the float neighbours of ties and random floats (vquant
    also NaN, +-inf and huge values); both against the exact reference."""
    rng = np.random.default_rng(7)
    grid = np.arange(-(2**13), 2**13) / 16.0
    ties = np.arange(-600, 600) + 0.5
    near = np.concatenate([np.nextafter(ties.astype(np.float32), np.float32(np.inf)),
                           np.nextafter(ties.astype(np.float32), np.float32(-np.inf))])
    f = np.concatenate([grid, ties, near, rng.uniform(-3e4, 3e4, 4000),
                        [np.nan, np.inf, -np.inf, 3e38, -3e38, 2.0**22 + 0.5, -(2.0**22) - 0.5]])
    f = f.astype(np.float32)
    n = (len(f) + 15) // 16 * 16
    f = np.concatenate([f, np.zeros(n - len(f), np.float32)])
    # acc * mf reproduces the grid exactly: acc = 16 * g, mf = 1/16
    with np.errstate(over="ignore", invalid="ignore"):
        acc = np.clip(np.nan_to_num(f * 16, posinf=2**30, neginf=-(2**30)), -(2**30), 2**30)
    acc = acc.astype(np.int32)
    mf = np.full(n, 1 / 16, np.float32)
    mf[1::3] = rng.uniform(-0.3, 0.3, len(mf[1::3])).astype(np.float32)
    # products that are the float neighbours of +-1/2 and +-3/2 themselves (acc = +-1)
    edge = [np.nextafter(np.float32(t), np.float32(d)) for t in (0.5, 1.5, -0.5, -1.5)
            for d in (0, 4)]
    acc[:16] = np.repeat([1, -1], 8)
    mf[:16] = np.array(edge * 2, np.float32)
    zp, lo, hi = -2, -(2**21), 2**21
    out = np.zeros((6, n), np.int32)
    _make_fast_vs_generic(R.CODES[mode])(acc, mf, f, zp, lo, hi, out)
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[2], out[3]), mode
    assert np.array_equal(out[4], out[5]), mode
    for j in list(range(16)) + list(range(16, n, 7)):
        v, _ = quant_ref.requant_value(int(acc[j]), "fp32", mf[j], 0, mode, zp, lo, hi)
        assert out[0][j] == v, (mode, acc[j], mf[j])
        if np.isfinite(f[j]):
            q, _ = quant_ref.clamp(ref.round_float(f[j], mode), lo, hi)
        else:
            q = lo if np.isnan(f[j]) or f[j] < 0 else hi
        assert out[4][j] == q, (mode, f[j])


@pytest.mark.parametrize("mode", MODES)
def test_quantize_vector_path(mode):
    ties = (np.arange(-40, 40) + 0.5).astype(np.float32)
    x = np.concatenate([np.arange(-4000, 4000) / 8.0, [np.nan, np.inf, -np.inf, 1e30, -1e30],
                        np.nextafter(ties, np.float32(np.inf)),
                        np.nextafter(ties, np.float32(-np.inf))]).astype(np.float32)
    scale = np.float32(1.0)
    got, n_sat = quant.quantize(x, scale=scale, zero_point=np.int64(3), rounding=mode,
                                out_dtype="int16")
    exp, exp_sat = quant_ref.quantize(x, scale, 3, 0, mode, "divide", -(2**15), 2**15 - 1,
                                      "int16")
    assert np.array_equal(got, exp) and n_sat == exp_sat


# --------------------------------------------------------------------------------------------
# SIMD off: the portable build gives the same bits
# --------------------------------------------------------------------------------------------
_DIGEST_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    from simulator import rounding as R
    from simulator.kernels import quant, simd
    from simulator.kernels.conv import conv2d_acc, prepare_conv
    rng = np.random.default_rng(3)
    acc = np.concatenate([np.arange(-3000, 3000), rng.integers(-2**24, 2**24, 5000)])
    acc = acc.reshape(-1, 4, 50).astype(np.int64)
    x = np.concatenate([np.arange(-4000, 4000) / 8.0, rng.uniform(-900, 900, 2000)])
    x = x.astype(np.float32)
    xi = rng.integers(-128, 128, (2, 8, 9, 9)).astype(np.int8)
    w = rng.integers(-127, 128, (16, 8, 3, 3)).astype(np.int8)
    out = {"simd": simd.ENABLED}
    fused = {}
    for mode in R.NAMES:
        h = hashlib.sha256()
        for rq, kw in (("fixed", dict(rq_multiplier=np.array([5, 80, 3, 1], np.int64),
                                     rq_shift=np.array([3, 10, 7, 1], np.int64))),
                       ("shift", dict(rq_multiplier=np.ones(1, np.int64),
                                     rq_shift=np.array([4, 0, 9, 2], np.int64))),
                       ("fp32", dict(rq_multiplier=np.array([0.25, 1/8, 0.3, 0.5], np.float32))),
                       ("fp32_zp_in", dict(rq_multiplier=np.array([0.5, 0.75, 1/16, 2.5],
                                                                  np.float32)))):
            q, n = quant.requantize(acc, rq_mode=rq, rq_rounding=mode, out_zero_point=1,
                                    out_dtype="int16", channel_axis=1, **kw)
            h.update(q.tobytes()); h.update(str(n).encode())
        q, n = quant.quantize(x, scale=np.float32(0.5), zero_point=np.int64(-1),
                              rounding=mode, out_dtype="int16")
        h.update(q.tobytes()); h.update(str(n).encode())
        conv = dict(weight_zero_point=np.zeros(16, np.int64),
                    bias=np.arange(16, dtype=np.int64) * 64, input_zero_point=0,
                    strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), group=1,
                    layout="NCHW", acc_bits=32, acc_overflow="wrap")
        for rq, kw in (("fixed", dict(rq_multiplier=np.full(16, 77, np.int64),
                                     rq_shift=np.full(16, 13, np.int64))),
                       ("fp32", dict(rq_multiplier=np.full(16, 2.0**-9, np.float32)))):
            req = dict(rq_mode=rq, rq_rounding=mode, out_zero_point=0, out_dtype="int8", **kw)
            fast = prepare_conv(w, requant=req, channel_axis=1, **conv)
            res = None if fast is None else fast.run(xi)
            fused[mode] = fused.get(mode, True) and res is not None
            if res is None:  # the portable build: accumulator, then the requantization
                acc_c, _ = conv2d_acc(xi, w, **conv)
                res = quant.requantize(acc_c, channel_axis=1, **req)
            h.update(res[0].tobytes()); h.update(str(res[1]).encode())
        out[mode] = h.hexdigest()
    out["fused"] = fused
    print(json.dumps(out))
""")


def _env(simd_on):
    """The environment of a subprocess on the host's best kernel path (``simd_on``) or on the
    portable one."""
    env = {k: v for k, v in os.environ.items() if k not in _SWITCHES}
    if not simd_on:
        env["SIMULATOR_SIMD"] = "0"
    return env


_SWITCHES = ("SIMULATOR_KERNELS", "SIMULATOR_SIMD", "SIMULATOR_AMX")


def _in_this_process(script, *argv):
    """``script``'s last stdout line (JSON), run here: when no kernel switch is set this process
    is on the host's best path, as the child of ``_env(True)`` would be, so that child's
    interpreter start and kernel loads are saved. The portable runs stay in a child (the path is
    fixed per process)."""
    out, saved = io.StringIO(), sys.argv
    sys.argv = ["-c", *map(str, argv)]
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(script, "<script>", "exec"), {"__name__": "__main__"})  # noqa: S102
    finally:
        sys.argv = saved
    return json.loads(out.getvalue().strip().splitlines()[-1])


def _script(script, simd_on, *argv):
    if simd_on and not any(k in os.environ for k in _SWITCHES):
        return _in_this_process(script, *argv)
    r = subprocess.run([sys.executable, "-c", script, *map(str, argv)], check=False, cwd=ROOT,
                       env=_env(simd_on), capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _digests(simd_on):
    return _script(_DIGEST_SCRIPT, simd_on)


@pytest.mark.slow
def test_simd_and_portable_builds_agree_for_every_mode():
    on, off = _digests(True), _digests(False)
    assert off.pop("simd") is False
    on_simd, fused = on.pop("simd"), on.pop("fused")
    off.pop("fused")
    # with VNNI the conv ran the fused kernel (vector epilogue) for every mode
    assert all(fused.values()) or not on_simd
    assert set(on) == set(MODES)
    assert on == off


# --------------------------------------------------------------------------------------------
# half_down end to end: profile -> lowering -> simulation (vector and portable)
# --------------------------------------------------------------------------------------------
_E2E_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from mrq.api import simulate
    from mrq.demo import DEMO_MODEL, demo_inputs
    from mrq.hw_profile import load_profile
    from mrq.lower import arithmetic_from_profile, lower
    from mrq.onnx_import import load_model
    from simulator.kernels import simd
    prof = load_profile(sys.argv[1])
    lowered = lower(load_model(DEMO_MODEL), arithmetic_from_profile(prof))
    steps = lowered.program.steps
    modes = sorted({str(s.params.get(k)) for s in steps for k in ("rq_rounding", "rounding")
                    if s.params.get(k) is not None})
    # inputs on the input quantizer's ties (x * f32(1/s) == k + 1/2 exactly), so that the
    # rounding mode shows in the outputs
    (quant,) = [s for s in steps if s.kind == "quantize"]
    inv = np.float32(1.0) / np.float32(np.asarray(quant.params.get("scale")).reshape(-1)[0])
    shape = demo_inputs(batch=4)["input"].shape
    k = np.random.default_rng(5).integers(-40, 40, shape)
    x = ((k + 0.5) / np.float64(inv)).astype(np.float32)
    ties = int(np.count_nonzero(np.float32(x * inv) == k + 0.5))
    res = simulate(DEMO_MODEL, prof, {"input": x}, fidelity=False)
    print(json.dumps({"simd": simd.ENABLED, "rounding": prof.requant.rounding, "modes": modes,
                      "ties": ties, "method": str(quant.params.get("method")),
                      "outputs": {k: np.asarray(v).tolist() for k, v in res.outputs.items()}}))
""")


def _e2e(profile_path, simd_on):
    return _script(_E2E_SCRIPT, simd_on, profile_path)


def _profile_with_rounding(tmp_path, rounding):
    text = (ROOT / "hw_profiles" / "nna-sym8.yaml").read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("rounding:"):
            indent = line[: len(line) - len(line.lstrip())]
            lines[i] = f"{indent}rounding: {rounding}"
    assert sum(1 for line in lines if line.strip() == f"rounding: {rounding}") == 2
    path = tmp_path / f"nna-sym8-{rounding}.yaml"
    path.write_text("\n".join(lines).replace("name: nna-sym8", f"name: nna-sym8-{rounding}")
                    + "\n")
    return path


@pytest.mark.slow
def test_half_down_profile_end_to_end(tmp_path):
    from mrq.hw_profile import load_profile

    path = _profile_with_rounding(tmp_path, "half_down")
    prof = load_profile(str(path))
    assert prof.requant.arithmetic == "fixed_point" and prof.requant.rounding == "half_down"
    assert prof.ops.quantize.rounding == "half_down"
    vec, portable = _e2e(path, True), _e2e(path, False)
    assert portable["simd"] is False
    assert vec["modes"] == ["half_down"] and vec["method"] == "multiply"
    assert vec["ties"] > 100
    assert vec["outputs"] == portable["outputs"]
    up = _e2e(_profile_with_rounding(tmp_path, "half_up"), True)
    assert up["modes"] == ["half_up"]
    assert up["outputs"] != vec["outputs"]  # the input ties round the other way
