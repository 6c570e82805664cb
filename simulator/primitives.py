"""Bit-exact scalar primitives of the simulator: rounding, shifts, fixed-point multiplies, f32 ops.

Every integer kernel in ``simulator/kernels`` rounds and saturates only through this module. Each
function is ``@njit(cache=True)`` and states its contract: the formula, the rounding, what
saturates or wraps, and the machine instruction (or library routine) it models.

Conventions (used everywhere in the simulator):

- Rounding modes are passed to jitted code as small ints, the codes of the one table in
  :mod:`simulator.rounding` (``ROUNDING_CODES`` maps names to codes). "Round" always means
  rounding the exact real value once, and every rounding decision here is :func:`round_up`.
- A ``shift`` is a power-of-two *divisor* exponent: ``value / 2**shift``. A negative shift is a
  left shift (multiplication by ``2**-shift``). TFLite uses the opposite sign for its "exponent";
  only ``multiply_by_quantized_multiplier`` takes the TFLite convention, and says so.
- "f32(...)" means rounding to IEEE float32 with RNE. numba types ``float32 * float32`` as float32
  in some contexts and float64 in others, so we never rely on it: a single f32 ``+ - * /`` is
  written as the float64 operation followed by a cast to float32. This is exactly the correctly
  rounded f32 result, because float64 has 53 >= 2*24 + 2 significand bits, so rounding twice
  (to f64, then to f32) cannot differ from rounding once (Figueroa, "When is double rounding
  innocuous?", 1995). This does NOT hold for fused multiply-add, see ``fma_f32``.
- Integers are int64 inside jitted code; int64 arithmetic wraps modulo 2**64 (LLVM ``add``/``mul``
  without ``nsw``). Functions that need more range split their operands; none uses int128.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from simulator.rounding import CODES as ROUNDING_CODES  # noqa: F401  (kernels' name -> code)
from simulator.rounding import RULE_TABLE as _RULE_TABLE
from simulator.rounding import ALWAYS, NEVER, Q_NEG, Q_NONNEG, Q_ODD

_T_ALWAYS, _T_NEVER, _T_Q_ODD, _T_Q_NEG, _T_Q_NONNEG = (
    p.table for p in (ALWAYS, NEVER, Q_ODD, Q_NEG, Q_NONNEG))

INT64_MIN = np.int64(-(2**63))
INT64_MAX = np.int64(2**63 - 1)
INT32_MIN = np.int64(-(2**31))
INT32_MAX = np.int64(2**31 - 1)

_TWO63 = 9.223372036854775808e18  # 2**63 as a float64 (exact)
_TWO53 = 9007199254740992  # 2**53


# --------------------------------------------------------------------------------------------
# The one rounding decision
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def sign_cmp(a, b):
    """-1, 0 or +1 as ``a`` is below, equal to or above ``b``, without a branch."""
    return np.int64(a > b) - np.int64(a < b)


@njit(cache=True)
def _holds(table, neg, odd):
    """The predicate with 4-bit truth table ``table`` (bit ``2 * neg + odd``, see
    ``simulator.rounding.Pred``) at a ``q`` of sign ``neg`` and parity ``odd``.

    The named predicates are recognised by their whole table first: LLVM optimizes this
    function before it is inlined with a constant table, and a generic bit test gets rewritten
    into a shift that no longer folds (a measured 20 % on the fixed-point add loop); a comparison
    of the whole table folds to the predicate itself (``q_odd`` becomes ``odd``)."""
    if table == _T_ALWAYS:
        return True
    if table == _T_NEVER:
        return False
    if table == _T_Q_ODD:
        return odd
    if table == _T_Q_NEG:
        return neg
    if table == _T_Q_NONNEG:
        return not neg
    return ((table >> ((np.int64(neg) << 1) | np.int64(odd))) & 1) != 0


@njit(cache=True)
def round_up(q, cmp_half, nonzero, mode):
    """1 if ``q + f`` rounds up to ``q + 1`` under ``mode``, else 0 (int64).

    ``q`` is the floor of the exact value (int64), ``f`` in [0, 1) its fraction: ``cmp_half`` is
    -1, 0 or +1 as ``f`` is below, at or above 1/2 and ``nonzero`` tells whether ``f != 0``. The
    rule is ``simulator.rounding.RULE_TABLE[mode]``. The branches test only the rule: they are
    loop-invariant, and with a constant ``mode`` (the kernels' closure constants) they fold away,
    leaving the rule's few compares (half_up: ``f >= 1/2``; toward_zero: ``f != 0 and q < 0``)
    in loops that still vectorize. Regions sharing a predicate are tested together for that.
    """
    t_above = _RULE_TABLE[mode, 0]
    t_tie = _RULE_TABLE[mode, 1]
    t_below = _RULE_TABLE[mode, 2]
    neg = q < 0
    odd = (q & 1) != 0
    if t_above == t_tie and t_tie == t_below:
        up = nonzero & _holds(t_above, neg, odd)
    elif t_above == t_tie:
        up = ((nonzero & (cmp_half >= 0) & _holds(t_above, neg, odd))
              | (nonzero & (cmp_half < 0) & _holds(t_below, neg, odd)))
    elif t_tie == t_below:
        up = ((cmp_half > 0) & _holds(t_above, neg, odd)
              | (nonzero & (cmp_half <= 0) & _holds(t_tie, neg, odd)))
    else:
        up = ((cmp_half > 0) & _holds(t_above, neg, odd)
              | (nonzero & (cmp_half == 0) & _holds(t_tie, neg, odd))
              | (nonzero & (cmp_half < 0) & _holds(t_below, neg, odd)))
    return np.int64(up)


@njit(cache=True)
def _round_decide(q, cmp_half, nonzero, mode):
    """``q`` or ``q + 1`` as :func:`round_up` decides; saturates at INT64_MAX instead of
    wrapping."""
    return q + (round_up(q, cmp_half, nonzero, mode) & np.int64(q != INT64_MAX))


# --------------------------------------------------------------------------------------------
# Float -> int rounding
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def round_float(x, mode):
    """Round a float64 (or float32) value to int64 with ``mode``, exactly, saturating.

    Formula: ``round(x)`` of the exact binary value of ``x`` (one rounding). Out of range values
    saturate to [INT64_MIN, INT64_MAX]; NaN gives INT64_MIN, like x86 ``cvtps2dq``/``cvtsd2si``
    return the "integer indefinite" value 0x80..0 (a following clamp then maps NaN to the lower
    bound, which is also what ``maxps(NaN, lo)`` does in ORT's float clamp).

    Models: ``cvtps2dq`` under the default MXCSR (RNE), ``nearbyintf`` (RNE), ``std::round``
    (RHA), ``floorf`` (floor), ``truncf`` / C casts (toward zero), ``floor(x + 0.5)`` (RHU, exact
    here, without the float addition's own rounding).
    """
    xf = np.float64(x)
    if xf != xf:
        return INT64_MIN
    if xf >= _TWO63:
        return INT64_MAX
    if xf < -_TWO63:
        return INT64_MIN
    fl = np.floor(xf)
    q = np.int64(fl)
    if xf == fl:
        return q
    # x is not an integer, so |x| < 2**52 and floor(x) + 0.5 is exact (x - floor(x) is not
    # always exact: -0.5 + 2**-54 would round)
    return _round_decide(q, sign_cmp(xf, fl + 0.5), True, mode)


# --------------------------------------------------------------------------------------------
# Integer shifts and divisions
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def saturating_left_shift(x, n):
    """``x * 2**n`` for ``n >= 0``, saturated to [INT64_MIN, INT64_MAX] instead of wrapping.

    Models a saturating shift such as ARM ``SQSHL`` on 64-bit lanes.
    """
    if x == 0 or n == 0:
        return np.int64(x)
    if n >= 63:
        return INT64_MAX if x > 0 else INT64_MIN
    lim = np.int64(1) << np.int64(63 - n)  # |x| < lim  <=>  |x * 2**n| < 2**63
    if x >= lim:
        return INT64_MAX
    if x < -lim:
        return INT64_MIN
    return np.int64(x) << np.int64(n)


@njit(cache=True)
def rounding_shift_right(x, shift, mode):
    """``round(x / 2**shift)`` for int64 ``x``, exact for every shift, one rounding with ``mode``.

    ``shift <= 0`` is an exact left shift by ``-shift``, saturated to the int64 range (a value that
    large is outside every output range anyway). ``shift >= 64`` is handled exactly (the result is
    0 or -1). No intermediate overflows.

    Models the arithmetic right shift with rounding of fixed-point hardware:
    ``(x + 2**(s-1)) >> s``
    (RHU: ARM ``SRSHL``/``VRSHR``, Vitis DPU), gemmlowp ``RoundingDivideByPOT`` (RHA), plain ``>>``
    (floor), and RNE / toward-zero variants.
    """
    x = np.int64(x)
    shift = np.int64(shift)
    if shift <= 0:
        return saturating_left_shift(x, -shift)
    if shift <= 63:
        q = x >> shift
        if shift == 63:
            mask = INT64_MAX
        else:
            mask = (np.int64(1) << shift) - 1
        r = x & mask  # x - q * 2**shift, in [0, 2**shift)
        half = np.int64(1) << (shift - 1)
        return _round_decide(q, sign_cmp(r, half), r != 0, mode)
    # shift >= 64: |x / 2**shift| <= 1/2, with equality only for x = -2**63, shift = 64
    if x == 0:
        return np.int64(0)
    if x > 0:
        return _round_decide(np.int64(0), -1, True, mode)
    if x == INT64_MIN and shift == 64:
        return _round_decide(np.int64(-1), 0, True, mode)
    return _round_decide(np.int64(-1), 1, True, mode)


@njit(cache=True)
def rounding_divide(x, d, mode):
    """``round(x / d)`` for int64 ``x`` and int64 ``d > 0``, exact, one rounding with ``mode``.

    Used for average pooling by a window count. ``|x| < 2**62`` keeps ``2*r`` in range.
    Models integer division with a rounding rule; TFLite's ``(acc +- count/2) / count`` is RHA
    on the integers (see ``tests/reference``).
    """
    x = np.int64(x)
    d = np.int64(d)
    q = x // d  # floor division in numba (Python semantics)
    r = x - q * d  # in [0, d)
    return _round_decide(q, sign_cmp(2 * r, d), r != 0, mode)


@njit(cache=True)
def _round_parts(hi, lo31, shift, mode):
    """Round ``(hi * 2**31 + lo31) / 2**shift`` to int64, where ``0 <= lo31 < 2**31``.

    ``hi`` is any int64. Exact for every shift; the result saturates to the int64 range.
    """
    if shift <= 0:
        if hi >= (np.int64(1) << 32) or hi < -(np.int64(1) << 32):
            return INT64_MAX if hi > 0 else INT64_MIN
        p = (hi << 31) + lo31  # |p| < 2**63: exact
        return saturating_left_shift(p, -shift)
    if shift <= 31:
        k = 31 - shift
        if shift < 31:  # shift == 31: q = hi, nothing to check
            lim = np.int64(1) << (32 + shift)  # |hi| < lim => |hi * 2**k| + (lo31 >> shift) < 2**63
            if hi >= lim:
                return INT64_MAX
            if hi < -lim:
                return INT64_MIN
        q = (hi << k) + (lo31 >> shift)
        r = lo31 & ((np.int64(1) << shift) - 1)
        half = np.int64(1) << (shift - 1)
        return _round_decide(q, sign_cmp(r, half), r != 0, mode)
    t = shift - 31  # >= 1: the rounding point lies inside hi
    if t <= 63:
        q = hi >> t
        if t == 63:
            mask = INT64_MAX
        else:
            mask = (np.int64(1) << t) - 1
        rh = hi & mask  # high part of the remainder, in [0, 2**t)
        half_h = np.int64(1) << (t - 1)  # 1/2 is (half_h, 0) in (rh, lo31) units
        cmp_half = sign_cmp(rh, half_h)
        if cmp_half == 0 and lo31 > 0:
            cmp_half = 1
        return _round_decide(q, cmp_half, rh != 0 or lo31 != 0, mode)
    # shift >= 95: the magnitude of the value is below 2**93 / 2**94 = 1/2 (see caller's range)
    if hi == 0 and lo31 == 0:
        return np.int64(0)
    if hi >= 0:
        return _round_decide(np.int64(0), -1, True, mode)
    return _round_decide(np.int64(-1), 1, True, mode)


@njit(cache=True)
def mul_shift_round(x, multiplier, shift, mode):
    """``round(x * multiplier / 2**shift)``, exact with one rounding, for ``|x| < 2**62`` and
    ``|multiplier| < 2**32``; any int64 ``shift`` (negative = left shift). Saturates to int64.

    The 94-bit product is never formed: ``x = xh * 2**31 + xl`` (``0 <= xl < 2**31``), so
    ``x*m = (xh*m + floor(xl*m / 2**31)) * 2**31 + (xl*m mod 2**31)``. Both partial products are
    below 2**63 in magnitude, and the high sum equals floor(x*m / 2**31), which fits int64.

    Models the ``fixed`` requantization: an integer multiplier and a rounding right shift done in
    wide enough hardware that nothing overflows (a single rounding, unlike gemmlowp's two).
    """
    x = np.int64(x)
    m = np.int64(multiplier)
    mask31 = np.int64(0x7FFFFFFF)
    xh = x >> 31
    xl = x & mask31
    a = xh * m
    b = xl * m
    hi = a + (b >> 31)
    lo31 = b & mask31
    return _round_parts(hi, lo31, np.int64(shift), mode)


# --------------------------------------------------------------------------------------------
# Two's-complement width handling
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def wrap_bits(x, bits):
    """Reduce int64 ``x`` modulo 2**bits into [-2**(bits-1), 2**(bits-1)), for 1 <= bits <= 64.

    Models a ``bits``-wide two's-complement register that silently wraps (e.g. ``paddd``).
    """
    x = np.int64(x)
    if bits >= 64:
        return x
    half = np.int64(1) << np.int64(bits - 1)
    v = x & (half + (half - 1))  # x mod 2**bits, without forming 2**bits (bits may be 63)
    if v >= half:
        v -= half
        v -= half
    return v


@njit(cache=True)
def saturate(x, lo, hi):
    """Clamp ``x`` to [lo, hi]. Models saturating narrowing (``packsswb``, ``SQXTN``) when
    [lo, hi] is a type range, and Relu/Clip fused into an output stage otherwise."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


@njit(cache=True)
def saturate_bits(x, bits):
    """Clamp int64 ``x`` to the signed ``bits``-wide range [-2**(bits-1), 2**(bits-1) - 1]."""
    if bits >= 64:
        return np.int64(x)
    hi = (np.int64(1) << np.int64(bits - 1)) - 1
    lo = -hi - 1
    return saturate(np.int64(x), lo, hi)


# --------------------------------------------------------------------------------------------
# gemmlowp / TFLite / ruy fixed-point primitives (int32 semantics, computed in int64)
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def srdhm_i32(a, b):
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int32 ``a``, ``b``.

    Returns ``RHA(a * b / 2**31)`` as int32: ``ab = int64(a)*b``, ``nudge = ab >= 0 ? 2**30 :
    1 - 2**30``, ``(ab + nudge) / 2**31`` with C truncating division. The only overflow case,
    ``a == b == INT32_MIN``, saturates to INT32_MAX. Same computation as ARM NEON ``VQRDMULH``.
    Inputs must already be int32 values.
    """
    a = np.int64(a)
    b = np.int64(b)
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    ab = a * b  # |ab| <= 2**62
    if ab >= 0:
        v = ab + (np.int64(1) << 30)
        return v >> 31  # v >= 0: truncation == floor
    v = ab + (1 - (np.int64(1) << 30))
    return -((-v) >> 31)  # truncating division of a negative value


@njit(cache=True)
def rounding_divide_by_pot_i32(x, exponent):
    """gemmlowp ``RoundingDivideByPOT(x, exponent)`` on int32 ``x``, 0 <= exponent <= 31.

    ``mask = 2**e - 1``, ``rem = x & mask``, ``thr = (mask >> 1) + (x < 0)``,
    ``(x >> e) + (rem > thr)``: RHA of ``x / 2**e``. Never overflows.
    """
    x = np.int64(x)
    e = np.int64(exponent)
    mask = (np.int64(1) << e) - 1
    rem = x & mask
    thr = mask >> 1
    if x < 0:
        thr += 1
    out = x >> e
    if rem > thr:
        out += 1
    return out


@njit(cache=True)
def ruy_mul_high_rhu_i32(a, b):
    """First step of ruy's x86 fixed-point multiply: ``(int64(a)*b + 2**30) >> 31`` (RHU of
    ``a*b / 2**31``), saturated to int32 (reachable only for ``a == b == INT32_MIN``)."""
    v = (np.int64(a) * np.int64(b) + (np.int64(1) << 30)) >> 31
    if v > INT32_MAX:
        return INT32_MAX
    return v


@njit(cache=True)
def rounding_shift_right_rhu_i32(x, exponent):
    """Second step of ruy's x86 multiply: ``(x + 2**(e-1)) >> e`` (RHU), computed in int64 so the
    addition cannot overflow; ``e == 0`` returns ``x``."""
    x = np.int64(x)
    if exponent <= 0:
        return x
    return (x + (np.int64(1) << (exponent - 1))) >> exponent


@njit(cache=True)
def multiply_by_quantized_multiplier(x, multiplier, tflite_shift, ruy_variant):
    """TFLite ``MultiplyByQuantizedMultiplier(x, M, shift)`` (double-rounding build), int32.

    ``tflite_shift`` uses TFLite's sign (positive = left shift). ``left = max(shift, 0)``,
    ``right = max(-shift, 0)``; ``x << left`` is an int32 multiply that wraps (what x86 ``imul``
    does; UB in C), then ``RoundingDivideByPOT(SRDHM(x << left, M), right)`` with both steps RHA.
    With ``ruy_variant`` both steps round half up (``ruy_mul_high_rhu_i32`` then
    ``rounding_shift_right_rhu_i32``), as measured for TFLite's optimized x86 kernels.
    Requires ``-31 <= tflite_shift <= 30`` and int32 ``x``, ``M``; the caller checks the shift.
    """
    left = tflite_shift if tflite_shift > 0 else 0
    right = -tflite_shift if tflite_shift < 0 else 0
    xs = wrap_bits(np.int64(x) << np.int64(left), 32)
    if ruy_variant:
        y = ruy_mul_high_rhu_i32(xs, multiplier)
        return rounding_shift_right_rhu_i32(y, right)
    y = srdhm_i32(xs, multiplier)
    return rounding_divide_by_pot_i32(y, right)


# --------------------------------------------------------------------------------------------
# float32 arithmetic
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def f32_mul(a, b):
    """f32(a * b) for float32 ``a``, ``b`` (exact product in f64, one innocuous second rounding).
    Models ``mulss``/``vmulps``."""
    return np.float32(np.float64(a) * np.float64(b))


@njit(cache=True)
def f32_div(a, b):
    """f32(a / b) for float32 ``a``, ``b``; the f64 quotient rounded to f32 is the correctly
    rounded f32 quotient (53 >= 2*24 + 2). Models ``divss``/``vdivps``."""
    return np.float32(np.float64(a) / np.float64(b))


@njit(cache=True)
def f32_add(a, b):
    """f32(a + b) for float32 ``a``, ``b`` (innocuous double rounding). Models ``addss``."""
    return np.float32(np.float64(a) + np.float64(b))


@njit(cache=True)
def f32_sub(a, b):
    """f32(a - b) for float32 ``a``, ``b`` (innocuous double rounding). Models ``subss``."""
    return np.float32(np.float64(a) - np.float64(b))


@njit(cache=True)
def int_to_f32(x):
    """f32(x) for int64 ``x``, RNE (one rounding), like ``cvtsi2ss`` with a 64-bit operand and like
    ``cvtdq2ps`` for int32 values.

    For |x| < 2**53 the f64 conversion is exact and the cast to f32 is the only rounding. Above,
    the low bits are folded into a sticky bit first (round-to-odd), so the f64 value keeps more
    than 24 + 2 bits and the final f32 rounding is still correct.
    """
    x = np.int64(x)
    if x > -_TWO53 and x < _TWO53:
        return np.float32(np.float64(x))
    # |x| >= 2**53: shift right by 11 with a sticky bit: |x'| < 2**52, exact in f64
    low = x & np.int64(0x7FF)
    xs = x >> 11
    if low != 0:
        xs = xs | np.int64(1)
    return np.float32(np.float64(xs) * 2048.0)


@njit(cache=True)
def fma_f32(a, b, c):
    """f32(a * b + c) with a single rounding (IEEE fusedMultiplyAdd) for float32 ``a, b, c``.

    Models x86 ``vfmadd`` (FMA3) on float32 lanes, as used by ORT's AVX2 QLinearAdd.
    The product ``a*b`` is exact in float64 (48 significant bits). The float64 sum ``s = p + c``
    may round; TwoSum gives its exact error ``e``. If ``e != 0`` and ``s`` has an even last bit,
    ``s`` is replaced by its float64 neighbour toward the exact sum, i.e. the sum is rounded to
    odd; a round-to-odd float64 value rounds to the correctly rounded float32 (Boldo-Melquiond),
    because 53 >= 24 + 2. Overflow to inf follows IEEE; NaN propagates.
    """
    p = np.float64(a) * np.float64(b)
    cc = np.float64(c)
    s = p + cc
    if s != s or s - s != 0.0:  # NaN or inf: nothing to correct
        return np.float32(s)
    # TwoSum (Knuth): s + e == p + c exactly
    bb = s - p
    e = (p - (s - bb)) + (cc - bb)
    if e != 0.0:
        mag = abs(s)
        ulp = np.nextafter(mag, np.inf) - mag  # a power of two: mag / ulp is the significand
        if (mag / ulp) % 2.0 == 0.0:
            if e > 0.0:
                s = np.nextafter(s, np.inf)
            else:
                s = np.nextafter(s, -np.inf)
    return np.float32(s)


# --------------------------------------------------------------------------------------------
# Accumulator addition with overflow detection
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def acc_add(acc, term, lo, hi, saturating):
    """One accumulator addition ``acc + term`` in a register with range [lo, hi].

    Returns ``(new_acc, left_range)``. With ``saturating`` the result is clamped to [lo, hi]
    (models a saturating accumulate such as ``vpdpbusds`` or a DSP MAC with saturation);
    otherwise it is the exact sum (int64; the caller wraps to the register width at the end) and
    ``left_range`` reports whether that exact partial sum lies outside [lo, hi]. The comparisons
    are written so that they cannot overflow int64 (``lo <= 0 <= hi``).
    """
    if term >= 0:
        if acc > hi - term:
            if saturating:
                return hi, True
            return acc + term, True
    else:
        if acc < lo - term:
            if saturating:
                return lo, True
            return acc + term, True
    v = acc + term
    return v, (v < lo or v > hi)
