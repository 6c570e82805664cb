"""Float -> integer parameter derivation (the "prepare" step): requantization multipliers.

Every function returns what the simulator needs for one requantization mode, from real
multipliers. Sign convention everywhere: ``real ~= multiplier * 2**-shift`` (``shift`` is a
right shift; negative means left).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


def ort_multiplier(scale_in: np.ndarray, scale_w: np.ndarray, scale_out: np.ndarray) -> np.ndarray:
    """ONNX Runtime: ``f32(f32(sx*sw)/sy)``, each step rounded to float32 (MLAS/qlinearconv.cc)."""
    prod = (np.float32(scale_in) * np.asarray(scale_w, np.float32)).astype(np.float32)
    return (prod / np.float32(scale_out)).astype(np.float32)


def real_multiplier(scale_in, scale_w, scale_out) -> np.ndarray:
    """``sx * sw / sy`` in float64 from the float32 scales (per weight channel)."""
    return np.float64(np.float32(scale_in)) * np.asarray(scale_w, np.float32).astype(np.float64) \
        / np.float64(np.float32(scale_out))


def tflite_product_multiplier(scale_in, scale_w, scale_out) -> np.ndarray:
    """LiteRT's ``GetQuantizedConvolutionMultipler`` (kernels/kernel_util.cc): the scalar multiplier
    of per-tensor uint8 CONV_2D/DEPTHWISE_CONV_2D and of every per-tensor FULLY_CONNECTED,
    ``double(f32(sx * sw)) / double(sy)``: the scale product is a float32 product. Per-channel and
    int8 convolutions use ``double(sx) * double(sw) / double(sy)`` instead."""
    prod = (np.float32(scale_in) * np.asarray(scale_w, np.float32)).astype(np.float32)
    return prod.astype(np.float64) / np.float64(np.float32(scale_out))


def _round_half_away(x: float) -> int:
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def tflite_quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplier``: (Q31 mantissa, exponent) with real ~= M * 2**(exp-31).

    The mantissa is ``round_half_away(q * 2**31)`` of ``frexp``'s q in [0.5, 1); a mantissa that
    rounds up to 2**31 is halved; exponents below -31 flush to (0, 0)."""
    if real == 0.0:
        return 0, 0
    q, exponent = math.frexp(real)
    q_fixed = _round_half_away(q * (1 << 31))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        exponent += 1
    if exponent < -31:
        return 0, 0
    return int(q_fixed), int(exponent)


