"""Kernels of LiteRT's 16-bit integer paths that no other kernel family covers.

* :func:`lut16` - a 65536-entry table lookup of an int16/uint16 tensor (LEAKY_RELU and other
  pointwise functions whose 16-bit result is a function of the input code alone).
* :func:`add_sub_tflite` - TFLite's quantized ADD/SUB (int8/uint8/int16) with numpy broadcasting;
  SUB negates the second input's Q31 multiplier (``input2_multiplier *= -1``); the optimized
  int16 ADD rounds the inputs' multiply once (``input_rounding='single'``).
* :func:`transpose_conv_acc` - TRANSPOSE_CONV's scatter accumulation: every input pixel adds
  ``(x - z_in) * w`` to the output window it lands on; the accumulator wraps at ``acc_bits``.
* :func:`softmax_int16` - ``reference_ops::SoftmaxInt16`` (exp and 1/(1+x) tables of 513 int16
  entries, ``generic_int16_table_lookup``).

Integer work is int64 inside ``@njit(cache=True)`` functions; each has a plain numpy/Python
reference in ``tests/reference/int16_ref.py``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from simulator.errors import KernelInputError
from simulator.kernels.accum import acc_limits
from simulator.kernels.quant import check_int_array
from simulator.primitives import multiply_by_quantized_multiplier, wrap_bits

_16BIT = ("int16", "uint16")
_BINARY = ("int8", "uint8", "int16")


# --------------------------------------------------------------------------------------------
# 16-bit table lookup
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _lut16_apply(flat, offset, table, out):
    for i in range(flat.size):
        out[i] = table[np.int64(flat[i]) - offset]


def lut16(x, *, table, out_dtype):
    """``out = table[x - min(dtype(x))]`` for 16-bit ``x``; ``table`` has 65536 entries of
    ``out_dtype``."""
    check_int_array("lut16 input", x, _16BIT)
    dt = np.dtype(out_dtype)
    table = np.asarray(table)
    if table.shape != (65536,) or table.dtype != dt:
        raise KernelInputError(f"lut16: table must be {dt.name}[65536], got "
                               f"{table.dtype}{list(table.shape)}")
    flat = np.ascontiguousarray(x.reshape(-1))
    out = np.empty(flat.size, dt)
    _lut16_apply(flat, np.int64(np.iinfo(x.dtype).min), np.ascontiguousarray(table), out)
    return out.reshape(x.shape)


# --------------------------------------------------------------------------------------------
# ADD / SUB (TFLite)
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _scale_input(x, m, shift, single, ruy):
    if single:
        t = 31 - shift
        return (x * m + (np.int64(1) << (t - 1))) >> t
    return multiply_by_quantized_multiplier(x, m, shift, ruy)


@njit(cache=True)
def _add_sub_tflite_flat(a1, b1, za, zb, zo, left_shift, m_a, s_a, m_b, s_b, m_o, s_o, single,
                         ruy, out_min, out_max, out):
    n_sat = 0
    for i in range(a1.size):
        # (q - z) << left_shift fits int32 (checked by the caller)
        x1 = (np.int64(a1[i]) - za) << left_shift
        x2 = (np.int64(b1[i]) - zb) << left_shift
        y1 = _scale_input(x1, m_a, s_a, single, ruy)
        y2 = _scale_input(x2, m_b, s_b, single, ruy)
        raw = multiply_by_quantized_multiplier(wrap_bits(y1 + y2, 32), m_o, s_o, ruy) + zo
        if raw < out_min:
            raw = out_min
            n_sat += 1
        elif raw > out_max:
            raw = out_max
            n_sat += 1
        out[i] = raw
    return n_sat


def add_sub_tflite(a, b, *, subtract, left_shift, multiplier_a, shift_a, multiplier_b, shift_b,
                   multiplier_out, shift_out, zero_point_a, zero_point_b, zero_point_out,
                   out_min, out_max, out_dtype, input_rounding="double", rq_rounding="half_away"):
    """TFLite ADD/SUB (int8/uint8/int16); returns ``(out, out_saturated)``. Multipliers are the
    positive Q31 values, shifts in TFLite's sign; ``subtract`` negates ``multiplier_b`` inside,
    as SUB's Prepare does. ``input_rounding``: 'double' (gemmlowp, or ruy with ``rq_rounding=
    'half_up'``) or 'single' (``(x * M + 2**(t-1)) >> t``) for the two inputs' multiply."""
    for name, arr in (("add/sub input a", a), ("add/sub input b", b)):
        check_int_array(name, arr, _BINARY)
    if rq_rounding not in ("half_away", "half_up"):
        raise KernelInputError(f"add_sub_tflite: rq_rounding must be half_away or half_up, got "
                               f"{rq_rounding!r}")
    for name, m, s in (("multiplier_a", multiplier_a, shift_a), ("multiplier_b", multiplier_b, shift_b),
                       ("multiplier_out", multiplier_out, shift_out)):
        if not 0 <= int(m) < 2**31 or not -31 <= int(s) <= 30:
            raise KernelInputError(f"add_sub_tflite: {name} {int(m)} with shift {int(s)} is outside "
                                   f"[0, 2**31) x [-31, 30]")
    for arr, z in ((a, int(zero_point_a)), (b, int(zero_point_b))):
        if arr.size and max(abs(int(arr.max()) - z), abs(int(arr.min()) - z)) << int(left_shift) >= 2**31:
            raise KernelInputError("add_sub_tflite: (q - zp) << left_shift overflows int32")
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise KernelInputError(f"shapes {list(a.shape)} and {list(b.shape)} cannot be broadcast "
                               f"together") from None
    # int64 in and out: one compilation serves every code type
    a1 = np.ascontiguousarray(np.broadcast_to(a, shape), np.int64).reshape(-1)
    b1 = np.ascontiguousarray(np.broadcast_to(b, shape), np.int64).reshape(-1)
    out = np.empty(a1.size, np.int64)
    i64 = np.int64
    m_b = -int(multiplier_b) if subtract else int(multiplier_b)
    n_sat = _add_sub_tflite_flat(a1, b1, i64(zero_point_a), i64(zero_point_b), i64(zero_point_out),
                                 i64(left_shift), i64(multiplier_a), i64(shift_a), i64(m_b),
                                 i64(shift_b), i64(multiplier_out), i64(shift_out),
                                 input_rounding == "single", rq_rounding == "half_up",
                                 i64(out_min), i64(out_max), out)
    return out.astype(np.dtype(out_dtype)).reshape(shape), int(n_sat)


