"""simulator.kernels.quant (requantize, quantize, dequantize) against tests/reference."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from simulator.errors import KernelInputError  # noqa: E402
from simulator.kernels import quant  # noqa: E402
from tests.reference import quant_ref  # noqa: E402

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True)
MODES = ("half_even", "half_away", "half_up", "floor", "toward_zero")
OUT_DTYPES = ("int8", "uint8", "int16", "uint16")


def _range(dtype):
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _clamp_for(rng, dtype):
    lo, hi = _range(dtype)
    if rng.random() < 0.3:  # a fused Relu-like clamp
        lo = int(rng.integers(lo, (lo + hi) // 2 + 1))
    return lo, hi


def _acc(rng, shape, bits):
    acc = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=shape, dtype=np.int64)
    # sprinkle extremes and small values
    flat = acc.reshape(-1)
    k = max(1, flat.size // 8)
    flat[rng.integers(0, flat.size, k)] = rng.choice([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1,
                                                      0, 1, -1], k)
    return acc


def _run_both(acc, mode, mult, shift, rounding, zp, lo, hi, dtype, axis):
    got, got_sat = quant.requantize(acc, rq_mode=mode, rq_multiplier=mult, rq_shift=shift,
                                    rq_rounding=rounding, out_zero_point=zp, out_min=lo,
                                    out_max=hi, out_dtype=dtype, channel_axis=axis)
    want, want_sat = quant_ref.requantize(acc, mode, mult, shift, rounding, zp, lo, hi, dtype,
                                          axis)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, want)
    assert got_sat == want_sat


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["fp32", "fp32_zp_in"]),
       rounding=st.sampled_from(MODES), dtype=st.sampled_from(OUT_DTYPES),
       per_channel=st.booleans(), pow2=st.booleans(), bits=st.sampled_from([16, 24, 32, 40]))
def test_requantize_float_modes(seed, mode, rounding, dtype, per_channel, pow2, bits):
    rng = np.random.default_rng(seed)
    shape = (2, 3, int(rng.integers(1, 5)))
    axis = 1
    n = 3 if per_channel else 1
    if pow2:  # exactly representable multipliers: many exact ties
        mult = (2.0 ** rng.integers(-12, 2, n)).astype(np.float32)
        acc = _acc(rng, shape, 12)
    else:
        mult = rng.uniform(1e-6, 0.05, n).astype(np.float32)
        acc = _acc(rng, shape, bits)
    lo, hi = _clamp_for(rng, dtype)
    zp = int(rng.integers(*_range(dtype)))
    _run_both(acc, mode, mult, None, rounding, zp, lo, hi, dtype, axis)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), rounding=st.sampled_from(MODES),
       dtype=st.sampled_from(OUT_DTYPES), per_channel=st.booleans(), axis=st.sampled_from([0, -1]))
def test_requantize_fixed(seed, rounding, dtype, per_channel, axis):
    rng = np.random.default_rng(seed)
    shape = (4, 5)
    n = shape[axis] if per_channel else 1
    mult = rng.integers(-(2**32) + 1, 2**32, n, dtype=np.int64)
    if rng.random() < 0.5:
        mult = rng.integers(1, 2**16, n, dtype=np.int64)
    shift = rng.integers(-4, 70, n, dtype=np.int64)
    acc = _acc(rng, shape, int(rng.choice([16, 32, 48, 62])))
    if rng.random() < 0.3:  # exact ties: acc * m = odd * 2**(shift - 1)
        mult = np.ones(n, dtype=np.int64)
        shift = rng.integers(1, 8, n, dtype=np.int64)
        acc = (2 * rng.integers(-200, 200, shape) + 1) * (2 ** (shift.max() - 1))
    lo, hi = _clamp_for(rng, dtype)
    zp = int(rng.integers(*_range(dtype)))
    _run_both(acc, "fixed", mult, shift, rounding, zp, lo, hi, dtype, axis)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), rounding=st.sampled_from(MODES),
       dtype=st.sampled_from(OUT_DTYPES), per_channel=st.booleans())
def test_requantize_shift(seed, rounding, dtype, per_channel):
    rng = np.random.default_rng(seed)
    shape = (3, 4)
    n = 4 if per_channel else 1
    shift = rng.integers(-3, 20, n, dtype=np.int64)
    acc = _acc(rng, shape, int(rng.choice([8, 16, 32])))
    lo, hi = _clamp_for(rng, dtype)
    zp = int(rng.integers(*_range(dtype)))
    _run_both(acc, "shift", np.array([1], np.int64), shift, rounding, zp, lo, hi, dtype, -1)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), rounding=st.sampled_from(["half_away", "half_up"]),
       dtype=st.sampled_from(OUT_DTYPES), per_channel=st.booleans())
def test_requantize_double_q31(seed, rounding, dtype, per_channel):
    rng = np.random.default_rng(seed)
    shape = (2, 6)
    n = 6 if per_channel else 1
    mult = rng.integers(2**30, 2**31, n, dtype=np.int64)
    shift = rng.integers(1, 50, n, dtype=np.int64)  # TFLite shift 31 - s in [-18, 30]
    acc = _acc(rng, shape, int(rng.choice([16, 32, 40])))  # 40 bits: wrapped to int32 first
    lo, hi = _clamp_for(rng, dtype)
    zp = int(rng.integers(*_range(dtype)))
    _run_both(acc, "double_q31", mult, shift, rounding, zp, lo, hi, dtype, -1)


def test_requantize_none_and_errors():
    acc = np.array([[1, -5], [2**31 - 1, -(2**31)]], dtype=np.int64)
    out, sat = quant.requantize(acc, rq_mode="none", out_dtype="int32")
    np.testing.assert_array_equal(out, acc.astype(np.int32))
    assert out.dtype == np.int32 and sat == 0
    with pytest.raises(KernelInputError, match="does not fit"):
        quant.requantize(acc * 2, rq_mode="none", out_dtype="int32")
    with pytest.raises(KernelInputError, match="unknown rq_mode"):
        quant.requantize(acc, rq_mode="fp64", out_dtype="int8")
    with pytest.raises(KernelInputError, match="rq_multiplier"):
        quant.requantize(acc, rq_mode="fp32", rq_multiplier=np.ones(3, np.float32),
                         out_dtype="int8", channel_axis=1)
    with pytest.raises(KernelInputError, match="float32"):
        quant.requantize(acc, rq_mode="fp32", rq_multiplier=np.ones(1), out_dtype="int8")
    with pytest.raises(KernelInputError, match="clamp"):
        quant.requantize(acc, rq_mode="fp32", rq_multiplier=np.ones(1, np.float32),
                         out_dtype="int8", out_min=-200, out_max=10)
    with pytest.raises(KernelInputError, match="unknown rounding"):
        quant.requantize(acc, rq_mode="fp32", rq_multiplier=np.ones(1, np.float32),
                         out_dtype="int8", rq_rounding="stochastic")
    with pytest.raises(KernelInputError, match="double_q31"):
        quant.requantize(acc, rq_mode="double_q31", rq_multiplier=np.array([2**30]),
                         rq_shift=np.array([40]), rq_rounding="half_even", out_dtype="int8")


def test_requantize_fp32_ties_go_to_even_before_the_zero_point():
    # acc * 0.5 = k + 0.5 exactly; RNE on the zero-point-free value, then + odd zero point
    acc = np.arange(-9, 10, 2, dtype=np.int64)
    out, _ = quant.requantize(acc, rq_mode="fp32", rq_multiplier=np.array([0.5], np.float32),
                              out_zero_point=3, out_dtype="int8")
    np.testing.assert_array_equal(out, np.round(acc / 2).astype(np.int64) + 3)
    out_in, _ = quant.requantize(acc, rq_mode="fp32_zp_in",
                                 rq_multiplier=np.array([0.5], np.float32), out_zero_point=3,
                                 out_dtype="int8")
    np.testing.assert_array_equal(out_in, np.round(acc / 2 + 3).astype(np.int64))
    assert np.any(out != out_in)


# --- quantize / dequantize ------------------------------------------------------------------------
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), rounding=st.sampled_from(MODES),
       method=st.sampled_from(["divide", "multiply"]), dtype=st.sampled_from(OUT_DTYPES),
       per_axis=st.booleans())
def test_quantize(seed, rounding, method, dtype, per_axis):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, 3, 4)) * rng.choice([0.1, 10.0, 1000.0])).astype(np.float32)
    n = 3 if per_axis else 1
    scale = (2.0 ** rng.integers(-8, 3, n)).astype(np.float32)  # pow2: exact ties in x / s
    if rng.random() < 0.5:
        scale = rng.uniform(1e-3, 2.0, n).astype(np.float32)
    else:
        x = (np.round(x * 4) / 4).astype(np.float32)
    zp = rng.integers(*_range(dtype), n)
    lo, hi = _clamp_for(rng, dtype)
    x.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    got, got_sat = quant.quantize(x, scale=scale, zero_point=zp, axis=1, rounding=rounding,
                                  method=method, out_min=lo, out_max=hi, out_dtype=dtype)
    want, want_sat = quant_ref.quantize(x, scale, zp, 1, rounding, method, lo, hi, dtype)
    np.testing.assert_array_equal(got, want)
    assert got_sat == want_sat


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(OUT_DTYPES + ("int32",)),
       per_axis=st.booleans())
def test_dequantize(seed, dtype, per_axis):
    rng = np.random.default_rng(seed)
    lo, hi = _range(dtype)
    x = rng.integers(lo, hi, (3, 2, 5), endpoint=True).astype(dtype)
    n = 2 if per_axis else 1
    scale = rng.uniform(1e-4, 3.0, n).astype(np.float32)
    zp = rng.integers(max(lo, -1000), min(hi, 1000), n)
    got = quant.dequantize(x, scale=scale, zero_point=zp, axis=1)
    want = quant_ref.dequantize(x, scale, zp, 1)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_quantize_int8_exhaustive_grid():
    """Every half-integer multiple of the scale from -200 to 200 in int8 with an odd zero point."""
    x = (np.arange(-400, 401, dtype=np.float32) / np.float32(2)) * np.float32(0.25)
    for rounding in MODES:
        got, _ = quant.quantize(x, scale=np.array([0.25], np.float32), zero_point=np.array([-3]),
                                rounding=rounding, out_dtype="int8")
        want, _ = quant_ref.quantize(x, [0.25], [-3], 0, rounding, "divide", -128, 127, "int8")
        np.testing.assert_array_equal(got, want)
