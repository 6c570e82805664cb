"""Reference arithmetic: exact rationals, literal gemmlowp/TFLite/ruy code, exact float32 rounding.

Rounding-mode names are the strings of docs/PROGRAM.md, defined by the one table
``simulator.rounding.MODES``: :func:`round_fraction` evaluates a mode's rule there on an exact
``Fraction`` (what the rules mean is checked against closed forms by
tests/simulator/test_rounding.py). Every function works on Python ints or ``Fraction``s, so
nothing can overflow or round by accident.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from simulator import rounding

MODES = rounding.NAMES
HALF = Fraction(1, 2)


def round_fraction(value, mode: str) -> int:
    """Round an exact rational to an integer with the rule of ``mode``."""
    value = Fraction(value)
    q = value.numerator // value.denominator
    f = value - q
    if f == 0:
        return q
    m = rounding.MODES[rounding.CODES[mode]]
    pred = m.above if f > HALF else m.tie if f == HALF else m.below
    bit = 2 * (q < 0) + q % 2  # the predicate's truth-table index (sign, parity of q)
    return q + ((pred.table >> bit) & 1)


def round_float(x, mode: str) -> int:
    """Round a finite float to an integer (its exact binary value)."""
    return round_fraction(Fraction(float(x)), mode)


def rounding_shift_right(x: int, shift: int, mode: str) -> int:
    """round(x / 2**shift); a negative shift multiplies."""
    return round_fraction(Fraction(x) / Fraction(2) ** shift, mode)


def mul_shift_round(x: int, multiplier: int, shift: int, mode: str) -> int:
    return round_fraction(Fraction(x * multiplier) / Fraction(2) ** shift, mode)


def rounding_divide(x: int, d: int, mode: str) -> int:
    return round_fraction(Fraction(x, d), mode)


def wrap(x: int, bits: int) -> int:
    """x modulo 2**bits into the signed range."""
    m = 1 << bits
    v = x % m
    return v - m if v >= m // 2 else v


def saturate_to(x: int, lo: int, hi: int) -> int:
    return lo if x < lo else hi if x > hi else x


def c_div(a: int, b: int) -> int:
    """C/C++ integer division (truncation toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


# --- gemmlowp, written as in fixedpoint.h ------------------------------------------------------
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def srdhm(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul (int32)."""
    overflow = a == b and a == INT32_MIN
    ab_64 = a * b
    nudge = (1 << 30) if ab_64 >= 0 else (1 - (1 << 30))
    ab_x2_high32 = c_div(ab_64 + nudge, 1 << 31)
    return INT32_MAX if overflow else ab_x2_high32


def rounding_divide_by_pot(x: int, exponent: int) -> int:
    """gemmlowp RoundingDivideByPOT (int32), 0 <= exponent <= 31."""
    assert 0 <= exponent <= 31
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def mbqm(x: int, multiplier: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier, double rounding; TFLite sign of ``shift``.
    The left shift is an int32 multiply; we wrap it like two's-complement hardware."""
    left = shift if shift > 0 else 0
    right = 0 if shift > 0 else -shift
    return rounding_divide_by_pot(srdhm(wrap(x * (1 << left), 32), multiplier), right)


def mbqm_ruy(x: int, multiplier: int, shift: int) -> int:
    """Double rounding with both steps round-half-up (ruy on x86)."""
    left = shift if shift > 0 else 0
    right = 0 if shift > 0 else -shift
    y = (wrap(x * (1 << left), 32) * multiplier + (1 << 30)) >> 31
    y = min(y, INT32_MAX)
    if right == 0:
        return y
    return (y + (1 << (right - 1))) >> right


# --- float32 -----------------------------------------------------------------------------------
def fraction_to_f32(value) -> np.float32:
    """The float32 nearest to an exact rational (RNE), with subnormals and overflow to inf."""
    value = Fraction(value)
    if value == 0:
        return np.float32(0.0)
    sign = -1 if value < 0 else 1
    mag = abs(value)
    # exponent e with 2**23 <= mag / 2**e < 2**24, but not below the subnormal quantum 2**-149
    e = mag.numerator.bit_length() - mag.denominator.bit_length() - 24
    while mag / Fraction(2) ** e >= 2**24:
        e += 1
    while mag / Fraction(2) ** e < 2**23:
        e -= 1
    e = max(e, -149)
    m = round(mag / Fraction(2) ** e)  # Python rounds a Fraction half to even
    if m == 2**24:
        m //= 2
        e += 1
    if e > 104:
        return np.float32(sign * np.inf)
    return np.float32(sign * float(Fraction(m) * Fraction(2) ** e))


def int_to_f32(x: int) -> np.float32:
    return fraction_to_f32(Fraction(int(x)))


def fma_f32(a, b, c) -> np.float32:
    """fma(a, b, c) rounded once to float32 (finite inputs)."""
    return fraction_to_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))
