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
  Inside that small range ``g + 0.5`` is exact in f64, so every rounding mode is one float op.
  ``M`` must be finite (no NaN can arise then; +-inf clamps like the general path).
- ``EP_FP32_ZP_IN`` (``'fp32_zp_in'``): ``f = f32(f32(f32(acc) * M) + f32(zp))``, rounded and
  clamped to ``[out_min, out_max]`` the same way (the zero point is inside the rounding).
- ``EP_INT`` (``'fixed'`` and ``'shift'``): ``round(acc * M'[c] / 2**s[c])`` with
  ``0 <= s <= 62``; a left shift ``-s > 0`` is folded into ``M' = M * 2**-s``. Exact when
  ``|acc * M'| < 2**62`` (``prepare`` returns ``acc_limit``, the largest ``|acc|`` allowed): the
  product is formed in int64, ``q = p >> s`` is the floor, ``rem = p & (2**s - 1)`` the
  remainder, and the rounding decision is the one of ``primitives._round_decide`` (a zero
  remainder never rounds, which also covers ``s = 0``).
- ``EP_Q31`` / ``EP_Q31_RUY`` (``'double_q31'``, gemmlowp RHA / ruy RHU): TFLite
  ``MultiplyByQuantizedMultiplier`` on ``wrap32(acc)``, written with selects: the truncating
  ``(ab + nudge) / 2**31`` is ``(v + ((v >> 63) & (2**31 - 1))) >> 31``; the single overflow
  case ``INT32_MIN * INT32_MIN`` saturates to ``INT32_MAX``. Valid for any accumulator.

Every kind returns ``(q, sat)``: ``q`` the final code in ``[out_min, out_max]`` and ``sat``
whether the unclamped result lay outside (the ``out_saturated`` counter).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from simulator.primitives import (
    INT32_MAX,
    INT32_MIN,
    RND_FLOOR,
    RND_HALF_AWAY,
    RND_HALF_EVEN,
    RND_HALF_UP,
    RND_TOWARD_ZERO,
    int_to_f32,
)

EP_NONE = 0
EP_FP32 = 1
EP_FP32_ZP_IN = 2
EP_INT = 3
EP_Q31 = 4
EP_Q31_RUY = 5

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
        """The positional arguments of the jitted epilogue helpers, in order."""
        return (self.kind, self.rnd, self.mf, self.mi, self.s1, self.s2, self.zpf, self.zp,
                self.lo, self.hi)


def prepare(mode_code, rnd, mult_f, mult_i, shifts, zp, out_min, out_max, dtype,
            n_channels):
    """An :class:`Epilogue` for validated requantization parameters, or ``None``.

    ``mode_code`` is one of ``simulator.kernels.quant.RQ_*``; ``mult_f``/``mult_i``/``shifts``
    are the per-channel arrays (length ``n_channels``) that ``requantize`` builds.
    """
    from simulator.kernels import quant as q  # late import: quant imports this module

    ep = Epilogue()
    ep.rnd = np.int64(rnd)
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
        ep.kind = np.int64(EP_NONE)
        return ep
    if mode_code in (q.RQ_FP32, q.RQ_FP32_ZP_IN):
        mf = np.ascontiguousarray(mult_f, dtype=np.float32)
        if not np.all(np.isfinite(mf)):
            return None
        ep.kind = np.int64(EP_FP32 if mode_code == q.RQ_FP32 else EP_FP32_ZP_IN)
        ep.mf = mf
        return ep
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
        ep.kind = np.int64(EP_INT)
        ep.mi = np.array(folded, dtype=np.int64)
        ep.s1 = np.array(rights, dtype=np.int64)
        big = max((abs(m) for m in folded), default=0)
        ep.acc_limit = (_LIMIT62 - 1) // big if big else 2**63 - 1
        return ep
    if mode_code == q.RQ_DOUBLE_Q31:
        ep.kind = np.int64(EP_Q31_RUY if rnd == RND_HALF_UP else EP_Q31)
        ep.mi = np.ascontiguousarray(mult_i, dtype=np.int64)
        t = 31 - np.asarray(shifts, dtype=np.int64)
        ep.s1 = np.ascontiguousarray(np.maximum(t, 0), dtype=np.int64)
        ep.s2 = np.ascontiguousarray(np.maximum(-t, 0), dtype=np.int64)
        return ep
    return None


# --------------------------------------------------------------------------------------------
# Element functions (inlined by LLVM into the callers' loops)
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def round_small(g, rnd):
    """Round a float64 ``g`` with ``|g| < 2**51`` (so ``g + 0.5`` is exact) by mode ``rnd``."""
    if rnd == RND_HALF_EVEN:
        return np.rint(g)
    if rnd == RND_FLOOR:
        return np.floor(g)
    if rnd == RND_TOWARD_ZERO:
        return np.trunc(g)
    if rnd == RND_HALF_UP:
        return np.floor(g + 0.5)
    return np.trunc(g + math.copysign(0.5, g))  # RND_HALF_AWAY


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
    nz = rem != 0
    if rnd == RND_FLOOR:
        up = False
    elif rnd == RND_TOWARD_ZERO:
        up = nz & (q < 0)
    elif rnd == RND_HALF_UP:
        up = nz & (rem >= half)
    elif rnd == RND_HALF_AWAY:
        up = nz & ((rem > half) | ((rem == half) & (q >= 0)))
    else:
        up = nz & ((rem > half) | ((rem == half) & ((q & one) == one)))
    r = q + np.int64(up)
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
# Row helpers: requantize ``n`` consecutive channels of one output position
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def store_row(acc32, a0, biasp, c0, n, kind, rnd, mf, mi, s1, s2, zpf, zp, lo, hi, out, o0,
              ostride):
    """``out[o0 + j*ostride] = requant(acc32[a0 + j] + biasp[c0 + j], channel c0 + j)`` for
    ``j < n``; returns the saturation count. ``acc32`` holds int32 dot products (int64 arrays are
    accepted too)."""
    cnt = 0
    if kind == EP_FP32:
        if rnd == RND_HALF_EVEN:
            for j in range(n):
                q, s = ep_fp32(np.int64(acc32[a0 + j]) + biasp[c0 + j], mf[c0 + j],
                               RND_HALF_EVEN, zp, lo, hi)
                out[o0 + j * ostride] = q
                cnt += s
        else:
            for j in range(n):
                q, s = ep_fp32(np.int64(acc32[a0 + j]) + biasp[c0 + j], mf[c0 + j], rnd, zp,
                               lo, hi)
                out[o0 + j * ostride] = q
                cnt += s
    elif kind == EP_FP32_ZP_IN:
        for j in range(n):
            q, s = ep_fp32_zp_in(np.int64(acc32[a0 + j]) + biasp[c0 + j], mf[c0 + j], zpf, rnd,
                                 lo, hi)
            out[o0 + j * ostride] = q
            cnt += s
    elif kind == EP_INT:
        for j in range(n):
            q, s = ep_int(np.int64(acc32[a0 + j]) + biasp[c0 + j], mi[c0 + j], s1[c0 + j], rnd,
                          zp, lo, hi)
            out[o0 + j * ostride] = q
            cnt += s
    elif kind == EP_Q31:
        for j in range(n):
            q, s = ep_q31(np.int64(acc32[a0 + j]) + biasp[c0 + j], mi[c0 + j], s1[c0 + j],
                          s2[c0 + j], False, zp, lo, hi)
            out[o0 + j * ostride] = q
            cnt += s
    elif kind == EP_Q31_RUY:
        for j in range(n):
            q, s = ep_q31(np.int64(acc32[a0 + j]) + biasp[c0 + j], mi[c0 + j], s1[c0 + j],
                          s2[c0 + j], True, zp, lo, hi)
            out[o0 + j * ostride] = q
            cnt += s
    else:  # EP_NONE: the accumulator itself
        for j in range(n):
            out[o0 + j * ostride] = np.int64(acc32[a0 + j]) + biasp[c0 + j]
    return cnt


__all__ = ["Epilogue", "prepare", "store_row", "ep_fp32", "ep_fp32_zp_in", "ep_int", "ep_q31",
           "round_small", "EP_NONE", "EP_FP32", "EP_FP32_ZP_IN", "EP_INT", "EP_Q31",
           "EP_Q31_RUY"]