def tflite_multipliers(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel TFLite multipliers as (int64 mantissa, int64 right shift = 31 - exponent)."""
    mult = np.zeros(len(real), np.int64)
    shift = np.zeros(len(real), np.int64)
    for i, r in enumerate(np.asarray(real, np.float64)):
        m, e = tflite_quantize_multiplier(float(r))
        mult[i], shift[i] = m, 31 - e
    return mult, shift


@dataclass(frozen=True)
class Clip:
    """One multiplier whose encoding the profile's limits could not hold.

    ``field`` names the profile field that stopped it (``requant.shift_min`` when the real
    multiplier is too large, ``requant.shift_max`` when it is too small); ``wanted`` is the shift
    the unconstrained encoding needs, ``limit`` the field's value; ``multiplier``/``shift`` are
    what was emitted instead (the closest representable value). ``channel`` is None for one
    per-tensor multiplier; ``what`` names the parameter (``rq_shift``, ``multiplier_a``, ...)."""

    channel: Optional[int]
    real: float
    field: str
    wanted: int
    limit: int
    multiplier: int
    shift: int
    what: str = "rq_shift"

    @property
    def encoded(self) -> float:
        """The value the emitted parameters represent: ``multiplier * 2**-shift``."""
        return math.ldexp(float(self.multiplier), -int(self.shift))


def _channel(i: int, n: int) -> Optional[int]:
    return i if n > 1 else None


def fixed_point_encode(real: np.ndarray, bits: int, shift_min: int = -31, shift_max: int = 63
                       ) -> tuple[np.ndarray, np.ndarray, list]:
    """An unsigned ``bits``-bit mantissa and a right shift per channel, round half away, within
    ``[shift_min, shift_max]``; returns ``(mult, shift, clips)``.

    The mantissa is normalised into [2**(bits-1), 2**bits) for the most precision. Where that
    needs a shift below ``shift_min`` (a multiplier too large for the register), the shift is
    ``shift_min`` and the mantissa saturates at ``2**bits - 1``: recorded as a clip. Above
    ``shift_max`` the shift is ``shift_max`` and the mantissa is re-rounded there: that is the
    finest grid the hardware has, so only a mantissa that flushes to 0 is recorded."""
    real = np.asarray(real, np.float64)
    mult = np.zeros(len(real), np.int64)
    shift = np.zeros(len(real), np.int64)
    clips = []
    top = (1 << bits) - 1
    for i, r in enumerate(real):
        r = float(r)
        if r <= 0.0:
            continue
        q, exponent = math.frexp(r)
        m = _round_half_away(q * (1 << bits))
        s = bits - exponent
        if m > top:
            m //= 2
            s -= 1
        wanted = s
        if s < shift_min:
            s = shift_min
            m = _round_half_away(math.ldexp(r, s))
            if m > top:
                m = top
                clips.append(Clip(_channel(i, len(real)), r, "requant.shift_min", wanted, shift_min, m, s))
        elif s > shift_max:
            s = shift_max
            m = _round_half_away(math.ldexp(r, s))
            if m == 0:
                clips.append(Clip(_channel(i, len(real)), r, "requant.shift_max", wanted, shift_max, m, s))
        mult[i], shift[i] = m, s
    return mult, shift, clips


def fixed_point_multipliers(real: np.ndarray, bits: int, shift_min: int = -31,
                            shift_max: int = 63) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fixed_point_encode` without the clip records."""
    mult, shift, _ = fixed_point_encode(real, bits, shift_min, shift_max)
    return mult, shift


def q31_encode(real: np.ndarray, shift_min: int = 1, shift_max: int = 62
               ) -> tuple[np.ndarray, np.ndarray, list]:
    """:func:`tflite_multipliers` within ``[shift_min, shift_max]``: ``(mult, shift, clips)``.

    A multiplier that needs ``rq_shift < shift_min`` saturates to ``(2**31 - 1, shift_min)``
    (TFLite's own saturation for single rounding); one that needs ``rq_shift > shift_max`` is
    re-rounded at ``shift_max`` (recorded only if it flushes to 0). TFLite's flush of
    exponents below -31 to ``(0, rq_shift 31)`` is kept when 31 is in range."""
    real = np.asarray(real, np.float64)
    mult, shift = tflite_multipliers(real)
    clips = []
    top = (1 << 31) - 1
    for i, r in enumerate(real):
        r = float(r)
        s = int(shift[i])
        if s < shift_min:
            m = min(top, _round_half_away(math.ldexp(r, shift_min)))
            mult[i], shift[i] = m, shift_min
            if m == top:
                clips.append(Clip(_channel(i, len(real)), r, "requant.shift_min", s, shift_min, m, shift_min))
        elif s > shift_max:
            m = _round_half_away(math.ldexp(r, shift_max))
            mult[i], shift[i] = m, shift_max
            if m == 0 and r > 0.0:
                clips.append(Clip(_channel(i, len(real)), r, "requant.shift_max", s, shift_max, m, shift_max))
    return mult, shift, clips


def pow2_encode(real: np.ndarray, shift_min: Optional[int] = None, shift_max: Optional[int] = None
                ) -> tuple[np.ndarray, np.ndarray, list]:
    """Shift-only requantization: the nearest power of two (in log domain) to each multiplier,
    with the shift clipped to ``[shift_min, shift_max]``; returns ``(exact, shift, clips)``.

    ``exact`` is True where ``real`` was already a power of two and needed no clipping. Every
    clipped shift is recorded: a power of two out of range has no closer representable value
    than the range's end, which is off by a factor of two or more."""
    real = np.atleast_1d(np.asarray(real, np.float64))
    wanted = -np.round(np.log2(real)).astype(np.int64)
    shift = wanted.copy()
    if shift_min is not None:
        shift = np.maximum(shift, shift_min)
    if shift_max is not None:
        shift = np.minimum(shift, shift_max)
    exact = (np.ldexp(1.0, -shift) == real)
    clips = []
    for i in np.flatnonzero(shift != wanted):
        field, limit = ("requant.shift_min", shift_min) if wanted[i] < shift[i] else ("requant.shift_max", shift_max)
        clips.append(Clip(_channel(int(i), len(real)), float(real[i]), field, int(wanted[i]), int(limit),
                          1, int(shift[i])))
    return exact, shift, clips


def pow2_shifts(real: np.ndarray, shift_min: Optional[int] = None,
                shift_max: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pow2_encode` without the clip records: ``(exact, shift)``."""
    exact, shift, _ = pow2_encode(real, shift_min, shift_max)
    return exact, shift


def fixed_add_multipliers(ra: float, rb: float, bits: int, shift_min: int, shift_max: int
                          ) -> tuple[int, int, int, list]:
    """``add`` mode ``fixed`` on fixed-point hardware: ``acc = a*m_a + b*m_b`` then one rounding
    right shift, with ``m_a, m_b`` unsigned ``bits``-bit integers sharing the shift. The larger
    ratio is normalised into [2**(bits-1), 2**bits); the shift is clipped to the range and a
    mantissa that no longer fits saturates (recorded). Returns ``(m_a, m_b, shift, clips)``."""
    top = (1 << bits) - 1
    big = max(ra, rb)
    shift = bits - math.frexp(big)[1]
    if _round_half_away(math.ldexp(big, shift)) > top:
        shift -= 1    # the mantissa rounded up to 2**bits
    wanted = shift
    shift = min(max(shift, shift_min), shift_max)
    out, clips = [], []
    for what, r in (("multiplier_a", ra), ("multiplier_b", rb)):
        m = _round_half_away(math.ldexp(r, shift))
        if m > top:
            m = top
            clips.append(Clip(None, r, "requant.shift_min", wanted, shift_min, m, shift, what))
        elif m == 0 and r > 0.0 and wanted > shift_max:
            clips.append(Clip(None, r, "requant.shift_max", wanted, shift_max, m, shift, what))
        out.append(m)
    return out[0], out[1], shift, clips


def pow2_add_multipliers(ra: float, rb: float, shift_min: Optional[int], shift_max: Optional[int]
                         ) -> tuple[int, int, int, list]:
    """``add`` mode ``fixed`` on shift-only hardware: each input is aligned by a left shift
    (a power-of-two multiplier ``2**(shift - s_i)``, ``s_i`` the input's nearest power-of-two
    shift), then one rounding right shift ``shift >= max(s_i, 0, shift_min)``, exact for powers
    of two. Above ``shift_max`` the shift is clipped and an input whose multiplier would be a
    fraction gets 1, the smallest power of two (recorded). Returns ``(m_a, m_b, shift, clips)``."""
    _, sh, _ = pow2_encode(np.array([ra, rb]))
    wanted = max(int(sh.max()), 0, shift_min if shift_min is not None else 0)
    shift = wanted if shift_max is None else min(wanted, shift_max)
    out, clips = [], []
    for what, r, s in (("multiplier_a", ra, int(sh[0])), ("multiplier_b", rb, int(sh[1]))):
        if shift >= s:
            m = 1 << (shift - s)
        else:
            # 2**(shift - s) < 1: the smallest alignment the hardware has is none (2**0)
            m = 1
            clips.append(Clip(None, r, "requant.shift_max", wanted, shift_max, m, shift, what))
        out.append(m)
    return out[0], out[1], shift, clips


def largest_multiplier(arithmetic: str, bits: int, shift_min: int) -> float:
    """The largest real multiplier the requantization can represent exactly: ``(2**bits - 1) *
    2**-shift_min`` (fixed_point), ``(2**31 - 1) * 2**-shift_min`` (double_q31), ``2**-shift_min``
    (shift); infinite for float32."""
    if arithmetic == "fixed_point":
        return math.ldexp(float((1 << bits) - 1), -shift_min)
    if arithmetic == "double_q31":
        return math.ldexp(float((1 << 31) - 1), -shift_min)
    if arithmetic == "shift":
        return math.ldexp(1.0, -shift_min)
    return math.inf


def encode(real: np.ndarray, arithmetic: str, bits: int, shift_min: int, shift_max: int
           ) -> tuple[np.ndarray, np.ndarray, list]:
    """``(multiplier, shift, clips)`` of ``real`` for a requantization arithmetic other than
    float32 (the one dispatch the lowering and the multiplier_limits pass share)."""
    if arithmetic == "fixed_point":
        return fixed_point_encode(real, bits, shift_min, shift_max)
    if arithmetic == "double_q31":
        return q31_encode(real, shift_min, shift_max)
    if arithmetic == "shift":
        _, s, clips = pow2_encode(real, shift_min, shift_max)
        return np.ones(len(s), np.int64), s, clips
    raise ValueError(f"no integer encoding for requant arithmetic {arithmetic!r}")


def is_pow2(values: np.ndarray) -> bool:
    values = np.asarray(values, np.float64)
    mant, _ = np.frexp(values)
    return bool(np.all(mant == 0.5))
