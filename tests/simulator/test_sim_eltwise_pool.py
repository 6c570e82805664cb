"""simulator.kernels.eltwise / pool / movement / softmax against tests/reference."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from simulator.errors import KernelInputError  # noqa: E402
from simulator.kernels import eltwise, movement, pool, quant, softmax  # noqa: E402
from tests.reference import eltwise_ref, pool_ref  # noqa: E402
from tests.reference import primitives_ref as P  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
MODES = P.MODES
BROADCAST_SHAPES = [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (1, 3, 1)), ((1, 3, 1), (2, 3, 4)),
                    ((4,), (2, 3, 4)), ((2, 1, 4), (3, 1)), ((), (5,)), ((5,), ()), ((1,), (1,)),
                    ((3, 1), (1, 4)), ((1, 4), (3, 1)), ((2, 3, 1), (2, 3, 1)), ((6, 1), (6, 1))]


def _range(dtype):
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _codes(rng, dtype, shape):
    lo, hi = _range(dtype)
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)


# --- add ------------------------------------------------------------------------------------------
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int8", "uint8"]),
       shapes=st.sampled_from(BROADCAST_SHAPES), pow2=st.booleans())
def test_add_ort_fma(seed, dtype, shapes, pow2):
    rng = np.random.default_rng(seed)
    a, b = _codes(rng, dtype, shapes[0]), _codes(rng, dtype, shapes[1])
    if pow2:
        sa, sb, sc = (np.float32(2.0 ** int(e)) for e in rng.integers(-6, 2, 3))
    else:
        sa, sb, sc = (np.float32(v) for v in rng.uniform(0.001, 1.0, 3))
    za, zb, zc = (int(v) for v in rng.integers(*_range(dtype), 3))
    lo, hi = _range(dtype)
    got, got_sat = eltwise.add_ort_fma(a, b, scale_a=sa, scale_b=sb, scale_out=sc,
                                       zero_point_a=za, zero_point_b=zb, zero_point_out=zc,
                                       out_min=lo, out_max=hi, out_dtype=dtype)
    want, want_sat = eltwise_ref.add_ort_fma(a, b, sa, za, sb, zb, sc, zc, lo, hi, dtype)
    np.testing.assert_array_equal(got, want)
    assert got_sat == want_sat


def test_ort_span_scalar_rule_matches_reference_restatement():
    for sa, sb in BROADCAST_SHAPES + [((1, 1), (3, 1, 1)), ((3, 1, 1), (1, 1)), ((0, 2), (1, 2))]:
        assert eltwise.ort_input0_is_span_scalar(sa, sb) == eltwise_ref.ort_input0_scalar(sa, sb)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int8", "uint8", "int16"]),
       shapes=st.sampled_from(BROADCAST_SHAPES), ruy=st.booleans())
def test_add_tflite(seed, dtype, shapes, ruy):
    rng = np.random.default_rng(seed)
    a, b = _codes(rng, dtype, shapes[0]), _codes(rng, dtype, shapes[1])
    left_shift = 20 if dtype != "int16" else 15
    ma, mb, mo = (int(v) for v in rng.integers(2**30, 2**31, 3))
    sha, shb = (int(v) for v in rng.integers(-8, 1, 2))
    sho = int(rng.integers(-25, -10)) if dtype != "int16" else int(rng.integers(-20, -5))
    za, zb, zo = (int(v) for v in rng.integers(*_range(dtype), 3))
    if dtype == "int16":
        za = zb = zo = 0
    lo, hi = _range(dtype)
    lo = max(lo, int(rng.integers(lo, 1))) if rng.random() < 0.3 else lo
    rounding = "half_up" if ruy else "half_away"
    got, got_sat = eltwise.add_tflite(a, b, left_shift=left_shift, multiplier_a=ma, shift_a=sha,
                                      multiplier_b=mb, shift_b=shb, multiplier_out=mo,
                                      shift_out=sho, zero_point_a=za, zero_point_b=zb,
                                      zero_point_out=zo, out_min=lo, out_max=hi, out_dtype=dtype,
                                      rq_rounding=rounding)
    want, want_sat = eltwise_ref.add_tflite(a, b, left_shift, ma, sha, mb, shb, mo, sho, za, zb,
                                            zo, lo, hi, dtype, ruy=ruy)
    np.testing.assert_array_equal(got, want)
    assert got_sat == want_sat


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int8", "uint8", "int16"]),
       shapes=st.sampled_from(BROADCAST_SHAPES), rounding=st.sampled_from(MODES),
       rq_mode=st.sampled_from(["fixed", "shift"]))
def test_add_fixed(seed, dtype, shapes, rounding, rq_mode):
    rng = np.random.default_rng(seed)
    a, b = _codes(rng, dtype, shapes[0]), _codes(rng, dtype, shapes[1])
    ma, mb = (int(v) for v in rng.integers(-(2**20), 2**20, 2))
    shift = int(rng.integers(-2, 24))
    za, zb, zo = (int(v) for v in rng.integers(*_range(dtype), 3))
    lo, hi = _range(dtype)
    got, got_sat = eltwise.add_fixed(a, b, zero_point_a=za, zero_point_b=zb, multiplier_a=ma,
                                     multiplier_b=mb, rq_mode=rq_mode,
                                     rq_shift=np.array([shift]), rq_rounding=rounding,
                                     out_zero_point=zo, out_min=lo, out_max=hi, out_dtype=dtype)
    want, want_sat = eltwise_ref.add_fixed(a, b, za, zb, ma, mb, rq_mode, shift, rounding, zo, lo,
                                           hi, dtype)
    np.testing.assert_array_equal(got, want)
    assert got_sat == want_sat


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int8", "uint8", "int16"]),
       rounding=st.sampled_from(MODES), rq_mode=st.sampled_from(["fixed", "shift"]),
       shift=st.integers(1, 62), big=st.booleans())
def test_add_fixed_full_shift_range(seed, dtype, rounding, rq_mode, shift, big):
    """The branch-free fast kernel (1 <= shift <= 62, |acc * multiplier| < 2**62) and the generic
    one (larger products), with fixed-point multipliers, against the integer reference; small
    multipliers with small shifts make ties at .5 frequent."""
    rng = np.random.default_rng(seed)
    a, b = _codes(rng, dtype, (3, 67)), _codes(rng, dtype, (3, 67))
    lim = 2**31 - 1 if big else 4
    ma, mb = (int(v) for v in rng.integers(-lim, lim + 1, 2))
    mult = int(rng.integers(1, 2**31)) if (rq_mode == "fixed" and big) else 1
    za, zb, zo = (int(v) for v in rng.integers(*_range(dtype), 3))
    lo, hi = _range(dtype)
    got, got_sat = eltwise.add_fixed(a, b, zero_point_a=za, zero_point_b=zb, multiplier_a=ma,
                                     multiplier_b=mb, rq_mode=rq_mode,
                                     rq_multiplier=np.array([mult]),
                                     rq_shift=np.array([shift]), rq_rounding=rounding,
                                     out_zero_point=zo, out_min=lo, out_max=hi, out_dtype=dtype)
    want, want_sat = eltwise_ref.add_fixed(a, b, za, zb, ma, mb, rq_mode, shift, rounding, zo, lo,
                                           hi, dtype, rq_multiplier=mult)
    np.testing.assert_array_equal(got, want)
    assert got_sat == want_sat


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int8", "uint8", "int16"]),
       shapes=st.sampled_from(BROADCAST_SHAPES), rounding=st.sampled_from(MODES))
def test_add_float(seed, dtype, shapes, rounding):
    rng = np.random.default_rng(seed)
    a, b = _codes(rng, dtype, shapes[0]), _codes(rng, dtype, shapes[1])
    sa, sb, sc = (np.float32(2.0 ** int(e)) for e in rng.integers(-6, 2, 3))
    za, zb, zo = (int(v) for v in rng.integers(*_range(dtype), 3))
    lo, hi = _range(dtype)
    got, got_sat = eltwise.add_float(a, b, scale_a=sa, scale_b=sb, scale_out=sc, zero_point_a=za,
                                     zero_point_b=zb, zero_point_out=zo, rounding=rounding,
                                     out_min=lo, out_max=hi, out_dtype=dtype)
    want, want_sat = eltwise_ref.add_float(a, b, sa, za, sb, zb, sc, zo, rounding, lo, hi, dtype)
    np.testing.assert_array_equal(got, want)
    assert got_sat == want_sat


def test_add_ort_fma_int8_exhaustive():
    """Every int8 a against 40 b values (extremes included), pow2 scales (ties everywhere), odd
    zero points. (The full 256 x 256 grid runs against onnxruntime in test_ort_single_ops.)"""
    v = np.arange(-128, 128, dtype=np.int8)
    a, b = v[:, None], np.concatenate([v[::8], v[-8:]])[None, :]
    args = (np.float32(0.5), -3, np.float32(0.25), 5, np.float32(1.0), 7)
    got, _ = eltwise.add_ort_fma(a, b, scale_a=args[0], zero_point_a=args[1], scale_b=args[2],
                                 zero_point_b=args[3], scale_out=args[4], zero_point_out=args[5],
                                 out_min=-128, out_max=127, out_dtype="int8")
    want, _ = eltwise_ref.add_ort_fma(a, b, args[0], args[1], args[2], args[3], args[4], args[5],
                                      -128, 127, "int8")
    np.testing.assert_array_equal(got, want)


# --- mul, rescale, clamp --------------------------------------------------------------------------
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int8", "uint8"]),
       shapes=st.sampled_from(BROADCAST_SHAPES),
       mode=st.sampled_from(["fp32_zp_in", "fp32", "double_q31", "fixed", "shift"]),
       rounding=st.sampled_from(MODES))
def test_mul(seed, dtype, shapes, mode, rounding):
    rng = np.random.default_rng(seed)
    a, b = _codes(rng, dtype, shapes[0]), _codes(rng, dtype, shapes[1])
    za, zb, zo = (int(v) for v in rng.integers(*_range(dtype), 3))
    lo, hi = _range(dtype)
    shift = None
    if mode.startswith("fp32"):
        mult = np.float32(2.0 ** int(rng.integers(-12, -4))) if rng.random() < 0.5 else \
            np.float32(rng.uniform(1e-4, 0.02))
    elif mode == "double_q31":
        mult, shift = int(rng.integers(2**30, 2**31)), int(rng.integers(35, 45))
        rounding = "half_up" if rounding in ("half_up", "floor") else "half_away"
    elif mode == "fixed":
        mult, shift = int(rng.integers(1, 2**16)), int(rng.integers(10, 30))
    else:
        mult, shift = 1, int(rng.integers(0, 12))
    acc = eltwise.mul_acc(a, b, zero_point_a=za, zero_point_b=zb)
    mult_arr = (np.array([mult], np.float32) if mode.startswith("fp32")
                else np.array([mult], np.int64))
    got, got_sat = quant.requantize(acc, rq_mode=mode, rq_multiplier=mult_arr,
                                    rq_shift=None if shift is None else np.array([shift]),
                                    rq_rounding=rounding, out_zero_point=zo, out_min=lo,
                                    out_max=hi, out_dtype=dtype)
    want, want_sat = eltwise_ref.mul(a, b, za, zb, mode, mult, shift, rounding, zo, lo, hi, dtype)
    np.testing.assert_array_equal(got, want)
    assert got_sat == want_sat


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int8", "uint8", "int16"]),
       rounding=st.sampled_from(MODES))
def test_rescale_float(seed, dtype, rounding):
    rng = np.random.default_rng(seed)
    x = _codes(rng, dtype, (3, 7))
    zin, zo = (int(v) for v in rng.integers(*_range(dtype), 2))
    s_in, s_out = (np.float32(2.0 ** int(e)) for e in rng.integers(-6, 3, 2))
    lo, hi = _range(dtype)
    got, got_sat = eltwise.rescale_float(x, input_zero_point=zin, scale_in=s_in, scale_out=s_out,
                                         out_zero_point=zo, rq_rounding=rounding, out_min=lo,
                                         out_max=hi, out_dtype=dtype)
    want, want_sat = eltwise_ref.rescale_float(x, zin, s_in, s_out, zo, rounding, lo, hi, dtype)
    np.testing.assert_array_equal(got, want)
    assert got_sat == want_sat


def test_clamp_and_errors():
    x = np.arange(-128, 128, dtype=np.int8)
    out, n = eltwise.clamp(x, out_min=-5, out_max=100)
    np.testing.assert_array_equal(out, np.clip(x, -5, 100))
    assert out.dtype == np.int8 and n == (123 + 27)
    with pytest.raises(KernelInputError, match="clamp"):
        eltwise.clamp(x, out_min=0, out_max=300)
    with pytest.raises(KernelInputError, match="broadcast"):
        eltwise.mul_acc(x, x[:3], zero_point_a=0, zero_point_b=0)
    with pytest.raises(KernelInputError, match="dtype"):
        eltwise.add_ort_fma(x.astype(np.int16), x, scale_a=1, scale_b=1, scale_out=1,
                            zero_point_a=0, zero_point_b=0, zero_point_out=0, out_min=-128,
                            out_max=127, out_dtype="int8")


# --- pooling --------------------------------------------------------------------------------------
def _pool_case(rng):
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    sh, sw = (int(v) for v in rng.integers(1, 4, 2))
    pads = tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))  # pads < kernel (ONNX)
    height = int(rng.integers(kh, 9))
    width = int(rng.integers(kw, 9))
    return (kh, kw), (sh, sw), pads, height, width


def _nhwc(x):
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int8", "uint8", "int16"]),
       ceil_mode=st.booleans(), layout=st.sampled_from(["NCHW", "NHWC"]))
def test_maxpool(seed, dtype, ceil_mode, layout):
    rng = np.random.default_rng(seed)
    kernel, strides, pads, height, width = _pool_case(rng)
    dil = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    height, width = height + 2 * dil[0], width + 2 * dil[1]
    x = _codes(rng, dtype, (2, 3, height, width))
    want = pool_ref.maxpool(x, kernel, strides, pads, dil, ceil_mode)
    xin = _nhwc(x) if layout == "NHWC" else x
    got = pool.maxpool(xin, layout=layout, kernel=kernel, strides=strides, pads=pads,
                       dilations=dil, ceil_mode=ceil_mode)
    np.testing.assert_array_equal(got, _nhwc(want) if layout == "NHWC" else want)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int8", "uint8"]),
       ceil_mode=st.booleans(), include_pad=st.booleans(), layout=st.sampled_from(["NCHW", "NHWC"]),
       pow2=st.booleans())
def test_avgpool_ort_float(seed, dtype, ceil_mode, include_pad, layout, pow2):
    rng = np.random.default_rng(seed)
    kernel, strides, pads, height, width = _pool_case(rng)
    x = _codes(rng, dtype, (2, 3, height, width))
    if pow2:
        s_in, s_out = (np.float32(2.0 ** int(e)) for e in rng.integers(-5, 2, 2))
    else:
        s_in, s_out = (np.float32(v) for v in rng.uniform(0.01, 0.5, 2))
    z_in, z_out = (int(v) for v in rng.integers(*_range(dtype), 2))
    lo, hi = _range(dtype)
    want, want_sat = pool_ref.avgpool_ort_float(x, kernel, strides, pads, ceil_mode, include_pad,
                                                s_in, z_in, s_out, z_out, lo, hi, dtype)
    xin = _nhwc(x) if layout == "NHWC" else x
    got, got_sat = pool.avgpool(xin, layout=layout, kernel=kernel, strides=strides, pads=pads,
                                ceil_mode=ceil_mode, count_include_pad=include_pad,
                                mode="ort_float", scale_in=s_in, zero_point_in=z_in,
                                scale_out=s_out, zero_point_out=z_out, out_min=lo, out_max=hi,
                                out_dtype=dtype)
    np.testing.assert_array_equal(got, _nhwc(want) if layout == "NHWC" else want)
    assert got_sat == want_sat


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int8", "uint8", "int16"]),
       ceil_mode=st.booleans(), include_pad=st.booleans())
def test_avgpool_tflite_raw(seed, dtype, ceil_mode, include_pad):
    rng = np.random.default_rng(seed)
    kernel, strides, pads, height, width = _pool_case(rng)
    x = _codes(rng, dtype, (1, 4, height, width))
    lo, hi = _range(dtype)
    if rng.random() < 0.4:
        lo = int(rng.integers(lo, 1))
    want, want_sat = pool_ref.avgpool_tflite(x, kernel, strides, pads, ceil_mode, include_pad,
                                             lo, hi, dtype)
    got, got_sat = pool.avgpool(x, kernel=kernel, strides=strides, pads=pads, ceil_mode=ceil_mode,
                                count_include_pad=include_pad, mode="tflite_raw", out_min=lo,
                                out_max=hi, out_dtype=dtype)
    np.testing.assert_array_equal(got, want)
    assert got_sat == want_sat


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int8", "uint8", "int16"]),
       ceil_mode=st.booleans(), include_pad=st.booleans(), rounding=st.sampled_from(MODES))
def test_avgpool_fixed_average(seed, dtype, ceil_mode, include_pad, rounding):
    rng = np.random.default_rng(seed)
    kernel, strides, pads, height, width = _pool_case(rng)
    x = _codes(rng, dtype, (1, 3, height, width))
    z_in = int(rng.integers(*_range(dtype)))
    want = pool_ref.avgpool_fixed_avg(x, kernel, strides, pads, ceil_mode, include_pad, z_in,
                                      rounding)
    got, _ = pool.avgpool(x, kernel=kernel, strides=strides, pads=pads, ceil_mode=ceil_mode,
                          count_include_pad=include_pad, mode="fixed", zero_point_in=z_in,
                          rq_rounding=rounding)
    np.testing.assert_array_equal(got, want)


def test_global_sum_and_pool_errors():
    rng = np.random.default_rng(3)
    x = _codes(rng, "uint8", (2, 5, 3, 4))
    np.testing.assert_array_equal(pool.global_sum(x, input_zero_point=7), pool_ref.global_sum(x, 7))
    nhwc = pool.global_sum(_nhwc(x), layout="NHWC", input_zero_point=7)
    np.testing.assert_array_equal(nhwc, _nhwc(pool_ref.global_sum(x, 7)))
    with pytest.raises(KernelInputError, match="empty output"):
        pool.maxpool(x, kernel=(5, 5))
    with pytest.raises(KernelInputError, match="mode"):
        pool.avgpool(x, kernel=(2, 2), mode="exact")
    with pytest.raises(KernelInputError, match="padding"):
        pool.avgpool(x, kernel=(2, 2), pads=(3, 0, 0, 0), mode="tflite_raw")


@pytest.mark.parametrize("in_size,k,s,p0,p1,ceil,want", [
    (5, 2, 2, 0, 0, False, 2), (5, 2, 2, 0, 0, True, 3), (6, 3, 2, 1, 1, True, 4),
    (5, 3, 2, 1, 1, True, 3),
    (4, 2, 2, 0, 1, True, 2), (7, 3, 3, 0, 0, True, 3), (32, 3, 2, 1, 1, False, 16)])
def test_pool_output_size(in_size, k, s, p0, p1, ceil, want):
    assert pool.pool_output_size(in_size, k, s, p0, p1, 1, ceil) == want


# --- movement and softmax -------------------------------------------------------------------------
def test_movement():
    x = np.arange(24, dtype=np.int8).reshape(2, 3, 4)
    np.testing.assert_array_equal(movement.reshape(x, shape=(0, -1)), x.reshape(2, 12))
    np.testing.assert_array_equal(movement.reshape(x, shape=(-1, 0, 2)), x.reshape(4, 3, 2))
    np.testing.assert_array_equal(movement.transpose(x, perm=(2, 0, 1)), x.transpose(2, 0, 1))
    np.testing.assert_array_equal(movement.concat([x, x[:, :1]], axis=1),
                                  np.concatenate([x, x[:, :1]], axis=1))
    np.testing.assert_array_equal(movement.concat([x, x], axis=-1), np.concatenate([x, x], -1))
    with pytest.raises(KernelInputError, match="reshape"):
        movement.reshape(x, shape=(5, -1))
    with pytest.raises(KernelInputError, match="perm"):
        movement.transpose(x, perm=(0, 0, 1))
    with pytest.raises(KernelInputError, match="dtype"):
        movement.concat([x, x.astype(np.uint8)], axis=0)


def test_softmax_float_against_numpy():
    rng = np.random.default_rng(5)
    x = _codes(rng, "int8", (4, 10))
    s_in, z_in, s_out, z_out = np.float32(0.1), 3, np.float32(1 / 256), -128
    got, _ = softmax.softmax_float(x, axis=-1, scale_in=s_in, zero_point_in=z_in,
                                   scale_out=s_out, zero_point_out=z_out, out_min=-128,
                                   out_max=127, out_dtype="int8")
    xf = ((x.astype(np.int64) - z_in).astype(np.float32) * s_in).astype(np.float64)
    e = np.exp(xf - xf.max(-1, keepdims=True))
    y = (e / e.sum(-1, keepdims=True)).astype(np.float32)
    want = np.clip(np.rint(y / s_out).astype(np.int64) + z_out, -128, 127)
    np.testing.assert_array_equal(got, want)
