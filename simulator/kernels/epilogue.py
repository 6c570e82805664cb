"""Branch-free requantization of one accumulator value, for loops that LLVM vectorizes.

:func:`simulator.kernels.quant.requant_one` (with ``clamp_add_zp``) is the general definition:
exact for every int64 accumulator, with saturation to int64 on the way. The functions here
compute the same ``(code, saturated)`` pair with straight-line code (no data-dependent branch, no
call), valid under preconditions that :func:`prepare` checks once per step; when a precondition
fails, :func:`prepare` returns ``None`` and callers use the general path. Used by
:func:`simulator.kernels.quant.requantize` and fused into the conv/gemm/depthwise kernels of
:mod:`simulator.kernels.igemm` (no int64 accumulator array is written).

Kinds (``EP_*``) and why each equals the general definition:

- ``EP_FP32`` (``rq_mode='fp32'``): ``f = f32(f32(acc) * M[c])`` (``np.float32(int64)`` is one
  RNE rounding, as ``int_to_f32``; the f32 product is computed exactly in f64 and rounded once).
  Clamping ``f`` to ``[L - 1, H + 1]`` (``L = out_min - zp``, ``H = out_max - zp``) before
  rounding changes neither the clamped code nor the saturation flag: rounding is monotone and
  fixes the integers ``L - 1`` and ``H + 1``, so ``round(f) < L`` iff ``round(clamped) < L``.
  Inside that small range ``floor(g) + 0.5`` is exact in f64, so the tie test of the mode's
  rule is one comparison (``round_small``).
  ``M`` must be finite (no NaN can arise then; +-inf clamps like the general path).
- ``EP_FP32_ZP_IN`` (``'fp32_zp_in'``): ``f = f32(f32(f32(acc) * M) + f32(zp))``, rounded and
  clamped to ``[out_min, out_max]`` the same way (the zero point is inside the rounding).
- ``EP_INT`` (``'fixed'`` and ``'shift'``): ``round(acc * M'[c] / 2**s[c])`` with
  ``0 <= s <= 62``; a left shift ``-s > 0`` is folded into ``M' = M * 2**-s``. Exact when
  ``|acc * M'| < 2**62`` (``prepare`` returns ``acc_limit``, the largest ``|acc|`` allowed): the
  product is formed in int64, ``q = p >> s`` is the floor, ``rem = p & (2**s - 1)`` the
  remainder, and the rounding decision is ``primitives.round_up`` (a zero remainder never
  rounds, which also covers ``s = 0``).
- ``EP_Q31`` / ``EP_Q31_RUY`` (``'double_q31'``, gemmlowp RHA / ruy RHU): TFLite
  ``MultiplyByQuantizedMultiplier`` on ``wrap32(acc)``, written with selects: the truncating
  ``(ab + nudge) / 2**31`` is ``(v + ((v >> 63) & (2**31 - 1))) >> 31``; the single overflow
  case ``INT32_MIN * INT32_MIN`` saturates to ``INT32_MAX``. Valid for any accumulator.

The fused kernels requantize 16 channels at once with :func:`ep16` (explicit vectors from
:mod:`simulator.kernels.simd`, the same formulas lane by lane; the float bounds of the two float
kinds are exact because ``prepare`` requires ``|bound| < 2**22``). Helpers taking arrays are
inlined at the numba IR level (``inline="always"``): a call would increment and decrement the
reference count of every array argument each time.

Every kind returns ``(q, sat)``: ``q`` the final code in ``[out_min, out_max]`` and ``sat``
whether the unclamped result lay outside (the ``out_saturated`` counter).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from simulator.kernels import simd
from simulator.primitives import (
    INT32_MAX,
    INT32_MIN,
    ROUNDING_CODES,
    int_to_f32,
    round_up,
    sign_cmp,
)

EP_NONE = 0
EP_FP32 = 1
EP_FP32_ZP_IN = 2
EP_INT = 3
EP_Q31 = 4
EP_Q31_RUY = 5
EP_INT32 = 6  # EP_INT with every multiplier in int32 (cheaper 32 x 32-bit products)
EP_INT_P32 = 7  # EP_INT with every product in int32 and s <= 30 (the add kernel proves it)

_LIMIT62 = 2**62


class Epilogue:
    """Per-step requantization parameters in the form the fused kernels take.

    ``mf`` float32 [C] (float multipliers), ``mi`` int64 [C] (integer multipliers, left shifts
    folded in), ``s1``/``s2`` int64 [C] (``EP_INT``: right shift, unused; ``EP_Q31*``: left and
    right shift), ``kind``, ``rnd``, ``zpf`` (f32 zero point), ``zp``, ``lo``, ``hi`` (the
    clamp), ``acc_limit`` (largest |acc| the formulas are exact for; ``None`` = any int64).
    """

    __slots__ = ("kind", "rnd", "mf", "mi", "s1", "s2", "zpf", "zp", "lo", "hi", "acc_limit",
                 "dtype")

    def args(self):
        """The positional arguments of the jitted epilogue helpers, in order. The per-channel
        arrays are zero-padded to a multiple of 16 plus 16, so 16-lane loads never leave them."""
        return (self.kind, self.rnd) + self.arrays()

    def arrays(self):
        """:meth:`args` without the kind and rounding mode (for kernels specialized on them)."""
        return (self.mf, self.mi, self.s1, self.s2, self.zpf, self.zp, self.lo, self.hi)


def _pad16(arr):
    n = len(arr)
    out = np.zeros((n + 15) // 16 * 16 + 16, dtype=arr.dtype)
    out[:n] = arr
    return out


def _finish(ep):
    """Pad the per-channel arrays; ``None`` if the clamp bounds are too large for the float32
    epilogue to be exact (|bound| must stay below 2**22 so that ``g + 0.5`` is exact)."""
    if ep.kind in (EP_FP32, EP_FP32_ZP_IN):
        bounds = (ep.lo - ep.zp, ep.hi - ep.zp) if ep.kind == EP_FP32 else (ep.lo, ep.hi)
        if max(abs(int(b)) for b in bounds) >= 2**22:
            return None
    ep.mf, ep.mi, ep.s1, ep.s2 = (_pad16(a) for a in (ep.mf, ep.mi, ep.s1, ep.s2))
    # read-only, as a launch passes its constants (simulator/launch.py): the interpreter's own
    # calls then have the launches' argument types, and each kernel compiles once for both
    for arr in (ep.mf, ep.mi, ep.s1, ep.s2):
        arr.flags.writeable = False
    return ep


def prepare(mode_code, rnd, mult_f, mult_i, shifts, zp, out_min, out_max, dtype,
            n_channels):
    """An :class:`Epilogue` for validated requantization parameters, or ``None``.

    ``mode_code`` is one of ``simulator.kernels.quant.RQ_*``; ``mult_f``/``mult_i``/``shifts``
    are the per-channel arrays (length ``n_channels``) that ``requantize`` builds.
    """
    from simulator.kernels import quant as q  # late import: quant imports this module

    ep = Epilogue()
    ep.rnd = int(rnd)
    ep.zp = np.int64(zp)
    ep.lo = np.int64(out_min)
    ep.hi = np.int64(out_max)
    ep.zpf = np.float32(int_to_f32(np.int64(zp)))
    ep.dtype = np.dtype(dtype)
    ep.acc_limit = None
    ep.mf = np.zeros(n_channels, dtype=np.float32)
    ep.mi = np.zeros(n_channels, dtype=np.int64)
    ep.s1 = np.zeros(n_channels, dtype=np.int64)
    ep.s2 = np.zeros(n_channels, dtype=np.int64)
    if mode_code == 0:  # rq_mode 'none': the accumulator itself (the caller checks its range)
        ep.kind = int(EP_NONE)
        return _finish(ep)
    if mode_code in (q.RQ_FP32, q.RQ_FP32_ZP_IN):
        mf = np.ascontiguousarray(mult_f, dtype=np.float32)
        if not np.all(np.isfinite(mf)):
            return None
        ep.kind = int(EP_FP32 if mode_code == q.RQ_FP32 else EP_FP32_ZP_IN)
        ep.mf = mf
        return _finish(ep)
    if mode_code in (q.RQ_FIXED, q.RQ_SHIFT):
        mi = [int(m) for m in mult_i]
        sh = [int(s) for s in shifts]
        folded, rights = [], []
        for m, s in zip(mi, sh):
            if s > 62:
                return None
            if s < 0:
                if -s >= 62:
                    if m != 0:
                        return None
                    s = 0
                m = m << -s
                s = 0
            if abs(m) >= _LIMIT62:
                return None
            folded.append(m)
            rights.append(s)
        fits = all(-(2**31) <= m < 2**31 for m in folded)
        ep.kind = int(EP_INT32 if fits else EP_INT)
        ep.mi = np.array(folded, dtype=np.int64)
        ep.s1 = np.array(rights, dtype=np.int64)
        big = max((abs(m) for m in folded), default=0)
        ep.acc_limit = (_LIMIT62 - 1) // big if big else 2**63 - 1
        return _finish(ep)
    if mode_code == q.RQ_DOUBLE_Q31:
        # TFLite's fixed formula; the mode only picks the peer (ruy rounds half up)
        ep.kind = int(EP_Q31_RUY if rnd == ROUNDING_CODES["half_up"] else EP_Q31)
        ep.mi = np.ascontiguousarray(mult_i, dtype=np.int64)
        t = 31 - np.asarray(shifts, dtype=np.int64)
        ep.s1 = np.ascontiguousarray(np.maximum(t, 0), dtype=np.int64)
        ep.s2 = np.ascontiguousarray(np.maximum(-t, 0), dtype=np.int64)
        return _finish(ep)
    return None


# --------------------------------------------------------------------------------------------
# Element functions (inlined by LLVM into the callers' loops)
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def round_small(g, rnd):
    """Round a float64 ``g`` with ``|g| < 2**51`` (so ``floor(g) + 0.5`` is exact) by mode
    ``rnd``; float64 result."""
    fl = np.floor(g)
    return fl + np.float64(round_up(np.int64(fl), sign_cmp(g, fl + 0.5), g != fl, rnd))


@njit(cache=True)
def _clamp_f(r, lo, hi):
    return min(max(r, lo), hi)


@njit(cache=True)
def ep_fp32(acc, m, rnd, zp, lo, hi):
    """``fp32``: ``clamp(round(f32(f32(acc) * m)) + zp)``; returns ``(q, sat)``."""
    f = np.float32(np.float64(np.float32(acc)) * np.float64(m))
    lo_f = np.float64(lo - zp)
    hi_f = np.float64(hi - zp)
    g = _clamp_f(np.float64(f), lo_f - 1.0, hi_f + 1.0)
    r = round_small(g, rnd)
    sat = (r < lo_f) | (r > hi_f)
    return np.int64(_clamp_f(r, lo_f, hi_f)) + zp, sat


@njit(cache=True)
def ep_fp32_zp_in(acc, m, zpf, rnd, lo, hi):
    """``fp32_zp_in``: ``clamp(round(f32(f32(f32(acc) * m) + f32(zp))))``."""
    f1 = np.float32(np.float64(np.float32(acc)) * np.float64(m))
    f = np.float32(np.float64(f1) + np.float64(zpf))
    lo_f = np.float64(lo)
    hi_f = np.float64(hi)
    g = _clamp_f(np.float64(f), lo_f - 1.0, hi_f + 1.0)
    r = round_small(g, rnd)
    sat = (r < lo_f) | (r > hi_f)
    return np.int64(_clamp_f(r, lo_f, hi_f)), sat


@njit(cache=True)
def ep_int(acc, m, s, rnd, zp, lo, hi):
    """``fixed``/``shift``: ``clamp(round(acc * m / 2**s) + zp)``, ``|acc * m| < 2**62``,
    ``0 <= s <= 62``."""
    p = acc * m
    q = p >> s
    one = np.int64(1)
    rem = p & ((one << s) - one)
    half = (one << s) >> one
    r = q + round_up(q, sign_cmp(rem, half), rem != 0, rnd)
    lo_r = lo - zp
    hi_r = hi - zp
    sat = (r < lo_r) | (r > hi_r)
    return min(max(r, lo_r), hi_r) + zp, sat


@njit(cache=True)
def ep_q31(acc, m, left, right, ruy, zp, lo, hi):
    """``double_q31``: ``clamp(MultiplyByQuantizedMultiplier(wrap32(acc), m, left - right)
    + zp)``; gemmlowp (both steps RHA) or, with ``ruy``, both steps RHU."""
    one = np.int64(1)
    x = np.int64(np.int32(acc))
    xs = np.int64(np.int32(x << left))
    ab = xs * m
    if ruy:
        y = (ab + (one << 30)) >> 31
        y = min(y, INT32_MAX)
        z = (y + ((one << right) >> one)) >> right
    else:
        nudge = np.int64(1 << 30) if ab >= 0 else np.int64(1 - (1 << 30))
        v = ab + nudge
        y = (v + ((v >> 63) & np.int64(0x7FFFFFFF))) >> 31
        y = INT32_MAX if (xs == INT32_MIN) & (m == INT32_MIN) else y
        mask = (one << right) - one
        rem = y & mask
        thr = (mask >> one) + np.int64(y < 0)
        z = (y >> right) + np.int64(rem > thr)
    lo_r = lo - zp
    hi_r = hi - zp
    sat = (z < lo_r) | (z > hi_r)
    return min(max(z, lo_r), hi_r) + zp, sat


# --------------------------------------------------------------------------------------------
# 16 lanes at once (explicit vectors, simulator.kernels.simd): the fused kernels' epilogue
# --------------------------------------------------------------------------------------------
_q31 = simd.ep16_q31
_q31_ruy = simd.ep16_q31_ruy


@njit(cache=True, inline="always")
def _ep16_vec(kind, rnd, accv, mfv, miv, s1v, s2v, zpf, zp, lo, hi, n):
    """Dispatch on the kind; ``kind`` and ``rnd`` must be compile-time constants (the callers'
    closure constants): the intrinsics generate each mode's code from its rule."""
    if kind == EP_FP32:
        return simd.ep16_fp32(accv, mfv, zp, lo, hi, n, rnd)
    if kind == EP_FP32_ZP_IN:
        return simd.ep16_fp32_zp_in(accv, mfv, zpf, lo, hi, n, rnd)
    if kind == EP_INT:
        return simd.ep16_int(accv, miv, s1v, zp, lo, hi, n, rnd)
    if kind == EP_INT32:
        return simd.ep16_int32(accv, miv, s1v, zp, lo, hi, n, rnd)
    if kind == EP_INT_P32:
        return simd.ep16_int_p32(accv, miv, s1v, zp, lo, hi, n, rnd)
    if kind == EP_Q31:
        return _q31(accv, miv, s1v, s2v, zp, lo, hi, n)
    if kind == EP_Q31_RUY:
        return _q31_ruy(accv, miv, s1v, s2v, zp, lo, hi, n)
    return accv, np.int64(0)  # EP_NONE


