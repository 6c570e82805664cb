"""The row kernel of :mod:`simulator.kernels.vnni_rows` with two things a compiled program fuses
into it (:mod:`simulator.fusion` decides where):

- **bounded fp32 epilogue**: ``fp32`` requantization rounding half to even whose product
  ``f32(acc) * m`` is proven smaller than 2**30 in magnitude for every accumulator the conv can
  produce (:func:`fp32_bounded`, from the packed weights and biases). Then ``vcvtps2dq`` rounds
  it exactly without the float clamp ``vnni_rows`` needs for unbounded values (the clamp to
  ``[lo - zp - 1, hi - zp + 1]`` only keeps the conversion in int32 range; see
  ``simd._round_clamp_count``), and the code and saturation flag are the integer clamp's, as
  there. Two of the ~10 vector instructions per 16 outputs (ResNet-8's conv1: 12.5 -> 11.9 us).
  Where the clamp is the whole int8 range (``store_i8``, :func:`ep16_fp32_rne_store_i8`) a
  saturating narrowing store replaces max, min and the zero-point add of the codes (kernel
  alone, ResNet-8 conv1 12.2 -> 12.0 us; KWS batch 1 and AD01 batch 256 whole programs -2.6%).
- **residual add**: the step's codes (int32 lanes, exactly what it would store) go straight into
  the following fixed-point add (:mod:`simulator.kernels.add_i32`, ``p = res * K_res + codes *
  K_conv + KC``) with the other operand read from memory at the same flat NHWC index; the add's
  output is stored, the conv's never is. Saves the add's separate pass over both operands. The
  two saturation counts are returned packed, ``conv + add * 2**32``.

Scope: the ``vnni_rows`` scope (one group, no zero-point split, NHWC), and for the add an
output channel count that is a multiple of 16 (the residual is read 16 lanes at a time).
Everything else (block walk, K loop, partial blocks) is ``vnni_rows.rows``'s, except that a
full 8-position block is requantized from its eight accumulator registers (eight inlined
epilogue copies) instead of through a scratch buffer and a lane loop: ~2% of a batch-1 conv,
paid for in compile time, which only a compiled program's kernels spend.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from simulator.kernels import add_i32, simd
from simulator.kernels import epilogue as ep_k
from simulator.kernels.jitcache import specialised
from simulator.kernels.portable_glue import stack_array
from simulator.kernels.simd import vbcast4, vdpbusd, vload, vload_i32, vstore

MR = 8
LANES = 16
_I32 = ir.IntType(32)
_VT = ir.VectorType(_I32, 16)
_FT = ir.VectorType(ir.FloatType(), 16)
# |f32(acc) * m| below this: vcvtps2dq's result is the exactly rounded value (far from 2**31)
_F_LIMIT = 2**30


def fp32_bounded(wpk, biasp, mf, nbg, nk, m_out) -> bool:
    """Whether ``|acc * m| < 2**30`` for every accumulator of a ``vnni_rows`` conv with these
    packed weights (``[nbg, nk, 16, 4]`` int8), int32 biases and float multipliers: the inputs
    are uint8 (0..255), so ``|acc| <= |biasp| + 255 * sum |w|`` per channel (``acc`` and that
    bound lie in int32, so the kernel's wrapped sum is ``acc``)."""
    w = np.abs(np.asarray(wpk, dtype=np.int64).reshape(nbg, nk, LANES, 4)).sum(axis=(1, 3))
    acc = np.abs(biasp[:m_out].astype(np.int64)) + 255 * w.reshape(-1)[:m_out]
    if int(acc.max(initial=0)) >= 2**31:
        return False
    # float64 products of these integers and f32 multipliers are exact enough: 2**30 has
    # room for f32's two roundings (relative 2**-24 each)
    return bool(np.all(acc * np.abs(mf[:m_out].astype(np.float64)) < _F_LIMIT * (1 - 2**-20)))


def _rne_i32(builder, f):
    """16 float32 lanes to int32, rounded half to even (``vcvtps2dq`` with rounding operand 8,
    {rn-sae}: whatever MXCSR says)."""
    cvt = ir.FunctionType(_VT, [_FT, _VT, ir.IntType(16), _I32])
    fn = cgutils.get_or_insert_function(builder.module, cvt, "llvm.x86.avx512.mask.cvtps2dq.512")
    return builder.call(fn, [f, ir.Constant(_VT, [0] * 16), ir.Constant(ir.IntType(16), -1),
                             ir.Constant(_I32, 8)])


@intrinsic
def ep16_fp32_rne_bounded(typingctx, acc, m, zp, lo, hi, n):
    """``fp32`` half-to-even requantization of 16 accumulators with ``|f32(acc) * m| < 2**30``:
    ``(clamp(rne(f)) + zp, lanes among the first n the clamp changed)``, as
    ``simd.ep16_fp32`` computes them."""
    def codegen(context, builder, sig, args):
        acc_v, m_v = args[0], args[1]
        zp_, lo_, hi_, n_ = (simd._i64(context, builder, a, t)
                             for a, t in zip(args[2:6], sig.args[2:6]))
        r = _rne_i32(builder, builder.fmul(builder.sitofp(acc_v, _FT), m_v))
        lo_i = simd._splat(builder, builder.trunc(builder.sub(lo_, zp_), _I32), _VT)
        hi_i = simd._splat(builder, builder.trunc(builder.sub(hi_, zp_), _I32), _VT)
        q = simd._clamp_i(builder, r, lo_i, hi_i)
        cnt = simd._count_lanes(builder, builder.icmp_signed("!=", r, q), n_)
        q = builder.add(q, simd._splat(builder, builder.trunc(zp_, _I32), _VT))
        return context.make_tuple(builder, sig.return_type, (q, cnt))
    return simd._PAIR(simd.i32x16, simd.f32x16, zp, lo, hi, n), codegen


@intrinsic
def ep16_fp32_rne_store_i8(typingctx, acc, m, zp, n, out, o):
    """:func:`ep16_fp32_rne_bounded` with the int8 range as the clamp (``lo = -128``, ``hi =
    127``), its first ``n`` codes stored at ``out[o:o+n]`` (int8); returns the saturation
    count. ``t = r + zp`` lies in int32 (``|r| < 2**30``), so ``clamp(r, lo - zp, hi - zp) + zp
    = clamp(t, -128, 127)``: one saturating narrowing store (``vpmovsdb``) instead of max, min,
    add and ``vpmovdb``; the clamp changed a lane iff ``t + 128`` is above 255 as unsigned."""
    def codegen(context, builder, sig, args):
        acc_v, m_v = args[0], args[1]
        zp_ = builder.trunc(simd._i64(context, builder, args[2], sig.args[2]), _I32)
        n_ = simd._i64(context, builder, args[3], sig.args[3])
        r = _rne_i32(builder, builder.fmul(builder.sitofp(acc_v, _FT), m_v))
        t = builder.add(r, simd._splat(builder, zp_, _VT))
        u = builder.add(t, ir.Constant(_VT, [128] * 16))
        over = builder.icmp_unsigned(">", u, ir.Constant(_VT, [255] * 16))
        cnt = simd._count_lanes(builder, over, n_)
        lanes = ir.Constant(simd._LT, list(range(16)))
        valid = builder.icmp_signed("<", lanes, simd._splat(builder, n_, simd._LT))
        mask = builder.bitcast(valid, ir.IntType(16))
        ptr = simd._elem_ptr(context, builder, sig.args[4], args[4], args[5], sig.args[5])
        store = ir.FunctionType(ir.VoidType(), [ptr.type, _VT, ir.IntType(16)])
        fn = cgutils.get_or_insert_function(builder.module, store,
                                            "llvm.x86.avx512.mask.pmovs.db.mem.512")
        builder.call(fn, [ptr, t, mask])
        return cnt
    if not (isinstance(out, types.Array) and out.dtype == types.int8 and out.ndim == 1):
        return None
    return types.int64(simd.i32x16, simd.f32x16, zp, n, out, o), codegen


def kernels(kind, rnd, bounded, add_rnd, store_i8=False):
    """``(rows, rows_add)`` for an epilogue kind and rounding (``bounded``: the bounded fp32
    epilogue replaces it) and the add's rounding (``-1``: no add kernel is needed);
    ``store_i8`` (with ``bounded``): ``rows`` clamps to the int8 range by a saturating store
    (:func:`ep16_fp32_rne_store_i8`; the call's ``lo``, ``hi`` must be -128, 127)."""
    store_i8 = bool(store_i8) and bool(bounded)
    got = specialised(_make_kernels, int(kind), int(rnd), bool(bounded), int(add_rnd), store_i8)
    _SPECS[got[0]] = _SPECS[got[1]] = (int(kind), int(rnd), bool(bounded))
    return got


_SPECS = {}


def spec_of(fn):
    """``(kind, rnd, bounded)`` of a :func:`kernels` kernel, else ``None``."""
    return _SPECS.get(fn)


def _make_kernels(kind, rnd, bounded, add_rnd, store_i8):
    @njit(cache=True, inline="always")
    def ep(acc, mfv, miv, s1v, s2v, zpf, zp, lo, hi, nch):
        if bounded:
            return ep16_fp32_rne_bounded(acc, mfv, zp, lo, hi, nch)
        return ep_k._ep16_vec(kind, rnd, acc, mfv, miv, s1v, s2v, zpf, zp, lo, hi, nch)

    @njit(cache=True, inline="always")
    def ep_store(acc, mfv, miv, s1v, s2v, zpf, zp, lo, hi, nch, out, o):
        if store_i8:
            return ep16_fp32_rne_store_i8(acc, mfv, zp, nch, out, o)
        codes, k = ep(acc, mfv, miv, s1v, s2v, zpf, zp, lo, hi, nch)
        ep_k.store16(out, o, 1, codes, nch)
        return k

    @njit(cache=True, inline="always")
    def ep_add_store(acc, mfv, miv, s1v, s2v, zpf, zp, lo, hi, ad, res, out, o):
        """16 codes of the conv (every lane a channel: the add's scope) through the add with
        ``res[o:o+16]`` into ``out``; ``ad``: the add's lane constants. Returns both counts."""
        kr_v, kv_v, kc_v, ashift, half_v, mask_v, one_v, alo_r, ahi_r, azp_v = ad
        codes, k = ep(acc, mfv, miv, s1v, s2v, zpf, zp, lo, hi, LANES)
        added, k2 = add_i32.add_lanes(simd.vload_ext(res, o), codes, kr_v, kv_v, kc_v, ashift,
                                      half_v, mask_v, one_v, alo_r, ahi_r, azp_v, LANES,
                                      add_rnd)
        simd.vstore_codes(out, o, added)
        return k, k2

    @njit(cache=True, inline="always")
    def block(xp, a0, ps, last, koff, wpk, wb, bv):
        """The eight accumulators of one block (positions past ``last`` repeat it)."""
        a1 = a0 + min(1, last) * ps
        a2 = a0 + min(2, last) * ps
        a3 = a0 + min(3, last) * ps
        a4 = a0 + min(4, last) * ps
        a5 = a0 + min(5, last) * ps
        a6 = a0 + min(6, last) * ps
        a7 = a0 + min(7, last) * ps
        c0 = bv
        c1 = bv
        c2 = bv
        c3 = bv
        c4 = bv
        c5 = bv
        c6 = bv
        c7 = bv
        for j in range(koff.shape[0]):
            o = koff[j]
            wv = vload(wpk, wb + 64 * j)
            c0 = vdpbusd(c0, vbcast4(xp, a0 + o), wv)
            c1 = vdpbusd(c1, vbcast4(xp, a1 + o), wv)
            c2 = vdpbusd(c2, vbcast4(xp, a2 + o), wv)
            c3 = vdpbusd(c3, vbcast4(xp, a3 + o), wv)
            c4 = vdpbusd(c4, vbcast4(xp, a4 + o), wv)
            c5 = vdpbusd(c5, vbcast4(xp, a5 + o), wv)
            c6 = vdpbusd(c6, vbcast4(xp, a6 + o), wv)
            c7 = vdpbusd(c7, vbcast4(xp, a7 + o), wv)
        return c0, c1, c2, c3, c4, c5, c6, c7

    @njit(cache=True, inline="always")
    def spill(scratch, accs):
        vstore(scratch, 0, accs[0])
        vstore(scratch, 16, accs[1])
        vstore(scratch, 32, accs[2])
        vstore(scratch, 48, accs[3])
        vstore(scratch, 64, accs[4])
        vstore(scratch, 80, accs[5])
        vstore(scratch, 96, accs[6])
        vstore(scratch, 112, accs[7])

    @njit(cache=True)
    def rows(xp, img, wp_n, ctot, oh_n, ow_n, sh, sw, koff, nbg, m_out, wpk, biasp, mf, mi,
             s1, s2, zpf, zp, lo, hi, out, p0, p1):
        """``vnni_rows.rows`` with this epilogue; returns the saturation count."""
        # in the frame, not a heap allocation and free per call (~50 ns each)
        scratch = stack_array(128, np.int32)  # MR * LANES
        ps = sw * ctot
        rstep = sh * wp_n * ctot
        wblk = koff.shape[0] * 64
        cnt = 0
        gp = p0
        while gp < p1:
            row = gp // ow_n
            ow0 = gp - row * ow_n
            n = row // oh_n
            rb = n * img + (row - n * oh_n) * rstep
            end = min(p1, gp - ow0 + ow_n)
            for ow in range(ow0, ow0 + end - gp, MR):
                last = min(MR, ow0 + end - gp - ow) - 1
                ob = (gp - ow0 + ow) * m_out
                for nb in range(nbg):
                    m0 = nb * LANES
                    accs = block(xp, rb + ow * ps, ps, last, koff, wpk, nb * wblk,
                                 vload_i32(biasp, m0))
                    nch = min(LANES, m_out - m0)
                    mfv = simd.vload_f32(mf, m0)
                    miv = simd.vload_i64(mi, m0)
                    s1v = simd.vload_i64(s1, m0)
                    s2v = simd.vload_i64(s2, m0)
                    o = ob + m0
                    if last == MR - 1:
                        # a full block: no round trip through scratch (vnni_rows)
                        c0, c1, c2, c3, c4, c5, c6, c7 = accs
                        cnt += ep_store(c0, mfv, miv, s1v, s2v, zpf, zp, lo, hi, nch, out, o)
                        cnt += ep_store(c1, mfv, miv, s1v, s2v, zpf, zp, lo, hi, nch, out,
                                        o + m_out)
                        cnt += ep_store(c2, mfv, miv, s1v, s2v, zpf, zp, lo, hi, nch, out,
                                        o + 2 * m_out)
                        cnt += ep_store(c3, mfv, miv, s1v, s2v, zpf, zp, lo, hi, nch, out,
                                        o + 3 * m_out)
                        cnt += ep_store(c4, mfv, miv, s1v, s2v, zpf, zp, lo, hi, nch, out,
                                        o + 4 * m_out)
                        cnt += ep_store(c5, mfv, miv, s1v, s2v, zpf, zp, lo, hi, nch, out,
                                        o + 5 * m_out)
                        cnt += ep_store(c6, mfv, miv, s1v, s2v, zpf, zp, lo, hi, nch, out,
                                        o + 6 * m_out)
                        cnt += ep_store(c7, mfv, miv, s1v, s2v, zpf, zp, lo, hi, nch, out,
                                        o + 7 * m_out)
                        continue
                    spill(scratch, accs)
                    for r in range(last + 1):
                        cnt += ep_store(vload_i32(scratch, r * LANES), mfv, miv, s1v, s2v, zpf,
                                        zp, lo, hi, nch, out, o + r * m_out)
            gp = end
        return cnt

    @njit(cache=True)
    def rows_add(xp, img, wp_n, ctot, oh_n, ow_n, sh, sw, koff, nbg, m_out, wpk, biasp, mf, mi,
                 s1, s2, zpf, zp, lo, hi, res, k_res, k_conv, kc, ashift, azp, alo, ahi, out,
                 p0, p1):
        """:func:`rows` whose codes go through the add with ``res`` (same flat index) into
        ``out``; returns ``conv saturations + add saturations * 2**32``."""
        # in the frame, not a heap allocation and free per call (~50 ns each)
        scratch = stack_array(128, np.int32)  # MR * LANES
        ad = add_i32.lane_constants(k_res, k_conv, kc, ashift, azp, alo, ahi)
        ps = sw * ctot
        rstep = sh * wp_n * ctot
        wblk = koff.shape[0] * 64
        cnt = 0
        cnt_add = 0
        gp = p0
        while gp < p1:
            row = gp // ow_n
            ow0 = gp - row * ow_n
            n = row // oh_n
            rb = n * img + (row - n * oh_n) * rstep
            end = min(p1, gp - ow0 + ow_n)
            for ow in range(ow0, ow0 + end - gp, MR):
                last = min(MR, ow0 + end - gp - ow) - 1
                ob = (gp - ow0 + ow) * m_out
                for nb in range(nbg):
                    m0 = nb * LANES
                    accs = block(xp, rb + ow * ps, ps, last, koff, wpk, nb * wblk,
                                 vload_i32(biasp, m0))
                    mfv = simd.vload_f32(mf, m0)
                    miv = simd.vload_i64(mi, m0)
                    s1v = simd.vload_i64(s1, m0)
                    s2v = simd.vload_i64(s2, m0)
                    if last == MR - 1:
                        o = ob + m0
                        c0, c1, c2, c3, c4, c5, c6, c7 = accs
                        k, k2 = ep_add_store(c0, mfv, miv, s1v, s2v, zpf, zp, lo, hi, ad, res, out, o)
                        cnt += k
                        cnt_add += k2
                        k, k2 = ep_add_store(c1, mfv, miv, s1v, s2v, zpf, zp, lo, hi, ad, res, out, o + m_out)
                        cnt += k
                        cnt_add += k2
                        k, k2 = ep_add_store(c2, mfv, miv, s1v, s2v, zpf, zp, lo, hi, ad, res, out,
                                             o + 2 * m_out)
                        cnt += k
                        cnt_add += k2
                        k, k2 = ep_add_store(c3, mfv, miv, s1v, s2v, zpf, zp, lo, hi, ad, res, out,
                                             o + 3 * m_out)
                        cnt += k
                        cnt_add += k2
                        k, k2 = ep_add_store(c4, mfv, miv, s1v, s2v, zpf, zp, lo, hi, ad, res, out,
                                             o + 4 * m_out)
                        cnt += k
                        cnt_add += k2
                        k, k2 = ep_add_store(c5, mfv, miv, s1v, s2v, zpf, zp, lo, hi, ad, res, out,
                                             o + 5 * m_out)
                        cnt += k
                        cnt_add += k2
                        k, k2 = ep_add_store(c6, mfv, miv, s1v, s2v, zpf, zp, lo, hi, ad, res, out,
                                             o + 6 * m_out)
                        cnt += k
                        cnt_add += k2
                        k, k2 = ep_add_store(c7, mfv, miv, s1v, s2v, zpf, zp, lo, hi, ad, res, out,
                                             o + 7 * m_out)
                        cnt += k
                        cnt_add += k2
                        continue
                    spill(scratch, accs)
                    for r in range(last + 1):
                        k, k2 = ep_add_store(vload_i32(scratch, r * LANES), mfv, miv, s1v, s2v,
                                             zpf, zp, lo, hi, ad, res, out, ob + r * m_out + m0)
                        cnt += k
                        cnt_add += k2
            gp = end
        return cnt + (cnt_add << 32)

    return rows, rows_add


__all__ = ["MR", "ep16_fp32_rne_bounded", "ep16_fp32_rne_store_i8", "fp32_bounded", "kernels",
           "spec_of"]
