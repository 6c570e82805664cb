"""Float -> integer parameter derivation (the "prepare" step): requantization multipliers.

Every function returns what the simulator needs for one requantization mode, from real
multipliers. Sign convention everywhere: ``real ~= multiplier * 2**-shift`` (``shift`` is a
right shift; negative means left).
"""
from __future__ import annotations

import math

import numpy as np


def ort_multiplier(scale_in: np.ndarray, scale_w: np.ndarray, scale_out: np.ndarray) -> np.ndarray:
    """ONNX Runtime: ``f32(f32(sx*sw)/sy)``, each step rounded to float32 (MLAS/qlinearconv.cc)."""
    prod = (np.float32(scale_in) * np.asarray(scale_w, np.float32)).astype(np.float32)
    return (prod / np.float32(scale_out)).astype(np.float32)


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


def fixed_point_multipliers(real: np.ndarray, bits: int, shift_min: int = -31,
                            shift_max: int = 63) -> tuple[np.ndarray, np.ndarray]:
    """An unsigned ``bits``-bit mantissa and a right shift per channel, round half away.

    The mantissa is normalised into [2**(bits-1), 2**bits) for the most precision; where that
    needs a shift outside [shift_min, shift_max], the shift is clipped and the mantissa re-rounded
    (it loses precision, or flushes to 0 for negligible multipliers)."""
    mult = np.zeros(len(real), np.int64)
    shift = np.zeros(len(real), np.int64)
    top = (1 << bits) - 1
    for i, r in enumerate(np.asarray(real, np.float64)):
        if r <= 0.0:
            continue
        q, exponent = math.frexp(r)
        m = _round_half_away(q * (1 << bits))
        s = bits - exponent
        if m > top:
            m //= 2
            s -= 1
        if s > shift_max:
            s = shift_max
            m = _round_half_away(r * 2.0 ** s)
        elif s < shift_min:
            s = shift_min
            m = min(top, _round_half_away(r * 2.0 ** s))
        mult[i], shift[i] = m, s
    return mult, shift


def pow2_shifts(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shift-only requantization: the nearest power of two (in log domain) to each multiplier.

    Returns (exact, shift): ``exact`` is True where ``real`` was already a power of two."""
    real = np.asarray(real, np.float64)
    shift = -np.round(np.log2(real)).astype(np.int64)
    exact = np.ldexp(1.0, -shift) == real
    return exact, shift


def is_pow2(values: np.ndarray) -> bool:
    values = np.asarray(values, np.float64)
    mant, _ = np.frexp(values)
    return bool(np.all(mant == 0.5))