@njit(cache=True, inline="always")
def ep16(kind, rnd, accv, mf, mi, s1, s2, c0, zpf, zp, lo, hi, n):
    """Requantize 16 int32 accumulators ``accv`` (bias included, exact) of channels
    ``c0 .. c0+15`` with the padded per-channel arrays of an :class:`Epilogue`; returns
    ``(codes as int32 lanes, saturated lanes among the first n)``. Same values as the scalar
    ``ep_*`` functions (the accumulator fits int32 here)."""
    return _ep16_vec(kind, rnd, accv, simd.vload_f32(mf, c0), simd.vload_i64(mi, c0),
                     simd.vload_i64(s1, c0), simd.vload_i64(s2, c0), zpf, zp, lo, hi, n)


@njit(cache=True, inline="always")
def ep16_splat(kind, rnd, accv, mf, mi, s1, s2, c, zpf, zp, lo, hi, n):
    """:func:`ep16` with all 16 lanes in channel ``c``."""
    return _ep16_vec(kind, rnd, accv, simd.vsplat_f32(mf[c]), simd.vsplat_i64(mi[c]),
                     simd.vsplat_i64(s1[c]), simd.vsplat_i64(s2[c]), zpf, zp, lo, hi, n)


@njit(cache=True, inline="always")
def store16(out, o0, ostride, codes, n):
    """Write the first ``n`` lanes of ``codes`` to ``out[o0 + j * ostride]``."""
    if ostride == 1:
        # the partial case is one masked store: a scalar lane loop here made the callers'
        # loops spill (the whole branch cost a packed depthwise kernel 1.9x); the full case
        # stays a plain store (building the mask every time measured 1.7x slower in _dw3_rows)
        if n >= 16:
            simd.vstore_codes(out, o0, codes)
        else:
            simd.vstore_codes_n(out, o0, codes, n)
    else:
        for j in range(n):
            out[o0 + j * ostride] = simd.vget(codes, j)


__all__ = ["Epilogue", "prepare", "ep16", "ep16_splat", "store16", "ep_fp32", "ep_fp32_zp_in", "ep_int", "ep_q31",
           "round_small", "EP_NONE", "EP_FP32", "EP_FP32_ZP_IN", "EP_INT", "EP_INT32", "EP_INT_P32", "EP_Q31",
           "EP_Q31_RUY"]
