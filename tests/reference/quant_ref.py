"""Reference requantization, quantize and dequantize (docs/PROGRAM.md), one element at a time.

float32 arithmetic uses numpy float32 scalars (IEEE single precision operations); int -> float32
conversion is the exact RNE conversion of ``primitives_ref``.
"""
from __future__ import annotations

import numpy as np

from . import primitives_ref as P

f32 = np.float32


def clamp(v: int, lo: int, hi: int) -> tuple[int, bool]:
    """(clamped value, whether it was outside)."""
    if v < lo:
        return lo, True
    if v > hi:
        return hi, True
    return v, False


def requant_value(acc: int, mode: str, mult, shift: int, rounding: str, zp: int, out_min: int,
                  out_max: int) -> tuple[int, bool]:
    """One accumulator -> (output code, saturated)."""
    acc = int(acc)
    if mode == "fp32":
        f = f32(P.int_to_f32(acc) * f32(mult))
        lo, hi = f32(out_min - zp), f32(out_max - zp)
        f_clamped = min(max(f, lo), hi)  # the float clamp of the spec
        q = P.round_float(f_clamped, rounding) + zp
        unclamped = P.round_float(f, rounding) + zp
        return q, not (out_min <= unclamped <= out_max)
    if mode == "fp32_zp_in":
        f = f32(f32(P.int_to_f32(acc) * f32(mult)) + P.int_to_f32(zp))
        return clamp(P.round_float(f, rounding), out_min, out_max)
    if mode == "fixed":
        return clamp(P.mul_shift_round(acc, int(mult), int(shift), rounding) + zp, out_min, out_max)
    if mode == "shift":
        return clamp(P.rounding_shift_right(acc, int(shift), rounding) + zp, out_min, out_max)
    if mode == "double_q31":
        x = P.wrap(acc, 32)
        if rounding == "half_up":
            y = P.mbqm_ruy(x, int(mult), 31 - int(shift))
        else:
            y = P.mbqm(x, int(mult), 31 - int(shift))
        return clamp(y + zp, out_min, out_max)
    raise ValueError(mode)


def requantize(acc: np.ndarray, mode, multiplier, shift, rounding, zp, out_min, out_max,
               out_dtype, channel_axis) -> tuple[np.ndarray, int]:
    acc = np.asarray(acc)
    out = np.empty(acc.shape, dtype=np.int64)
    n_sat = 0
    mult = np.atleast_1d(multiplier)
    shifts = np.atleast_1d(np.zeros(1, np.int64) if shift is None else shift)
    for idx in np.ndindex(*acc.shape):
        c = idx[channel_axis] if acc.ndim else 0
        m = mult[c] if mult.size > 1 else mult[0]
        s = shifts[c] if shifts.size > 1 else shifts[0]
        v, sat = requant_value(int(acc[idx]), mode, m, s, rounding, zp, out_min, out_max)
        out[idx] = v
        n_sat += sat
    return out.astype(out_dtype), n_sat


def quantize(x: np.ndarray, scale, zero_point, axis, rounding, method, out_min, out_max,
             out_dtype) -> tuple[np.ndarray, int]:
    scale = np.atleast_1d(np.asarray(scale, dtype=np.float32))
    zero_point = np.atleast_1d(zero_point)
    out = np.empty(x.shape, dtype=np.int64)
    n_sat = 0
    for idx in np.ndindex(*x.shape):
        c = idx[axis] if scale.size > 1 else 0
        s, z = scale[c], int(zero_point[c])
        if method == "divide":
            f = f32(x[idx] / s)
        else:
            f = f32(x[idx] * f32(f32(1.0) / s))
        if np.isnan(f):
            q, sat = out_min, True
        elif np.isinf(f):
            q, sat = (out_max if f > 0 else out_min), True
        else:
            q, sat = clamp(P.round_float(f, rounding) + z, out_min, out_max)
        out[idx] = q
        n_sat += sat
    return out.astype(out_dtype), n_sat


def dequantize(x: np.ndarray, scale, zero_point, axis) -> np.ndarray:
    scale = np.atleast_1d(np.asarray(scale, dtype=np.float32))
    zero_point = np.atleast_1d(zero_point)
    n = max(scale.size, zero_point.size)
    out = np.empty(x.shape, dtype=np.float32)
    for idx in np.ndindex(*x.shape):
        c = idx[axis] if n > 1 else 0
        s = scale[c] if scale.size > 1 else scale[0]
        z = int(zero_point[c] if zero_point.size > 1 else zero_point[0])
        out[idx] = f32(P.int_to_f32(int(x[idx]) - z) * s)
    return out
