"""Choosing quantization grids that satisfy a profile's tensor format.

A grid is (dtype, scale, zero point, code range). These functions are pure: real ranges and
profile formats in, :class:`mrq.ir.QParams` out. Scale *selection* against data lives in the
passes; here are the candidates and the rounding of a scale onto the profile's scale form.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from mrq.ir import QParams


def code_range(fmt, dtype: str) -> tuple[int, int]:
    return fmt.qmin_qmax(dtype)


def snap_scale(scale: np.ndarray, scale_fmt, direction: str = "up") -> np.ndarray:
    """Round positive scales onto the profile's scale form.

    ``direction``: ``up`` never shrinks the scale (no new clipping), ``down`` never grows it,
    ``nearest`` picks the closer one in log domain."""
    scale = np.asarray(scale, np.float64)
    form = scale_fmt.form
    if form == "float":
        out = scale.astype(np.float32)
    elif form == "pow2":
        e = np.log2(scale)
        if direction == "up":
            e = np.ceil(e - 1e-12)
        elif direction == "down":
            e = np.floor(e + 1e-12)
        else:
            e = np.round(e)
        lo = scale_fmt.exponent_min if scale_fmt.exponent_min is not None else -126
        hi = scale_fmt.exponent_max if scale_fmt.exponent_max is not None else 127
        out = np.ldexp(1.0, np.clip(e, lo, hi).astype(np.int64)).astype(np.float32)
    elif form == "fixed_point":
        bits = scale_fmt.mantissa_bits
        mant, exp = np.frexp(scale)                      # scale = mant * 2**exp, mant in [0.5, 1)
        m = mant * (1 << bits)
        m = {"up": np.ceil, "down": np.floor}.get(direction, np.rint)(m - 1e-9 if direction == "up" else m)
        m = np.clip(m, 1, (1 << bits) - 1)
        out = np.ldexp(m, exp - bits).astype(np.float32)
    else:
        raise ValueError(f"unknown scale form {form!r}")
    return np.maximum(out, np.float32(np.finfo(np.float32).tiny))


def choose_dtype(fmt, nonnegative: bool) -> str:
    """Storage dtype for a tensor: unsigned where the profile allows it and the tensor never goes
    negative (symmetric unsigned after a ReLU doubles the resolution), else signed."""
    dtypes = fmt.dtypes()
    unsigned = [d for d in dtypes if d.startswith("u")]
    signed = [d for d in dtypes if not d.startswith("u")]
    if nonnegative and unsigned:
        return unsigned[0]
    return signed[0] if signed else unsigned[0]


def grid_for_range(lo: np.ndarray, hi: np.ndarray, fmt, axis: Optional[int] = None,
                   scale_multiplier: float | np.ndarray = 1.0, direction: str = "up") -> QParams:
    """A grid of profile format ``fmt`` that covers real values [lo, hi] (per channel when arrays).

    ``scale_multiplier`` < 1 clips the range (scale selection passes candidates through it)."""
    lo = np.minimum(np.atleast_1d(np.asarray(lo, np.float64)), 0.0)
    hi = np.maximum(np.atleast_1d(np.asarray(hi, np.float64)), 0.0)
    nonneg = bool(np.all(lo >= 0.0))
    dtype = choose_dtype(fmt, nonneg)
    qmin, qmax = fmt.qmin_qmax(dtype)
    if fmt.symmetric:
        zp = np.full(lo.shape, fmt.symmetric_zero_point(dtype), np.int64)
        pos, neg = qmax - int(zp[0]), int(zp[0]) - qmin
        scale = np.maximum(hi / max(pos, 1), -lo / max(neg, 1)) * scale_multiplier
        scale = np.where(scale > 0, scale, 1.0)
        scale = snap_scale(scale, fmt.scale, direction)
        return QParams(scale, zp, dtype, axis=axis if scale.size > 1 else None, **_width(fmt))
    # Asymmetric: the real range maps onto the full code range, zero exactly representable.
    scale = (hi - lo) / (qmax - qmin) * scale_multiplier
    scale = np.where(scale > 0, scale, 1.0)
    scale = snap_scale(scale, fmt.scale, direction)
    zp = np.clip(np.rint(qmin - lo / scale), qmin, qmax).astype(np.int64)
    return QParams(scale, zp, dtype, axis=axis if scale.size > 1 else None, **_width(fmt))


def _width(fmt) -> dict:
    """Code width and narrow range of a profile format, for QParams."""
    return {"narrow_range": bool(fmt.narrow_range), "bits": fmt.bits if fmt.bits not in (8, 16) else None}


def real_range(qp: QParams) -> tuple[np.ndarray, np.ndarray]:
    """The real values a grid can represent, per channel."""
    s = qp.scale.astype(np.float64)
    z = qp.zero_point.astype(np.float64)
    return (qp.qmin - z) * s, (qp.qmax - z) * s


def quantize_codes(real: np.ndarray, qp: QParams, axis_ndim: Optional[int] = None) -> np.ndarray:
    """Round-to-nearest-even codes of ``real`` on grid ``qp`` (clamped to its code range)."""
    ndim = real.ndim if axis_ndim is None else axis_ndim
    shape = qp.broadcast_shape(ndim)
    q = np.rint(real / qp.scale.astype(np.float64).reshape(shape)) + qp.zero_point.reshape(shape)
    return np.clip(q, qp.qmin, qp.qmax).astype(np.int64)


def describe(qp: Optional[QParams]) -> str:
    """One-line description of a grid for reports, e.g. 'uint8 asym per-tensor s=0.0235 zp=0'."""
    if qp is None:
        return "float"
    sym = "sym" if np.all(qp.zero_point == 0) else "asym"
    gran = f"per-channel[{qp.scale.size}]" if qp.per_channel else "per-tensor"
    pow2 = " pow2" if np.all(np.frexp(qp.scale.astype(np.float64))[0] == 0.5) else ""
    if qp.per_channel:
        return f"{qp.dtype} {sym} {gran}{pow2} s=[{qp.scale.min():.3g}..{qp.scale.max():.3g}]"
    return f"{qp.dtype} {sym} {gran}{pow2} s={qp.scale[0]:.4g} zp={int(qp.zero_point[0])}"


def is_lossless_shift(old: QParams, new: QParams) -> bool:
    """True when ``new`` is ``old`` with every code shifted by a constant (int8 <-> uint8 by 128):
    same scales, same representable real values, so re-coding is exact."""
    if old.scale.shape != new.scale.shape or not np.array_equal(old.scale, new.scale):
        return False
    delta = new.zero_point - old.zero_point
    if not np.all(delta == delta.flat[0]):
        return False
    return old.qmin + int(delta.flat[0]) >= new.qmin and old.qmax + int(delta.flat[0]) <= new.qmax