# --------------------------------------------------------------------------------------------
# TRANSPOSE_CONV
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _transpose_conv_nhwc(x, w, zin, sh, sw, pad_t, pad_l, out_h, out_w, bits, out):
    """``out`` [N, OH, OW, M] int64 (zeroed): scatter ``(x - zin) * w`` in LiteRT's loop order
    (input row, column, channel, kernel row, column, output channel), wrapping at ``bits``."""
    n_b, in_h, in_w, c_in = x.shape
    m_out, _, kh_n, kw_n = w.shape
    for n in range(n_b):
        for iy in range(in_h):
            for ix in range(in_w):
                for ci in range(c_in):
                    xv = np.int64(x[n, iy, ix, ci]) - zin
                    if xv == 0:
                        continue
                    for ky in range(kh_n):
                        oy = iy * sh - pad_t + ky
                        if oy < 0 or oy >= out_h:
                            continue
                        for kx in range(kw_n):
                            ox = ix * sw - pad_l + kx
                            if ox < 0 or ox >= out_w:
                                continue
                            for m in range(m_out):
                                out[n, oy, ox, m] = wrap_bits(
                                    out[n, oy, ox, m] + xv * np.int64(w[m, ci, ky, kx]), bits)


def transpose_conv_acc(x, weight, *, bias, input_zero_point, strides, pads, output_size,
                       layout, acc_bits):
    """TRANSPOSE_CONV accumulator (int64, in ``layout``): the scatter sum wrapped to
    ``acc_bits`` (wrapping makes the order irrelevant), then ``+ bias`` wrapped (LiteRT adds the
    bias to the finished sum). ``weight`` [M, C, KH, KW]; ``pads`` (top, left); ``output_size``
    (OH, OW)."""
    check_int_array("transpose_conv input", x, ("int8", "uint8", "int16", "uint16"))
    if x.ndim != 4:
        raise KernelInputError(f"transpose_conv: input must be 4-D, got shape {list(x.shape)}")
    acc_limits(acc_bits)   # 16..64 bits, else a KernelInputError
    xs = x if layout == "NHWC" else x.transpose(0, 2, 3, 1)
    w = np.ascontiguousarray(np.asarray(weight).astype(np.int64))
    if w.ndim != 4 or w.shape[1] != xs.shape[3]:
        raise KernelInputError(f"transpose_conv: weight {list(w.shape)} does not match "
                               f"{xs.shape[3]} input channels")
    m = w.shape[0]
    b = np.zeros(m, np.int64) if bias is None else np.asarray(bias, np.int64).reshape(-1)
    if b.size != m:
        raise KernelInputError(f"transpose_conv: bias has {b.size} values for {m} outputs")
    oh, ow = (int(d) for d in output_size)
    out = np.zeros((xs.shape[0], oh, ow, m), np.int64)
    _transpose_conv_nhwc(np.ascontiguousarray(xs, np.int64), w, np.int64(input_zero_point),
                         np.int64(strides[0]), np.int64(strides[1]), np.int64(pads[0]),
                         np.int64(pads[1]), np.int64(oh), np.int64(ow), np.int64(acc_bits), out)
    out = out + b
    if acc_bits < 64:
        half = 1 << (int(acc_bits) - 1)
        out = ((out + half) & ((1 << int(acc_bits)) - 1)) - half
    return out if layout == "NHWC" else np.ascontiguousarray(out.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------------------------
# SOFTMAX int16
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def lut_lookup_int16(value, lut):
    """``LUTLookup`` (``generic_int16_table_lookup``): 512 segments of 128 codes, linear
    interpolation with the slope to the next entry, ``(slope * offset + 64) >> 7``."""
    v = np.int64(value)
    index = 256 + (v >> 7)
    offset = v & 0x7F
    base = np.int64(lut[index])
    slope = np.int64(lut[index + 1]) - base
    return wrap_bits(base + ((slope * offset + 64) >> 7), 16)


@njit(cache=True)
def _clz32(v):
    """Count of leading zeros of a uint32 value (``v`` > 0)."""
    n = 0
    bit = np.int64(1) << 31
    while n < 32 and (v & bit) == 0:
        n += 1
        bit >>= 1
    return n


@njit(cache=True)
def _softmax_int16_rows(x, exp_lut, recip_lut, mult, shift, out):
    rows, depth = x.shape
    exps = np.empty(depth, np.int64)
    for r in range(rows):
        mx = np.int64(-32768)
        for c in range(depth):
            if x[r, c] > mx:
                mx = np.int64(x[r, c])
        total = np.int64(0)     # int32 sum of Q0.15 values (< 2**31 for depth < 65536)
        for c in range(depth):
            scaled = multiply_by_quantized_multiplier(np.int64(x[r, c]) - mx, mult, shift, False)
            sym = min(max(scaled + 32767, -32768), 32767)
            exps[c] = lut_lookup_int16(sym, exp_lut)
            total += exps[c]
        total = wrap_bits(total, 32)
        headroom_plus_one = _clz32(total & 0xFFFFFFFF)
        shifted = ((total << (headroom_plus_one - 1)) + (1 << 13)) >> 14
        sym_sum = min(max(shifted - ((1 << 15) + (1 << 16)), -32768), 32767)
        recip = lut_lookup_int16(sym_sum, recip_lut)
        right = 31 - headroom_plus_one
        rnd = np.int64(1) << (right - 1)
        for c in range(depth):
            v = wrap_bits((exps[c] * recip + rnd) >> right, 32)
            out[r, c] = min(max(v, 0), 32767)


def softmax_int16(x, *, exp_lut, one_over_one_plus_x_lut, input_multiplier, input_shift):
    """``reference_ops::SoftmaxInt16`` along the last axis of int16 ``x`` (output int16, scale
    1/32768): ``diff = x - max`` scaled by ``MBQM(diff, input_multiplier, input_shift)`` (TFLite
    shift sign) so that [-65535, 0] spans [-10, 0], exp from ``exp_lut`` at ``diff + 32767``, the
    int32 sum normalised by its leading zeros and inverted through ``one_over_one_plus_x_lut``,
    then ``(exp * recip + round) >> (31 - clz(sum))`` clamped to [0, 32767]."""
    check_int_array("softmax_int16 input", x, ("int16",))
    luts = []
    for name, lut in (("exp_lut", exp_lut), ("one_over_one_plus_x_lut", one_over_one_plus_x_lut)):
        lut = np.asarray(lut)
        if lut.shape != (513,) or lut.dtype != np.int16:
            raise KernelInputError(f"softmax_int16: {name} must be int16[513], got "
                                   f"{lut.dtype}{list(lut.shape)}")
        luts.append(np.ascontiguousarray(lut))
    if not 0 <= int(input_multiplier) < 2**31 or not -31 <= int(input_shift) <= 30:
        raise KernelInputError("softmax_int16: input multiplier/shift outside the Q31 ranges")
    if x.ndim == 0 or x.shape[-1] == 0:
        return x.copy()
    rows = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    out = np.empty(rows.shape, np.int16)
    _softmax_int16_rows(rows, luts[0], luts[1], np.int64(input_multiplier), np.int64(input_shift),
                        out)
    return out.reshape(x.shape)
