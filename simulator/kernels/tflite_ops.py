"""Kernels for the TFLite-only int8 arithmetic (LiteRT reference kernels and its default x86 path).

All integer work is int64 inside ``@njit(cache=True)`` functions that state the int32 behaviour
they model; float32 steps go through :mod:`simulator.primitives` (one rounding per operation).

* :func:`softmax_gemmlowp` - ``reference_ops::Softmax`` for int8/uint8 input (LiteRT
  ``BUILTIN_REF``): input differences scaled to Q5.26 by ``SRDHM(diff << left_shift, M)``,
  gemmlowp ``exp_on_negative_values``, sum in Q12.19, ``GetReciprocal`` (gemmlowp
  ``one_over_one_plus_x_for_x_in_0_1``), output ``RoundingDivideByPOT(SRDHM(recip, exp),
  bits_over_unit + 31 - out_bits) + out_offset``; entries with ``diff < diff_min`` give the
  lowest code.
* :func:`softmax_lut` - ``optimized_ops::Softmax`` (the default kernel on x86): a float32 table
  ``table[255 - d] = exp(-s*beta*d)``, float32 sum in element order, ``inv = f32(1 / f32(sum *
  s_out))``, ``q = round_half_away(f32(e * inv)) + zp`` (uint8 output on x86: ``int(f32(p +
  0.5f))``), clamp.
* :func:`lut8` - a 256-entry table lookup (LOGISTIC int8/uint8, both LiteRT paths).
* :func:`mean_tflite` - ``reference_ops::QuantizedMeanOrSum`` (mean): int32 sum of raw codes,
  ``MBQM(wrap32(sum - z_in * n), M, shift) + z_out``, clamp (M and shift already include 1/n).
* :func:`mean_xnnpack` - XNNPACK qs8 mean: ``q = nearbyint(f32(f32(f32(sum) * scale) + zp))``,
  clamp (the input zero point is folded into the float ``zp``).
* :func:`reduce_sum` - exact int64 sums of ``x - z_in`` over axes (for a requantized mean).
* :func:`pad` - constant padding with an integer code.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from simulator.errors import KernelInputError
from simulator.launch import Call, In, Launch, Tmp, cast_copy
from simulator.kernels.quant import check_int_array, check_out_range
from simulator.primitives import (
    INT32_MAX,
    INT32_MIN,
    ROUNDING_CODES,
    f32_add,
    f32_div,
    f32_mul,
    int_to_f32,
    multiply_by_quantized_multiplier,
    round_float,
    rounding_divide_by_pot_i32,
    srdhm_i32,
    wrap_bits,
)

_8BIT = ("int8", "uint8")
# the C++ conversions these kernels model: static_cast (truncation), std::round (RHA),
# nearbyint (RNE)
_TRUNC = ROUNDING_CODES["toward_zero"]
_RHA = ROUNDING_CODES["half_away"]
_RNE = ROUNDING_CODES["half_even"]


# --------------------------------------------------------------------------------------------
# gemmlowp fixed point (FixedPoint<int32, k> raw values held in int64)
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _wrap32(x):
    """int32 addition/subtraction result (two's complement wrap)."""
    return wrap_bits(np.int64(x), 32)


@njit(cache=True)
def _sat_shl(x, exponent):
    """gemmlowp ``SaturatingRoundingMultiplyByPOT<exponent>`` for exponent > 0: ``x << e``,
    saturated to int32 when ``|x| > 2**(31-e) - 1``."""
    threshold = (np.int64(1) << (31 - exponent)) - 1
    if x > threshold:
        return INT32_MAX
    if x < -threshold:
        return INT32_MIN
    return np.int64(x) << exponent


@njit(cache=True)
def _exp_quarter(a):
    """gemmlowp ``exp_on_interval_between_negative_one_quarter_and_0_excl`` (Q0.31 in/out):
    Taylor expansion around -1/8 with the constants exp(-1/8) = 1895147668 and 1/3 = 715827883."""
    x = _wrap32(a + (np.int64(1) << 28))
    x2 = srdhm_i32(x, x)
    x3 = srdhm_i32(x2, x)
    x4 = srdhm_i32(x2, x2)
    x4_over_4 = rounding_divide_by_pot_i32(x4, 2)
    poly = srdhm_i32(_wrap32(x4_over_4 + x3), 715827883)
    poly = rounding_divide_by_pot_i32(_wrap32(poly + x2), 1)
    return _wrap32(1895147668 + srdhm_i32(1895147668, _wrap32(x + poly)))


@njit(cache=True)
def _exp_on_negative_values(a, integer_bits):
    """gemmlowp ``exp_on_negative_values``: ``a`` raw Q(ib).(31-ib), a <= 0 -> exp(a) raw Q0.31.
    The argument mod 1/4 goes through :func:`_exp_quarter`; each set bit of the remainder
    multiplies by exp(-2**k), k = -2..4 (barrel shifter)."""
    frac_bits = 31 - integer_bits
    one_quarter = np.int64(1) << (frac_bits - 2)
    a_mod = _wrap32((a & (one_quarter - 1)) - one_quarter)
    result = _exp_quarter(_sat_shl(a_mod, integer_bits))
    remainder = _wrap32(a_mod - a)
    for k in range(7):
        exponent = k - 2
        if integer_bits > exponent:
            if k == 0:
                mult = 1672461947
            elif k == 1:
                mult = 1302514674
            elif k == 2:
                mult = 790015084
            elif k == 3:
                mult = 290630308
            elif k == 4:
                mult = 39332535
            elif k == 5:
                mult = 720401
            else:
                mult = 242
            bit = np.int64(1) << (frac_bits + exponent)
            if remainder & bit:
                result = srdhm_i32(result, mult)
    if integer_bits > 5:
        clamp = -(np.int64(1) << (36 - integer_bits))
        if a < clamp:
            result = 0
    if a == 0:
        result = INT32_MAX
    return result


@njit(cache=True)
def _one_over_one_plus_x(a):
    """gemmlowp ``one_over_one_plus_x_for_x_in_0_1`` (Q0.31 in, Q0.31 out): Newton-Raphson in
    Q2.29 from 48/17 - 32/17 * d, three iterations, d = RoundingHalfSum(a, 1)."""
    s = np.int64(a) + INT32_MAX
    if s >= 0:
        half_den = (s + 1) // 2
    else:
        half_den = -((-(s - 1)) // 2)
    x = _wrap32(1515870810 + srdhm_i32(half_den, -1010580540))
    for _ in range(3):
        hd_x = srdhm_i32(half_den, x)
        one_minus = _wrap32((np.int64(1) << 29) - hd_x)
        x = _wrap32(x + _sat_shl(srdhm_i32(x, one_minus), 2))
    return _sat_shl(x, 1)


@njit(cache=True)
def _clz32(x):
    """Count leading zeros of a uint32 value held in int64."""
    x = np.int64(x) & 0xFFFFFFFF
    n = 0
    while n < 32 and not (x & (np.int64(1) << (31 - n))):
        n += 1
    return n


# --------------------------------------------------------------------------------------------
# SOFTMAX
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _softmax_gemmlowp_rows(x, input_multiplier, input_left_shift, diff_min, out_bits, out_offset,
                           out_min, out_max, out):
    rows, depth = x.shape
    exps = np.empty(depth, np.int64)
    n_sat = 0
    for r in range(rows):
        mx = np.int64(x[r, 0])
        for c in range(1, depth):
            if x[r, c] > mx:
                mx = np.int64(x[r, c])
        total = np.int64(0)
        for c in range(depth):
            diff = np.int64(x[r, c]) - mx
            if diff >= diff_min:
                scaled = srdhm_i32(_wrap32(diff << input_left_shift), input_multiplier)
                e = _exp_on_negative_values(scaled, 5)
                exps[c] = e
                total = _wrap32(total + rounding_divide_by_pot_i32(e, 12))
            else:
                exps[c] = 0
        headroom_plus_one = _clz32(total)
        bits_over_unit = 12 - headroom_plus_one
        shifted = _wrap32(((total << headroom_plus_one) & 0xFFFFFFFF) - (np.int64(1) << 31))
        recip = _one_over_one_plus_x(shifted)
        exponent = bits_over_unit + 31 - out_bits
        for c in range(depth):
            diff = np.int64(x[r, c]) - mx
            if diff >= diff_min:
                v = rounding_divide_by_pot_i32(srdhm_i32(recip, exps[c]), exponent) + out_offset
            else:
                v = out_offset
            if v < out_min:
                v = out_min
                n_sat += 1
            elif v > out_max:
                v = out_max
                n_sat += 1
            out[r, c] = v
    return n_sat


def softmax_gemmlowp_launch(x, *, input_multiplier, input_left_shift, diff_min, out_dtype,
                            out_min=None, out_max=None):
    """The :class:`simulator.launch.Launch` of :func:`softmax_gemmlowp` for inputs of ``x``'s
    shape and dtype (values not read).

    ``input_multiplier``/``input_left_shift`` come from ``PreprocessSoftmaxScaling(beta, s_in,
    5)`` and ``diff_min = -CalculateInputRadius(5, input_left_shift)``; the output offset is the
    lowest code of ``out_dtype`` (TFLite requires the output zero point to be it)."""
    check_int_array("softmax input", x, _8BIT)
    dt = np.dtype(out_dtype)
    if dt.name not in ("int8", "uint8", "int16"):
        raise KernelInputError(f"softmax (gemmlowp): out_dtype must be int8/uint8/int16, got {dt.name}")
    info = np.iinfo(dt)
    out_min, out_max, dt = check_out_range(info.min if out_min is None else out_min,
                                           info.max if out_max is None else out_max, dt)
    if not 0 <= int(input_left_shift) <= 31:
        raise KernelInputError(f"softmax (gemmlowp): input_left_shift {input_left_shift} outside [0, 31]")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise KernelInputError("softmax (gemmlowp): empty last axis")
    return _rows_launch(x, dt, _softmax_gemmlowp_rows, (
        np.int64(input_multiplier), np.int64(input_left_shift), np.int64(diff_min),
        np.int64(8 * dt.itemsize), np.int64(info.min), np.int64(out_min), np.int64(out_max)))


def _rows_launch(x, dt, kernel, params):
    """A :class:`Launch` running ``kernel(x2, *params, out) -> n_sat`` on ``x`` as [rows, depth]
    with an int64 ``out``, then casting to ``dt`` in ``x``'s shape."""
    shape = tuple(int(d) for d in x.shape)
    depth = shape[-1]
    size = int(np.prod(shape, dtype=np.int64))
    rows = size // depth
    return Launch((((rows, depth), "int64"), ((size,), dt.name)),
                  (Call(kernel, (In(0, (rows, depth)),) + params + (Tmp(0),), counted=True),
                   Call(cast_copy, (Tmp(0, (size,)), Tmp(1)))),
                  (Tmp(1, shape),))


def _execute(launch, x):
    outs, n_sat = launch.execute((np.ascontiguousarray(x),))
    return outs[0], n_sat


def softmax_gemmlowp(x, **params):
    """TFLite reference int8/uint8 softmax along the last axis; returns ``(out, out_saturated)``.
    Parameters: see :func:`softmax_gemmlowp_launch`."""
    return _execute(softmax_gemmlowp_launch(x, **params), x)


@njit(cache=True)
def _softmax_lut_rows(x, table, scale_out, zero_point, add_half, out_min, out_max, out):
    rows, depth = x.shape
    n_sat = 0
    for r in range(rows):
        mx = np.int64(x[r, 0])
        for c in range(1, depth):
            if x[r, c] > mx:
                mx = np.int64(x[r, c])
        total = np.float32(0.0)
        for c in range(depth):
            total = f32_add(total, table[255 - mx + np.int64(x[r, c])])
        inv = f32_div(np.float32(1.0), f32_mul(total, scale_out))
        for c in range(depth):
            prob = f32_mul(table[255 - mx + np.int64(x[r, c])], inv)
            if add_half:   # static_cast<int32_t>(prob + 0.5f): float add, then truncation
                v = round_float(f32_add(prob, np.float32(0.5)), _TRUNC)
            else:          # std::round (half away) + zero point
                v = round_float(prob, _RHA) + zero_point
            if v < out_min:
                v = out_min
                n_sat += 1
            elif v > out_max:
                v = out_max
                n_sat += 1
            out[r, c] = v
    return n_sat


def softmax_lut_launch(x, *, table, scale_out, zero_point_out, out_min, out_max, out_dtype,
                       rounding="half_away"):
    """The :class:`simulator.launch.Launch` of :func:`softmax_lut` for inputs of ``x``'s shape
    and dtype (values not read). ``table`` is float32[256] with ``table[255 - d] = exp(-s*beta*d)``.
    ``rounding``: 'half_away' (``std::round(p) + zp``, int8 output) or 'add_half_truncate'
    (``int(f32(p + 0.5f))``, zero point ignored: TFLite's uint8 output on non-ARM64)."""
    if rounding not in ("half_away", "add_half_truncate"):
        raise KernelInputError(f"softmax (lut): rounding must be 'half_away' or 'add_half_truncate', got {rounding!r}")
    check_int_array("softmax input", x, _8BIT)
    table = np.asarray(table)
    if table.dtype != np.float32 or table.shape != (256,):
        raise KernelInputError(f"softmax (lut): table must be float32[256], got {table.dtype}{list(table.shape)}")
    out_min, out_max, dt = check_out_range(out_min, out_max, out_dtype)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise KernelInputError("softmax (lut): empty last axis")
    return _rows_launch(x, dt, _softmax_lut_rows, (
        np.ascontiguousarray(table), np.float32(scale_out), np.int64(zero_point_out),
        rounding == "add_half_truncate", np.int64(out_min), np.int64(out_max)))


def softmax_lut(x, **params):
    """TFLite optimized int8/uint8 softmax (float LUT) along the last axis; returns
    ``(out, out_saturated)``. Parameters: see :func:`softmax_lut_launch`."""
    return _execute(softmax_lut_launch(x, **params), x)


# --------------------------------------------------------------------------------------------
# Table lookup (LOGISTIC)
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _lut_apply(x, offset, table, out):
    for i in range(x.size):
        out[i] = table[np.int64(x[i]) - offset]


def lut8(x, *, table, out_dtype):
    """``out = table[x - min(dtype(x))]`` for 8-bit ``x``; ``table`` has 256 entries of
    ``out_dtype``."""
    check_int_array("lut input", x, _8BIT)
    dt = np.dtype(out_dtype)
    table = np.asarray(table)
    if table.shape != (256,) or table.dtype != dt:
        raise KernelInputError(f"lut: table must be {dt.name}[256], got {table.dtype}{list(table.shape)}")
    flat = np.ascontiguousarray(x.reshape(-1))
    out = np.empty(flat.size, dt)
    _lut_apply(flat, np.int64(np.iinfo(x.dtype).min), np.ascontiguousarray(table), out)
    return out.reshape(x.shape)


# --------------------------------------------------------------------------------------------
# MEAN
# --------------------------------------------------------------------------------------------
def _check_axes(x, axes):
    axes = tuple(sorted({int(a) % x.ndim for a in axes})) if x.ndim else ()
    if not axes:
        raise KernelInputError("mean: no reduction axes")
    return axes


def reduce_sum(x, *, axes, keep_dims, input_zero_point=0):
    """Exact int64 ``sum(x - z_in)`` over ``axes``; returns ``(sums, count)``."""
    check_int_array("mean input", x)
    axes = _check_axes(x, axes)
    count = int(np.prod([x.shape[a] for a in axes]))
    sums = x.astype(np.int64).sum(axis=axes, keepdims=bool(keep_dims)) - np.int64(input_zero_point) * count
    return sums, count


@njit(cache=True)
def _mean_tflite_apply(sums, count, zin, multiplier, shift, zout, out_min, out_max, out):
    n_sat = 0
    for i in range(sums.size):
        shifted = _wrap32(_wrap32(sums[i]) - _wrap32(zin * count))
        v = multiply_by_quantized_multiplier(shifted, multiplier, shift, False) + zout
        if v < out_min:
            v = out_min
            n_sat += 1
        elif v > out_max:
            v = out_max
            n_sat += 1
        out[i] = v
    return n_sat


def mean_tflite(x, *, axes, keep_dims, input_zero_point, multiplier, shift, out_zero_point, out_min,
                out_max, out_dtype):
    """TFLite reference quantized mean; ``shift`` in TFLite's sign (positive = left), already
    re-adapted for 1/n. Returns ``(out, out_saturated)``."""
    raw, count = reduce_sum(x, axes=axes, keep_dims=keep_dims, input_zero_point=0)
    out_min, out_max, dt = check_out_range(out_min, out_max, out_dtype)
    if not -31 <= int(shift) <= 30:
        raise KernelInputError(f"mean (tflite): shift {shift} outside [-31, 30]")
    flat = np.ascontiguousarray(raw.reshape(-1))
    out = np.empty(flat.size, np.int64)
    n_sat = _mean_tflite_apply(flat, np.int64(count), np.int64(input_zero_point), np.int64(multiplier),
                               np.int64(shift), np.int64(out_zero_point), np.int64(out_min),
                               np.int64(out_max), out)
    return out.astype(dt).reshape(raw.shape), int(n_sat)


@njit(cache=True)
def _mean_xnnpack_apply(sums, scale, zero_point, out_min, out_max, out):
    n_sat = 0
    for i in range(sums.size):
        y = f32_add(f32_mul(int_to_f32(_wrap32(sums[i])), scale), zero_point)
        v = round_float(y, _RNE)
        if v < out_min:
            v = out_min
            n_sat += 1
        elif v > out_max:
            v = out_max
            n_sat += 1
        out[i] = v
    return n_sat


def mean_xnnpack(x, *, axes, keep_dims, scale, zero_point, out_min, out_max, out_dtype):
    """XNNPACK qs8 mean: ``nearbyint(f32(f32(f32(sum) * scale) + zero_point))`` clamped, with
    ``sum`` the int32 sum of raw codes, ``scale = f32(f32(s_in/s_out) * f32(1/n))`` and
    ``zero_point = f32(z_out - f32(f32(n*z_in) * scale))`` (float32 values computed by the caller).
    Returns ``(out, out_saturated)``."""
    raw, _ = reduce_sum(x, axes=axes, keep_dims=keep_dims, input_zero_point=0)
    out_min, out_max, dt = check_out_range(out_min, out_max, out_dtype)
    flat = np.ascontiguousarray(raw.reshape(-1))
    out = np.empty(flat.size, np.int64)
    n_sat = _mean_xnnpack_apply(flat, np.float32(scale), np.float32(zero_point), np.int64(out_min),
                                np.int64(out_max), out)
    return out.astype(dt).reshape(raw.shape), int(n_sat)


# --------------------------------------------------------------------------------------------
# PAD
# --------------------------------------------------------------------------------------------
def pad(x, *, pads, value):
    """Constant padding: ``pads`` is ((before, after), ...) for every dimension; ``value`` is the
    integer code written into the border."""
    check_int_array("pad input", x)
    pads = tuple((int(a), int(b)) for a, b in pads)
    if len(pads) != x.ndim:
        raise KernelInputError(f"pad: {len(pads)} (before, after) pairs for a rank-{x.ndim} input")
    if any(a < 0 or b < 0 for a, b in pads):
        raise KernelInputError(f"pad: negative padding {pads}")
    info = np.iinfo(x.dtype)
    if not info.min <= int(value) <= info.max:
        raise KernelInputError(f"pad: value {value} outside the {x.dtype} range")
    out = np.full(tuple(d + a + b for d, (a, b) in zip(x.shape, pads)), int(value), x.dtype)
    out[tuple(slice(a, a + d) for d, (a, _) in zip(x.shape, pads))] = x
    return out


__all__ = ["softmax_gemmlowp", "softmax_lut", "lut8", "reduce_sum", "mean_tflite", "mean_xnnpack",
           "pad"]
