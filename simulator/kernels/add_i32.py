"""The fixed-point add ``clamp(round(((a - za) * ma + (b - zb) * mb) * mult / 2**s) + zp)`` on
16 int32 lanes, its rounding an added offset: the lean form of the ``EP_INT_P32`` add.

ResNet-8's residual adds (XNNPACK-style: ``mult = 1``, ``s`` ~ 20) went through the generic
epilogue (remainder, half and a comparison per lane for the rounding rule) after two subtractions
and two multiplies: ~14 cycles per 16 outputs, 6.8 us of a 81 us batch-1 run (AMD EPYC Zen 4).
Here ``p = a * KA + b * KB + KC`` (``KA = ma * mult``, ``KB = mb * mult``, ``KC = -(za * ma + zb *
mb) * mult``, all taken modulo 2**32) and the rounding rule is an offset before the arithmetic
shift (``half = 2**(s-1)``):

- ``half_up``: ``(p + half) >> s``; ``half_down``: ``(p + half - 1) >> s``; ``floor``: ``p >> s``
  (the offset folded into ``KC``);
- ``half_away``: ``(p + half - [p < 0]) >> s``, with ``p < 0`` iff ``p + half < half``;
- ``toward_zero``: ``(p + [p < 0] * (2**s - 1)) >> s``;
- ``half_even``: ``q = (p + half) >> s``, minus 1 where ``p`` is a tie (``(p + half) mod 2**s
  == 0``) and ``q`` is odd.

Exactness: int32 lane arithmetic is exact modulo 2**32, so the wrapped ``p`` equals the true
``p`` whenever the true value lies in int32; :func:`applies` requires ``|p| + 2**s < 2**31``
(``|p| <= bound * |mult|`` from the operand dtypes), so ``p`` plus any offset above stays in
int32 and the shift is the floor of the true quotient. Valid for ``1 <= s <= 30``. The
saturation count and clamp are those of every epilogue: lanes outside ``[lo - zp, hi - zp]``.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from simulator.kernels import simd
from simulator.kernels.jitcache import specialised
from simulator.rounding import CODES

_I32 = ir.IntType(32)
_VT = ir.VectorType(_I32, 16)
_INT32_LIMIT = 2**31

# the rounding rules written as an offset (module docstring)
ROUNDINGS = frozenset(CODES[name] for name in (
    "half_even", "half_away", "half_up", "floor", "toward_zero", "half_down"))


@intrinsic
def vsra_i32(typingctx, v, k):
    """Lanes of ``v`` shifted right arithmetically by the scalar ``k`` (0..31)."""
    def codegen(context, builder, sig, args):
        k32 = context.cast(builder, args[1], sig.args[1], types.int32)
        one = builder.insert_element(ir.Constant(_VT, ir.Undefined), k32, ir.Constant(_I32, 0))
        splat = builder.shuffle_vector(one, ir.Constant(_VT, ir.Undefined),
                                       ir.Constant(_VT, [0] * 16))
        return builder.ashr(args[0], splat)
    return simd.i32x16(v, k), codegen


@intrinsic
def veq_mask_i32(typingctx, a, b):
    """-1 in the lanes where ``a == b``, else 0."""
    def codegen(context, builder, sig, args):
        return builder.sext(builder.icmp_signed("==", args[0], args[1]), _VT)
    return simd.i32x16(a, b), codegen


@intrinsic
def vlt_mask_i32(typingctx, a, b):
    """-1 in the lanes where ``a < b`` (signed), else 0."""
    def codegen(context, builder, sig, args):
        return builder.sext(builder.icmp_signed("<", args[0], args[1]), _VT)
    return simd.i32x16(a, b), codegen


def wrap32(value: int) -> np.int32:
    """``value`` modulo 2**32 as an int32."""
    return np.int32(((int(value) + 2**31) % 2**32) - 2**31)


def applies(rnd: int, shift: int, p_bound: int) -> bool:
    """Whether these kernels compute the add exactly: a rounding rule they know,
    ``1 <= shift <= 30`` and ``p_bound + 2**shift < 2**31`` (``p_bound``: the largest
    ``|acc * mult|`` the operand dtypes allow)."""
    return int(rnd) in ROUNDINGS and 1 <= int(shift) <= 30 and \
        int(p_bound) + 2**int(shift) < _INT32_LIMIT


def params(za, zb, ma, mb, mult, shift, zp, lo, hi, rnd):
    """The kernels' parameters after the operands ``(a1, b1)``: ``(KA, KB, KC, shift, zp, lo,
    hi)``; ``KC`` includes the rounding rule's constant offset (``p' = p + half`` for every rule
    but ``floor`` and ``toward_zero``; ``half_down``: ``p + half - 1``)."""
    ka = wrap32(int(ma) * int(mult))
    kb = wrap32(int(mb) * int(mult))
    half = 1 << (int(shift) - 1)
    offset = {CODES["floor"]: 0, CODES["toward_zero"]: 0,
              CODES["half_down"]: half - 1}.get(int(rnd), half)
    kc = wrap32(-(int(za) * int(ma) + int(zb) * int(mb)) * int(mult) + offset)
    return (ka, kb, kc, np.int64(shift), np.int64(zp), np.int64(lo), np.int64(hi))


def kernels(rnd):
    """``(serial, parallel)`` for one rounding mode (a closure constant)."""
    got = specialised(_make_kernels, int(rnd))
    _RND[got[0]] = int(rnd)
    return got


_RND = {}


def rounding_of(fn):
    """The rounding mode of a :func:`kernels` serial kernel, else ``None``."""
    return _RND.get(fn)


_HALF_EVEN = CODES["half_even"]
_HALF_AWAY = CODES["half_away"]
_TOWARD_ZERO = CODES["toward_zero"]


@njit(cache=True, inline="always")
def round_lanes(pk, shift, half_v, mask_v, one_v, rnd):
    """``round(p / 2**s)`` by rule ``rnd`` (a constant of the caller) from ``pk = p + KC``'s
    offset (see :func:`params`)."""
    if rnd == _HALF_AWAY:
        # p < 0 iff pk < half: one less there (ties go down, away from zero)
        return vsra_i32(simd.vadd_i32(pk, vlt_mask_i32(pk, half_v)), shift)
    if rnd == _TOWARD_ZERO:
        return vsra_i32(simd.vadd_i32(pk, simd.vand_i32(vsra_i32(pk, 31), mask_v)), shift)
    if rnd == _HALF_EVEN:
        q = vsra_i32(pk, shift)
        # a tie: p mod 2**s == half, i.e. pk mod 2**s == 0; an odd q goes one down
        tie = veq_mask_i32(simd.vand_i32(pk, mask_v), simd.vzero())
        return simd.vsub_i32(q, simd.vand_i32(simd.vand_i32(q, one_v), tie))
    return vsra_i32(pk, shift)  # half_up, half_down, floor: the offset is in KC


@njit(cache=True, inline="always")
def add_lanes(av, bv, ka_v, kb_v, kc_v, shift, half_v, mask_v, one_v, lo_r, hi_r, zp_v, n,
              rnd):
    """16 lanes of the add: ``(codes, saturated lanes among the first n)`` for the int32
    operand lanes ``av``, ``bv`` (codes as stored, zero points not removed)."""
    pk = simd.vmadd_i32(simd.vmadd_i32(kc_v, av, ka_v), bv, kb_v)
    r, k = simd.vclamp_count(round_lanes(pk, shift, half_v, mask_v, one_v, rnd), lo_r, hi_r, n)
    return simd.vadd_i32(r, zp_v), k


@njit(cache=True, inline="always")
def lane_constants(ka, kb, kc, shift, zp, lo, hi):
    """The lane constants :func:`add_lanes` takes after its two operands, in its order:
    ``(ka_v, kb_v, kc_v, shift, half_v, mask_v, one_v, lo_r, hi_r, zp_v)``."""
    return (simd.vsplat_i32(ka), simd.vsplat_i32(kb), simd.vsplat_i32(kc), shift,
            simd.vsplat_i32(np.int32(1 << (shift - 1))), simd.vsplat_i32(np.int32((1 << shift) - 1)),
            simd.vsplat_i32(np.int32(1)), lo - zp, hi - zp, simd.vsplat_i32(np.int32(zp)))


def _make_kernels(rnd):
    @njit(cache=True, inline="always")
    def _one(av, bv, ka_v, kb_v, kc_v, shift, half_v, mask_v, one_v, lo_r, hi_r, zp_v, n):
        return add_lanes(av, bv, ka_v, kb_v, kc_v, shift, half_v, mask_v, one_v, lo_r, hi_r,
                         zp_v, n, rnd)

    @njit(cache=True)
    def add_range(a1, b1, ka, kb, kc, shift, zp, lo, hi, out, i0, i1):
        ka_v, kb_v, kc_v, _, half_v, mask_v, one_v, lo_r, hi_r, zp_v = lane_constants(
            ka, kb, kc, shift, zp, lo, hi)
        cnt = 0
        n_full = (i1 - i0) // 16
        for t in range(n_full):
            i = i0 + 16 * t
            codes, k = _one(simd.vload_ext(a1, i), simd.vload_ext(b1, i), ka_v, kb_v, kc_v,
                            shift, half_v, mask_v, one_v, lo_r, hi_r, zp_v, 16)
            cnt += k
            simd.vstore_codes(out, i, codes)
        i = i0 + 16 * n_full
        n = i1 - i
        if n > 0:
            ta = np.zeros(16, dtype=a1.dtype)
            tb = np.zeros(16, dtype=b1.dtype)
            for j in range(n):
                ta[j] = a1[i + j]
                tb[j] = b1[i + j]
            codes, k = _one(simd.vload_ext(ta, 0), simd.vload_ext(tb, 0), ka_v, kb_v, kc_v,
                            shift, half_v, mask_v, one_v, lo_r, hi_r, zp_v, n)
            cnt += k
            simd.vstore_codes_n(out, i, codes, n)
        return cnt

    @njit(cache=True, parallel=True)
    def add_par(a1, b1, ka, kb, kc, shift, zp, lo, hi, out, n_chunks):
        n16 = (a1.shape[0] + 15) // 16
        sat = np.zeros(n_chunks, dtype=np.int64)
        for ch in prange(n_chunks):
            i0 = ch * n16 // n_chunks * 16
            i1 = min((ch + 1) * n16 // n_chunks * 16, a1.shape[0])
            sat[ch] = add_range(a1, b1, ka, kb, kc, shift, zp, lo, hi, out, i0, i1)
        return sat.sum()

    return add_range, add_par


__all__ = ["ROUNDINGS", "add_lanes", "applies", "kernels", "lane_constants", "params", "round_lanes", "rounding_of",
           "veq_mask_i32",
           "vlt_mask_i32", "vsra_i32", "wrap32"]
