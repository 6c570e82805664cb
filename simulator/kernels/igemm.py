"""Fast exact conv, depthwise conv and gemm on 8-bit inputs, with the requantization fused.

These kernels compute exactly what :func:`simulator.kernels.conv.conv2d_acc` /
:func:`simulator.kernels.gemm.gemm_acc` followed by :func:`simulator.kernels.quant.requantize`
compute, on the fast path those functions already take (a static bound proves that no partial
sum leaves the accumulator range). The executors try them first; whenever a precondition below
does not hold they return ``None`` and the general kernels run.

Arithmetic (all exact integer arithmetic; the order of the additions does not matter because the
static bound proves every partial sum, in any order, stays inside the accumulator range and
inside int32):

- The input is copied once into a zero-padded NHWC ``uint8`` image ``u = x + 128`` (int8) or
  ``u = x`` (uint8); padding holds ``uzp = xzp + 128`` (resp. ``xzp``), i.e. the real value 0.
  Channels of each group are padded to a multiple of 4 (the padded weights are 0).
- With ``ws = w - wzp`` (must fit int8) the accumulator is
  ``acc = bias + sum (x - xzp) * ws = sum u * ws + (bias - uzp * sum ws)``. The first term is an
  int32 dot product (``vpdpbusd``: u8 x s8, four products per int32 lane; exact because
  ``255 * sum|ws| < 2**31`` is checked per output channel), the second a per-channel constant
  ``biasp``.
- Why int32 wrap-around is enough: every kernel operation (``vpdpbusd``, vector add, vector
  multiply) is exact modulo 2**32, so the int32 result is congruent to the true accumulator; the
  static bound (``bound <= limit <= 2**31 - 1``, checked per input) puts the true accumulator in
  int32, hence the wrapped result *is* the accumulator. No per-product or partial-sum bound on
  the kernels' own (reordered, split) sums is needed, only that the weights fit the kernel's
  weight type.
- Zero-point split (uint8 weights with a zero point far from 128, so ``ws`` spans e.g.
  [-115, 139]): per output channel ``dm = clip(0, max(ws) - 127, min(ws) + 128)`` makes
  ``wsh = ws - dm`` fit int8 (needs ``max - min <= 255`` per channel, else no fast path). Then
  ``sum u * ws = sum u * wsh + dm * U`` with ``U = sum u`` over the window (spatial padding
  included: it holds ``uzp`` and ``biasp`` already removes ``uzp * sum ws`` for every tap). ``U``
  comes from one extra 16-lane block of all-ones weights packed exactly like the real weights
  (same zero channel padding, same zeros past a row run), so it sums the same bytes the real
  products use. The extra block costs ``1 / nbg`` more dot products.
- The requantization of :mod:`simulator.kernels.epilogue` is applied to ``dot + biasp`` (+ ``dm *
  U``) while the tile is in cache, and the output is written in the step's layout and dtype.

The gemm ``a[R, K] @ w[K, N]`` runs as a 1x1 convolution over an ``R x 1`` image. Depthwise
convolutions (one input channel per group, one output channel per group) use portable kernels
with int32 weights (any ``w - wzp`` that fits int32): NHWC vectorized over channels (a 3x3
kernel with adjacent columns whose weights fit int16 runs 4 adjacent output positions at a time
with ``vpmaddwd`` products, see ``_dw3_rows``; any other kernel ``_dw_range``'s tap loop), NCHW
(``DW_PLANES``) one channel plane at a time, vectorized over output positions (``_dwp_range``:
``x - xzp`` in int32 phase planes, no uint8 prepass, contiguous NCHW output).

Work is split into contiguous ranges of blocks of ``MR = 8`` output positions (batch and pixels
flattened); each range is owned by one thread, so results do not depend on the thread count.

Which kernel a dense (non-depthwise) NHWC step takes, for given input shapes: 1-3 positions of a
1x1 stride-1 unpadded conv or gemm, the row kernel of :mod:`simulator.kernels.gemv`; else, on
hosts with AMX-INT8 and one group without the zero-point split, the tile kernel of
:mod:`simulator.kernels.amx_conv` (int8 inputs multiplied as they are, without the +128); else,
for one group without the zero-point split and an NHWC output whose rows fill 8-position blocks
(or a pointwise conv), the row kernel of :mod:`simulator.kernels.vnni_rows`; else the VNNI
kernel here; on the ``portable`` path (no AVX-512 VNNI) the int16 kernel of
:mod:`simulator.kernels.portable` instead of all three (int16 image and weights, no zero-point
split). All compute the same bits (the tests compare each with the reference).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from simulator.capabilities import capabilities
from simulator.kernels import (
    amx,
    amx_conv,
    gemv,
    portable,
    portable_gemv,
    simd,
    vnni_rows,
)
from simulator.kernels import epilogue as ep_k
from simulator.kernels.jitcache import specialised
from simulator.kernels.simd import (
    vadd_i32,
    vbcast4,
    vdpbusd,
    vload,
    vload_i32,
    vload_u8_i32,
    vmadd16_i32,
    vmadd_i32,
    vstore,
    vzero,
)
from simulator.launch import Call, In, Launch, Tmp

MR = 8
LANES = 16
_INT32_LIMIT = 2**31 - 1
# below this many multiply-accumulates a step runs on the calling thread only
PARALLEL_MIN_MACS = 4_000_000
# NCHW depthwise: the per-plane kernel (True) or the NHWC prepass + channel vectors (False)
DW_PLANES = True


# --------------------------------------------------------------------------------------------
# Padded NHWC uint8 copy of the input
# --------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _u(i):
    """An index as uint64: numba then skips the negative-index wrap-around, which keeps address
    arithmetic affine (vectorizable). Every index passed here is non-negative."""
    return np.uint64(i)


@njit(cache=True)
def _prepass_images(x1, layout, pt, pl, hp_n, wp_n, n_groups, cg, cgp, ctot, flip, padval, xp,
                    n0, n1):
    """Fill images ``[n0, n1)`` of ``xp`` (flat uint8 or int16 [N, Hp, Wp, Ctot]) from the flat
    contiguous input ``x1`` (NCHW or NHWC): ``u = x + flip`` inside, ``padval`` in the spatial
    padding, 0 in the channel padding. ``layout``: int64 ``[is_nchw, height, width]`` (a flat
    input: a 4-D reshape cost ~0.4 s of compile time).

    Written for compile time (the former version, a loop nest per layout and per padding
    region, took ~1.8 s): both layouts run one strided copy nest (element ``(h, w, channel
    k)`` is ``x1[h * s_h + w * s_w + k * s_c]``), and an NHWC image without channel padding is
    copied as one channel of ``width * C`` elements, whose rows take the contiguous loop; the
    spatial padding is one fill loop over the gaps between interior row runs (the rows above,
    the right columns of a row with the left columns of the next, the rows below)."""
    is_nchw = layout[0] != 0
    height = layout[1]
    width = layout[2]
    ximg = height * width * n_groups * cg
    img = hp_n * wp_n * ctot
    row = wp_n * ctot
    pad8 = np.uint8(padval)
    if is_nchw:
        s_h = width
        s_w = 1
        s_c = height * width
    elif cgp == cg:  # one channel of width * C elements per row
        width = width * ctot
        pl = pl * ctot
        n_groups = 1
        cg = 1
        cgp = 1
        ctot = 1
        s_h = width
        s_w = 1
        s_c = 0
    else:
        s_h = width * n_groups * cg
        s_w = n_groups * cg
        s_c = 1
    run = width * ctot
    for n in range(n0, n1):
        ib = n * img
        xb = n * ximg
        s = ib
        for h in range(height + 1):
            e = ib + (pt + h) * row + pl * ctot if h < height else ib + img
            for i in range(s, e):
                xp[np.uint64(i)] = pad8
            s = e + run
        for h in range(height):
            ob = ib + (h + pt) * row + pl * ctot
            for g in range(n_groups):
                for c in range(cg):
                    xs = xb + h * s_h + (g * cg + c) * s_c
                    o = ob + g * cgp + c
                    if ctot == 1:  # contiguous (s_w is 1)
                        for w in range(width):
                            xp[np.uint64(o + w)] = np.uint8(
                                np.int64(x1[np.uint64(xs + w)]) + flip)
                    elif s_w == 1:  # NCHW: a contiguous input row, strided stores
                        for w in range(width):
                            xp[np.uint64(o + w * ctot)] = np.uint8(
                                np.int64(x1[np.uint64(xs + w)]) + flip)
                    else:
                        for w in range(width):
                            xp[np.uint64(o + w * ctot)] = np.uint8(
                                np.int64(x1[np.uint64(xs + w * s_w)]) + flip)
            if cgp != cg:
                for w in range(width):
                    for g in range(n_groups):
                        for c in range(cg, cgp):
                            xp[np.uint64(ob + w * ctot + g * cgp + c)] = 0


@njit(cache=True, parallel=True)
def _prepass_par(x1, layout, pt, pl, hp_n, wp_n, n_groups, cg, cgp, ctot, flip, padval, xp,
                 n_img, n_chunks):
    """``_prepass_images`` of ``n_img`` images in ``n_chunks`` ranges in parallel."""
    for ch in prange(n_chunks):
        _prepass_images(x1, layout, pt, pl, hp_n, wp_n, n_groups, cg, cgp, ctot, flip, padval, xp,
                        ch * n_img // n_chunks, (ch + 1) * n_img // n_chunks)


# --------------------------------------------------------------------------------------------
# Depthwise 3x3 helpers: 4 horizontally adjacent output positions, 16 channels
@njit(cache=True, inline="always")
def _dw_row3x4(xp, r, cs, s, wa, wb, wc, q0, q1, q2, q3):
    """One kernel row (taps ``wa, wb, wc``) of 4 output positions whose windows start ``s``
    columns apart at element ``r`` (column stride ``cs``). ``s`` is a literal at the call sites:
    the loads two windows share then have the same address and LLVM keeps one of each. The
    weights must fit int16 (``vmadd16_i32``: u8 input times int16 weight, one ``vpmaddwd``)."""
    q0 = vmadd16_i32(q0, vload_u8_i32(xp, r), wa)
    q0 = vmadd16_i32(q0, vload_u8_i32(xp, r + cs), wb)
    q0 = vmadd16_i32(q0, vload_u8_i32(xp, r + 2 * cs), wc)
    q1 = vmadd16_i32(q1, vload_u8_i32(xp, r + s * cs), wa)
    q1 = vmadd16_i32(q1, vload_u8_i32(xp, r + (s + 1) * cs), wb)
    q1 = vmadd16_i32(q1, vload_u8_i32(xp, r + (s + 2) * cs), wc)
    q2 = vmadd16_i32(q2, vload_u8_i32(xp, r + 2 * s * cs), wa)
    q2 = vmadd16_i32(q2, vload_u8_i32(xp, r + (2 * s + 1) * cs), wb)
    q2 = vmadd16_i32(q2, vload_u8_i32(xp, r + (2 * s + 2) * cs), wc)
    q3 = vmadd16_i32(q3, vload_u8_i32(xp, r + 3 * s * cs), wa)
    q3 = vmadd16_i32(q3, vload_u8_i32(xp, r + (3 * s + 1) * cs), wb)
    q3 = vmadd16_i32(q3, vload_u8_i32(xp, r + (3 * s + 2) * cs), wc)
    return q0, q1, q2, q3


@njit(cache=True, inline="always")
def _dw3x4(xp, r0, r1, r2, cs, s, w0, w1, w2, w3, w4, w5, w6, w7, w8, bv):
    """Accumulators (bias included) of a 3x3 depthwise window at 4 adjacent output positions;
    ``r0, r1, r2``: the input elements of the first window's three rows."""
    q0, q1, q2, q3 = _dw_row3x4(xp, r0, cs, s, w0, w1, w2, bv, bv, bv, bv)
    q0, q1, q2, q3 = _dw_row3x4(xp, r1, cs, s, w3, w4, w5, q0, q1, q2, q3)
    return _dw_row3x4(xp, r2, cs, s, w6, w7, w8, q0, q1, q2, q3)


@njit(cache=True, inline="always")
def _dw3x2(xp, r0, r1, r2, cs, s, w0, w1, w2, w3, w4, w5, w6, w7, w8, bv):
    """:func:`_dw3x4` for 2 adjacent output positions."""
    q0 = bv
    q1 = bv
    for r, wa, wb, wc in ((r0, w0, w1, w2), (r1, w3, w4, w5), (r2, w6, w7, w8)):
        q0 = vmadd16_i32(q0, vload_u8_i32(xp, r), wa)
        q0 = vmadd16_i32(q0, vload_u8_i32(xp, r + cs), wb)
        q0 = vmadd16_i32(q0, vload_u8_i32(xp, r + 2 * cs), wc)
        q1 = vmadd16_i32(q1, vload_u8_i32(xp, r + s * cs), wa)
        q1 = vmadd16_i32(q1, vload_u8_i32(xp, r + (s + 1) * cs), wb)
        q1 = vmadd16_i32(q1, vload_u8_i32(xp, r + (s + 2) * cs), wc)
    return q0, q1


@njit(cache=True, inline="always")
def _dw3x1(xp, r0, r1, r2, cs, w0, w1, w2, w3, w4, w5, w6, w7, w8, bv):
    """:func:`_dw3x4` for one output position."""
    q = vmadd16_i32(bv, vload_u8_i32(xp, r0), w0)
    q = vmadd16_i32(q, vload_u8_i32(xp, r0 + cs), w1)
    q = vmadd16_i32(q, vload_u8_i32(xp, r0 + 2 * cs), w2)
    q = vmadd16_i32(q, vload_u8_i32(xp, r1), w3)
    q = vmadd16_i32(q, vload_u8_i32(xp, r1 + cs), w4)
    q = vmadd16_i32(q, vload_u8_i32(xp, r1 + 2 * cs), w5)
    q = vmadd16_i32(q, vload_u8_i32(xp, r2), w6)
    q = vmadd16_i32(q, vload_u8_i32(xp, r2 + cs), w7)
    return vmadd16_i32(q, vload_u8_i32(xp, r2 + 2 * cs), w8)


# --------------------------------------------------------------------------------------------
# VNNI micro-kernel: MR output positions x 16 output channels
# The kernels are made per (requantization kind, rounding mode) by a factory: both are closure
# constants, so numba compiles only the epilogue branch in use (a runtime switch costs ~2x in
# the epilogue). numba caches each variant separately on disk, under a process-independent key
# (see simulator/kernels/jitcache.py: the drivers capture the specialised kernels they call).
def kernels(kind, rnd):
    """``(vnni_blocks, vnni_par, dw_range, dw_par, dwp_range, dwp_par, dw3_rows, dw3_par)``
    specialized for an epilogue kind and
    rounding mode (Python ints), compiled on first use."""
    return specialised(_make_kernels, int(kind), int(rnd))


def _make_kernels(kind, rnd):
    # --------------------------------------------------------------------------------------------
    @njit(cache=True)
    def _vnni_blocks(xp, img, wp_n, ctot, n_pix, ow_n, sh, sw, taps, c4_n, cgp, n_groups, nbg, mg,
                     m_out, wpk, biasp, has_u, dm, mf, mi, s1, s2, zpf, zp, lo, hi, out,
                     nchw_out, total, b0, b1):
        """Output blocks ``[b0, b1)`` (block ``b`` = flat output positions ``b*MR .. b*MR+MR-1``);
        returns the saturation count. With ``has_u`` (0 or 1) each group's packed weights start
        with one all-ones block whose lanes give the window byte sum ``U``, added as
        ``dm[m] * U`` (the zero-point split of the module docstring)."""
        scratch = np.empty(MR * LANES, dtype=np.int32)
        uscr = np.zeros(MR * LANES, dtype=np.int32)
        nbt = nbg + has_u
        mpad = (m_out + LANES - 1) // LANES * LANES + LANES
        stage = np.empty(MR * mpad if nchw_out else 1, dtype=np.int32)
        base = np.empty(MR, dtype=np.int64)
        obase = np.empty(MR, dtype=np.int64)
        n_taps = taps.shape[0]
        cnt = 0
        # the (image, row, column) of flat output position gp, advanced without divisions
        gp = b0 * MR
        n = gp // n_pix
        p = gp - n * n_pix
        oh = p // ow_n
        ow = p - oh * ow_n
        for b in range(b0, b1):
            g0 = b * MR
            n_valid = min(MR, total - g0)
            for r in range(MR):
                if r < n_valid:
                    base[r] = n * img + (oh * sh * wp_n + ow * sw) * ctot
                    obase[r] = n * m_out * n_pix + p if nchw_out else gp * m_out
                    gp += 1
                    p += 1
                    ow += 1
                    if ow == ow_n:
                        ow = 0
                        oh += 1
                        if p == n_pix:
                            p = 0
                            oh = 0
                            n += 1
                else:  # past the end: repeat the last position (results are not stored)
                    base[r] = base[r - 1]
                    obase[r] = obase[r - 1]
            for g in range(n_groups):
                goff = g * cgp
                a0 = base[0] + goff
                a1 = base[1] + goff
                a2 = base[2] + goff
                a3 = base[3] + goff
                a4 = base[4] + goff
                a5 = base[5] + goff
                a6 = base[6] + goff
                a7 = base[7] + goff
                for nbi in range(nbt):
                    c0 = vzero()
                    c1 = vzero()
                    c2 = vzero()
                    c3 = vzero()
                    c4 = vzero()
                    c5 = vzero()
                    c6 = vzero()
                    c7 = vzero()
                    wb = (g * nbt + nbi) * n_taps * c4_n * 64
                    for t in range(n_taps):
                        to = taps[t]
                        for k4 in range(c4_n):
                            wv = vload(wpk, wb)
                            wb += 64
                            o = to + 4 * k4
                            c0 = vdpbusd(c0, vbcast4(xp, a0 + o), wv)
                            c1 = vdpbusd(c1, vbcast4(xp, a1 + o), wv)
                            c2 = vdpbusd(c2, vbcast4(xp, a2 + o), wv)
                            c3 = vdpbusd(c3, vbcast4(xp, a3 + o), wv)
                            c4 = vdpbusd(c4, vbcast4(xp, a4 + o), wv)
                            c5 = vdpbusd(c5, vbcast4(xp, a5 + o), wv)
                            c6 = vdpbusd(c6, vbcast4(xp, a6 + o), wv)
                            c7 = vdpbusd(c7, vbcast4(xp, a7 + o), wv)
                    dst = uscr if nbi < has_u else scratch
                    vstore(dst, 0, c0)
                    vstore(dst, 16, c1)
                    vstore(dst, 32, c2)
                    vstore(dst, 48, c3)
                    vstore(dst, 64, c4)
                    vstore(dst, 80, c5)
                    vstore(dst, 96, c6)
                    vstore(dst, 112, c7)
                    if nbi < has_u:
                        continue
                    nb = nbi - has_u
                    m0 = g * mg + nb * LANES
                    nch = min(LANES, mg - nb * LANES)
                    bv = vload_i32(biasp, m0)
                    dv = vload_i32(dm, m0)
                    for r in range(n_valid):
                        accv = vadd_i32(vload_i32(scratch, r * LANES), bv)
                        if has_u:
                            accv = vmadd_i32(accv, vload_i32(uscr, r * LANES), dv)
                        codes, k = ep_k.ep16(kind, rnd, accv, mf, mi, s1, s2, m0, zpf, zp, lo,
                                             hi, nch)
                        cnt += k
                        if nchw_out:  # staged, then written channel by channel below
                            vstore(stage, r * mpad + m0, codes)
                        else:
                            ep_k.store16(out, obase[r] + m0, 1, codes, nch)
            if nchw_out:
                for m in range(m_out):
                    for r in range(n_valid):
                        out[_u(obase[r] + m * n_pix)] = stage[_u(r * mpad + m)]
        return cnt

    @njit(cache=True, parallel=True)
    def _vnni_par(xp, img, wp_n, ctot, n_pix, ow_n, sh, sw, taps, c4_n, cgp, n_groups, nbg, mg,
                  m_out, wpk, biasp, has_u, dm, mf, mi, s1, s2, zpf, zp, lo, hi, out, nchw_out,
                  total, n_blocks, n_chunks):
        cnts = np.zeros(n_chunks, dtype=np.int64)
        for ch in prange(n_chunks):
            b0 = ch * n_blocks // n_chunks
            b1 = (ch + 1) * n_blocks // n_chunks
            cnts[ch] = _vnni_blocks(xp, img, wp_n, ctot, n_pix, ow_n, sh, sw, taps, c4_n, cgp,
                                    n_groups, nbg, mg, m_out, wpk, biasp, has_u, dm, mf, mi,
                                    s1, s2, zpf, zp, lo, hi, out, nchw_out, total, b0, b1)
        return cnts.sum()

    # --------------------------------------------------------------------------------------------
    # Depthwise (one input and one output channel per group), vectorized over channels
    # --------------------------------------------------------------------------------------------
    @njit(cache=True)
    def _dw_range(xp, img, wp_n, n_ch, n_pix, ow_n, sh, sw, taps, kw_n, dw, w32, biasp, mf, mi,
                  s1, s2, zpf, zp, lo, hi, out, nchw_out, p0, p1):
        """Depthwise output positions ``[p0, p1)``: 16 channels at a time, the taps accumulated in
        one int32 vector per output position (wrapping products and sums, exact by the module
        docstring's argument); ``w32`` is [taps, C rounded up to 16] int32. Returns the
        saturation count. Any kernel size, stride and dilation; the NHWC 3x3 kernels with
        adjacent columns (MobileNet, DS-CNN) run in ``_dw3_rows`` instead.

        The positions are walked one output row segment at a time (a row of one image inside
        ``[p0, p1)``), with the 16-channel block outside the positions so that the bias and
        requantization vectors stay in registers."""
        n_taps = taps.shape[0]
        cpad = (n_ch + LANES - 1) // LANES * LANES
        cnt = 0
        cs = n_ch  # column stride of the padded image (its channel count)
        ps = sw * cs  # input step between horizontally adjacent output positions
        gp = p0
        while gp < p1:
            n = gp // n_pix
            p = gp - n * n_pix
            oh = p // ow_n
            ow0 = p - oh * ow_n
            ow1 = min(ow_n, ow0 + (p1 - gp))
            rb = n * img + oh * sh * wp_n * cs  # padded image row of window row 0
            if nchw_out:
                orow = n * n_ch * n_pix + oh * ow_n
                ost = n_pix
                opx = 1
            else:
                orow = (gp - ow0) * n_ch
                ost = 1
                opx = n_ch
            for c0 in range(0, n_ch, LANES):
                nch = min(LANES, n_ch - c0)
                bv = vload_i32(biasp, c0)
                mfv = simd.vload_f32(mf, c0)
                miv = simd.vload_i64(mi, c0)
                s1v = simd.vload_i64(s1, c0)
                s2v = simd.vload_i64(s2, c0)
                ob = orow + c0 * ost
                base = rb + c0
                for ow in range(ow0, ow1):
                    a = base + ow * ps
                    acc = bv
                    for t in range(n_taps):
                        acc = vmadd_i32(acc, vload_u8_i32(xp, a + taps[t]),
                                        vload_i32(w32, t * cpad + c0))
                    codes, k = ep_k._ep16_vec(kind, rnd, acc, mfv, miv, s1v, s2v, zpf, zp,
                                              lo, hi, nch)
                    cnt += k
                    ep_k.store16(out, ob + ow * opx, ost, codes, nch)
            gp += ow1 - ow0
        return cnt

    @njit(cache=True, parallel=True)
    def _dw_par(xp, img, wp_n, n_ch, n_pix, ow_n, sh, sw, taps, kw_n, dw, w32, biasp, mf, mi,
                s1, s2, zpf, zp, lo, hi, out, nchw_out, total, n_chunks):
        cnts = np.zeros(n_chunks, dtype=np.int64)
        for ch in prange(n_chunks):
            p0 = ch * total // n_chunks
            p1 = (ch + 1) * total // n_chunks
            cnts[ch] = _dw_range(xp, img, wp_n, n_ch, n_pix, ow_n, sh, sw, taps, kw_n, dw, w32,
                                 biasp, mf, mi, s1, s2, zpf, zp, lo, hi, out, nchw_out, p0, p1)
        return cnts.sum()

    @njit(cache=True)
    def _dw3_rows(xp, img, wp_n, n_ch, oh_n, ow_n, sh, sw, taps, w32, biasp, mf, mi, s1, s2,
                  zpf, zp, lo, hi, out, row0, row1):
        """NHWC 3x3 depthwise (column dilation 1, every ``w - wzp`` in int16, NHWC output) on
        output rows ``[row0, row1)`` (row ``r`` = image ``r // oh_n``, output row ``r % oh_n``);
        returns the saturation count. The 16-channel block is the outer loop: a block's
        weights, bias and requantization vectors are loaded once per call instead of once per
        row. A row's accumulators are computed 4, then 2, then 1 positions at a time (narrow
        rows such as KWS's 5 columns were dominated by the per-row set-up and the single-position
        tail) into a row buffer, which one loop then requantizes and stores: one copy of the
        epilogue instead of one per accumulator variable (each inlined copy cost ~0.5 s of
        compilation per requantization kind, and the buffer round trip is two L1 accesses per
        16 outputs)."""
        cpad = (n_ch + LANES - 1) // LANES * LANES
        cs = n_ch
        ps = sw * cs
        t1 = taps[3]
        t2 = taps[6]
        racc = np.empty(ow_n * LANES + 4 * LANES, dtype=np.int32)
        cnt = 0
        for c0 in range(0, n_ch, LANES):
            nch = min(LANES, n_ch - c0)
            bv = vload_i32(biasp, c0)
            mfv = simd.vload_f32(mf, c0)
            miv = simd.vload_i64(mi, c0)
            s1v = simd.vload_i64(s1, c0)
            s2v = simd.vload_i64(s2, c0)
            w0 = vload_i32(w32, c0)
            w1 = vload_i32(w32, cpad + c0)
            w2 = vload_i32(w32, 2 * cpad + c0)
            w3 = vload_i32(w32, 3 * cpad + c0)
            w4 = vload_i32(w32, 4 * cpad + c0)
            w5 = vload_i32(w32, 5 * cpad + c0)
            w6 = vload_i32(w32, 6 * cpad + c0)
            w7 = vload_i32(w32, 7 * cpad + c0)
            w8 = vload_i32(w32, 8 * cpad + c0)
            n = row0 // oh_n
            oh = row0 - n * oh_n
            for row in range(row0, row1):
                r0 = n * img + oh * sh * wp_n * cs + c0 + taps[0]
                r1 = r0 + t1
                r2 = r0 + t2
                ow = 0
                # the stride is a literal in each branch: the loads two windows share then
                # have one address and LLVM keeps one of each
                if sw == 1:
                    while ow + 4 <= ow_n:
                        a = ow * cs
                        q0, q1, q2, q3 = _dw3x4(xp, r0 + a, r1 + a, r2 + a, cs, 1, w0, w1, w2,
                                                w3, w4, w5, w6, w7, w8, bv)
                        vstore(racc, ow * LANES, q0)
                        vstore(racc, ow * LANES + LANES, q1)
                        vstore(racc, ow * LANES + 2 * LANES, q2)
                        vstore(racc, ow * LANES + 3 * LANES, q3)
                        ow += 4
                    if ow + 2 <= ow_n:
                        a = ow * cs
                        q0, q1 = _dw3x2(xp, r0 + a, r1 + a, r2 + a, cs, 1, w0, w1, w2, w3, w4,
                                        w5, w6, w7, w8, bv)
                        vstore(racc, ow * LANES, q0)
                        vstore(racc, ow * LANES + LANES, q1)
                        ow += 2
                elif sw == 2:
                    while ow + 4 <= ow_n:
                        a = ow * ps
                        q0, q1, q2, q3 = _dw3x4(xp, r0 + a, r1 + a, r2 + a, cs, 2, w0, w1, w2,
                                                w3, w4, w5, w6, w7, w8, bv)
                        vstore(racc, ow * LANES, q0)
                        vstore(racc, ow * LANES + LANES, q1)
                        vstore(racc, ow * LANES + 2 * LANES, q2)
                        vstore(racc, ow * LANES + 3 * LANES, q3)
                        ow += 4
                    if ow + 2 <= ow_n:
                        a = ow * ps
                        q0, q1 = _dw3x2(xp, r0 + a, r1 + a, r2 + a, cs, 2, w0, w1, w2, w3, w4,
                                        w5, w6, w7, w8, bv)
                        vstore(racc, ow * LANES, q0)
                        vstore(racc, ow * LANES + LANES, q1)
                        ow += 2
                while ow < ow_n:
                    a = ow * ps
                    vstore(racc, ow * LANES, _dw3x1(xp, r0 + a, r1 + a, r2 + a, cs, w0, w1, w2,
                                                    w3, w4, w5, w6, w7, w8, bv))
                    ow += 1
                ob = row * ow_n * n_ch + c0
                for ow in range(ow_n):
                    codes, k = ep_k._ep16_vec(kind, rnd, vload_i32(racc, ow * LANES), mfv, miv,
                                              s1v, s2v, zpf, zp, lo, hi, nch)
                    cnt += k
                    ep_k.store16(out, ob + ow * n_ch, 1, codes, nch)
                oh += 1
                if oh == oh_n:
                    oh = 0
                    n += 1
        return cnt

    @njit(cache=True, parallel=True)
    def _dw3_par(xp, img, wp_n, n_ch, oh_n, ow_n, sh, sw, taps, w32, biasp, mf, mi, s1, s2,
                 zpf, zp, lo, hi, out, n_rows, n_chunks):
        cnts = np.zeros(n_chunks, dtype=np.int64)
        for ch in prange(n_chunks):
            cnts[ch] = _dw3_rows(xp, img, wp_n, n_ch, oh_n, ow_n, sh, sw, taps, w32, biasp, mf,
                                 mi, s1, s2, zpf, zp, lo, hi, out, ch * n_rows // n_chunks,
                                 (ch + 1) * n_rows // n_chunks)
        return cnts.sum()

    # --------------------------------------------------------------------------------------------
    # Depthwise on NCHW: one channel plane at a time, vectorized over output positions
    # --------------------------------------------------------------------------------------------
    @njit(cache=True)
    def _dwp_range(x, xzp, height, width, n_ch, pt, pl, sh, sw, hq, wq, oh_n, ow_n, toff, wtab,
                   bias32, lmask, n_garb, mf, mi, s1, s2, zpf, zp, lo, hi, out, q0, q1):
        """Planes ``[q0, q1)`` (plane ``q`` = image ``q // C``, channel ``q % C``) of a depthwise
        conv on contiguous NCHW ``x`` (flat). Returns the saturation count.

        The plane ``x - xzp`` is written (int32) into ``sh * sw`` phase planes of ``hq x wq``
        (padded row ``i``, column ``k`` go to phase ``(i % sh, k % sw)`` at ``(i // sh, k //
        sw)``; padding stays 0), so that tap ``t`` of output ``j = oh * wq + ow`` is element
        ``j + toff[t]`` of the buffer, for every stride and dilation: 16 consecutive ``j`` are
        one vector load per tap. The lanes with ``ow >= ow_n`` (or past the plane) are garbage:
        ``lmask`` zeroes their accumulators, they are not stored, and ``n_garb`` lanes of
        accumulator 0 are taken off the saturation count."""
        n_taps = toff.shape[0]
        n_phase = sh * sw
        plane = hq * wq
        buf = np.zeros(n_phase * plane + wq + 2 * LANES, dtype=np.int32)
        npos = oh_n * wq
        nvec = (npos + LANES - 1) // LANES
        stage = np.empty(nvec * LANES, dtype=np.int32)
        n_img_pix = height * width
        n_out_pix = oh_n * ow_n
        cnt = 0
        _, sat0 = ep_k.ep16_splat(kind, rnd, vzero(), mf, mi, s1, s2, 0, zpf, zp, lo, hi, 1)
        for q in range(q0, q1):
            c = q % n_ch
            xb = q * n_img_pix
            # the plane, minus the zero point (spatial padding is 0 from the start)
            if sh == 1 and sw == 1:
                for i in range(height):
                    ob = (i + pt) * wq + pl
                    xs = xb + i * width
                    for k in range(width):
                        buf[_u(ob + k)] = np.int32(x[_u(xs + k)]) - xzp
            elif sw == 2:  # the common stride 2, with constant-stride loops
                for i in range(height):
                    ip = i + pt
                    rb = ((ip % sh) * 2) * plane + (ip // sh) * wq
                    xs = xb + i * width
                    for pc in range(2):
                        k0 = (pc + pl) & 1  # first column k with (k + pl) % 2 == pc
                        ob = rb + pc * plane + (k0 + pl) // 2
                        for k2 in range((width - k0 + 1) // 2):
                            buf[_u(ob + k2)] = np.int32(x[_u(xs + k0 + 2 * k2)]) - xzp
            else:
                for i in range(height):
                    ip = i + pt
                    rb = ((ip % sh) * sw) * plane + (ip // sh) * wq
                    xs = xb + i * width
                    for pc in range(sw):
                        k0 = (pc - pl) % sw
                        ob = rb + pc * plane + (k0 + pl) // sw
                        for k in range(k0, width, sw):
                            buf[_u(ob)] = np.int32(x[_u(xs + k)]) - xzp
                            ob += 1
            bv = simd.vsplat_i32(bias32[c])
            wb = c * n_taps
            for j0 in range(0, npos, LANES):
                acc = bv
                for t in range(n_taps):
                    acc = vmadd_i32(acc, vload_i32(buf, toff[t] + j0),
                                    simd.vsplat_i32(wtab[wb + t]))
                acc = simd.vand_i32(acc, vload_i32(lmask, j0))
                codes, k = ep_k.ep16_splat(kind, rnd, acc, mf, mi, s1, s2, c, zpf, zp, lo, hi,
                                           LANES)
                cnt += k
                vstore(stage, j0, codes)
            cnt -= n_garb * sat0
            ob = q * n_out_pix
            for oh in range(oh_n):
                for ow in range(ow_n):
                    out[_u(ob + ow)] = stage[_u(oh * wq + ow)]
                ob += ow_n
        return cnt

    @njit(cache=True, parallel=True)
    def _dwp_par(x, xzp, height, width, n_ch, pt, pl, sh, sw, hq, wq, oh_n, ow_n, toff, wtab,
                 bias32, lmask, n_garb, mf, mi, s1, s2, zpf, zp, lo, hi, out, total, n_chunks):
        cnts = np.zeros(n_chunks, dtype=np.int64)
        for ch in prange(n_chunks):
            q0 = ch * total // n_chunks
            q1 = (ch + 1) * total // n_chunks
            cnts[ch] = _dwp_range(x, xzp, height, width, n_ch, pt, pl, sh, sw, hq, wq, oh_n,
                                  ow_n, toff, wtab, bias32, lmask, n_garb, mf, mi, s1, s2, zpf,
                                  zp, lo, hi, out, q0, q1)
        return cnts.sum()

    return (_vnni_blocks, _vnni_par, _dw_range, _dw_par, _dwp_range, _dwp_par, _dw3_rows,
            _dw3_par)


# --------------------------------------------------------------------------------------------
# Python side: per-step preparation (weights packed once) and the call
# --------------------------------------------------------------------------------------------
def _threads() -> int:
    return numba.get_num_threads()


class ConvFast:
    """A conv (or gemm-as-1x1-conv) step prepared for the fast kernels.

    Built once per step from validated parameters; :meth:`run` returns ``(out, n_sat)`` or
    ``None`` when the fast path does not apply to this input (then the caller runs the general
    kernels, which also raise any error).
    """

    def __init__(self, ws, bias, xzp, strides, pads, dilations, group, layout, acc_hi, ep,
                 out_dtype, x_dtypes=("int8", "uint8")):
        m_out, cg, kh_n, kw_n = ws.shape
        self.m_out, self.cg, self.kh, self.kw = m_out, cg, kh_n, kw_n
        self.group = group
        self.sh, self.sw = strides
        self.dh, self.dw = dilations
        self.pt, self.pl, self.pb, self.pr = pads
        self.nchw = layout == "NCHW"
        self.acc_hi = min(int(acc_hi), _INT32_LIMIT)
        self.ep = ep
        self.out_dtype = np.dtype(out_dtype)
        self.xzp = int(xzp)
        self.x_dtypes = x_dtypes
        ws64 = ws.astype(np.int64)
        self.sumabs = np.abs(ws64).reshape(m_out, -1).sum(axis=1)
        colsum = ws64.reshape(m_out, -1).sum(axis=1)
        self.bias = bias.astype(np.int64)
        self.bias_abs = np.abs(self.bias)
        self.depthwise = cg == 1 and m_out == group
        self.run_mode = False
        self.has_u = 0
        self.dm = np.zeros(((m_out + 15) // 16 + 1) * 16, dtype=np.int32)
        # exactness rests on int32 wrap-around arithmetic (module docstring), so the weights only
        # need to fit the kernels' weight type: int32 (depthwise) or int8 after the split
        self.usable = (ws64.size > 0 and int(ws64.min()) >= -(2**31)
                       and int(ws64.max()) <= _INT32_LIMIT)
        # the dense kernels: vpdpbusd (VNNI) or int16 pairs (simulator.kernels.portable)
        self.vnni = capabilities().vnni
        self._colsum = colsum
        self.amx = None  # (n_chunks, chunk4, c4p, padded weights) when the AMX kernel applies
        self._biasp = {}
        self._launches = {}
        # no partial sum may leave the accumulator range (nor int32, nor the epilogue's limit)
        self.limit = self.acc_hi
        if self.ep.acc_limit is not None:
            self.limit = min(self.limit, int(self.ep.acc_limit))
        # largest |x - xzp| the input dtype allows, for int8 (flip 128) and uint8 (flip 0)
        self.worst_absmax = {128: max(abs(-128 - self.xzp), abs(127 - self.xzp)),
                             0: max(abs(0 - self.xzp), abs(255 - self.xzp))}
        if not self.usable:
            return
        self.mg = m_out // group
        if self.depthwise:
            self.cgp = 1
            self.ctot = group
            cpad = (m_out + LANES - 1) // LANES * LANES
            w32 = np.zeros((kh_n * kw_n, cpad), dtype=np.int32)
            w32[:, :m_out] = ws64.reshape(m_out, kh_n * kw_n).T
            self.w32 = w32.reshape(-1)
            # per channel, the taps in (kh, kw) order, for the NCHW plane kernel
            self.wtab = np.ascontiguousarray(ws64.reshape(-1)).astype(np.int32)
            # bias fits int32 whenever the bound check passes (|bias| <= limit < 2**31)
            self.bias32 = np.clip(self.bias, -(2**31), _INT32_LIMIT).astype(np.int32)
            # the row kernel's 3x3 case (any row dilation: its rows are taps 0, 3 and 6):
            # vpmaddwd needs every w - wzp in int16
            self.dw3 = (kh_n == 3 and kw_n == 3 and self.dw == 1
                        and int(ws64.min()) >= -32768 and int(ws64.max()) <= 32767)
            self._geom = {}
            return
        # zero-point split: ws = wsh + dm[m] with wsh int8 (module docstring)
        wmin = ws64.reshape(m_out, -1).min(axis=1)
        wmax = ws64.reshape(m_out, -1).max(axis=1)
        if not self.vnni:
            # int16 weights hold any 8-bit ws: no split
            if not portable.usable_weights(wmin.min(), wmax.max()):
                self.usable = False
                return
            dm = np.zeros(m_out, dtype=np.int64)
        elif int((wmax - wmin).max()) > 255:
            self.usable = False
            return
        else:
            # dm = 0 when the channel already fits int8, else the nearest shift that makes it fit
            dm = np.clip(np.zeros(m_out, dtype=np.int64), wmax - 127, wmin + 128)
        wtype = np.int8 if self.vnni else np.int16
        if np.any(dm != 0):
            self.has_u = 1
            self.dm[:m_out] = dm
            ws64 = ws64 - dm[:, None, None, None]
        hu = self.has_u
        if group == 1 and self.dw == 1:
            # "row runs": for each kernel row the KW*C input bytes of a window are contiguous in
            # NHWC, so they form the dot product's K axis directly (padded to a multiple of 4
            # with zero weights; the bytes read past a run belong to the next pixels or to the
            # 4 bytes of slack at the end of the buffer, and are multiplied by 0 -- the ones
            # block of the split has the same zeros, so U sums exactly the window's bytes)
            self.run_mode = True
            self.cgp = cg
            self.ctot = cg
            self.nbg = (m_out + LANES - 1) // LANES
            run = kw_n * cg
            self.c4_n = (run + 3) // 4
            pk = np.zeros(((self.nbg + hu) * LANES, kh_n, self.c4_n * 4), dtype=wtype)
            pk[:hu * LANES, :, :run] = 1
            pk[hu * LANES:hu * LANES + m_out, :, :run] = (
                ws64.transpose(0, 2, 3, 1).reshape(m_out, kh_n, run))
            pk = pk.reshape(self.nbg + hu, LANES, kh_n, self.c4_n, 4)
            self.wpk = np.ascontiguousarray(pk.transpose(0, 2, 3, 1, 4)).reshape(-1)
        else:
            self.cgp = (cg + 3) // 4 * 4
            self.ctot = group * self.cgp
            self.nbg = (self.mg + LANES - 1) // LANES
            self.c4_n = self.cgp // 4
            pk = np.zeros((group, (self.nbg + hu) * LANES, self.cgp, kh_n, kw_n), dtype=wtype)
            pk[:, :hu * LANES, :cg] = 1
            pk[:, hu * LANES:hu * LANES + self.mg, :cg] = (
                ws64.reshape(group, self.mg, cg, kh_n, kw_n))
            pk = pk.reshape(group, self.nbg + hu, LANES, self.cgp // 4, 4, kh_n, kw_n)
            self.wpk = np.ascontiguousarray(pk.transpose(0, 1, 5, 6, 3, 2, 4)).reshape(-1)
        if not self.vnni:
            self.wpk = portable.pack_pairs(self.wpk)
        self._geom = {}
        # AMX tiles (simulator.kernels.amx_conv): one group, no zero-point split, NHWC
        if capabilities().amx and group == 1 and not hu and not self.nchw:
            n_taps = kh_n if self.run_mode else kh_n * kw_n
            n_chunks, chunk4, c4p = amx_conv.chunking(self.c4_n)
            self.amx = (n_chunks, chunk4, c4p,
                        amx_conv.pad_weights(self.wpk, self.nbg, n_taps, self.c4_n, c4p))

    def bound(self, x_absmax):
        """Largest |partial sum| when ``|x - xzp| <= x_absmax``: ``max_c |bias| + sum|ws|
        * x_absmax`` (any order of the additions)."""
        return int((self.bias_abs + self.sumabs * x_absmax).max())

    def _biasp_for(self, flip):
        """``bias - uzp * sum(ws)`` per output channel, wrapped to int32 (the accumulator fits
        int32, so wrapping arithmetic gives it exactly), zero-padded for 16-lane loads."""
        bp = self._biasp.get(flip)
        if bp is None:
            uzp = self.xzp + flip
            exact = self.bias - np.int64(uzp) * self._colsum
            bp = np.zeros((self.m_out + 15) // 16 * 16 + 16, dtype=np.int32)
            bp[:self.m_out] = exact.astype(np.int32)  # astype wraps modulo 2**32
            self._biasp[flip] = bp
        return bp

    def _geometry(self, height, width):
        key = (height, width)
        geo = self._geom.get(key)
        if geo is None:
            ext_h = (self.kh - 1) * self.dh + 1
            ext_w = (self.kw - 1) * self.dw + 1
            span_h = height + self.pt + self.pb - ext_h
            span_w = width + self.pl + self.pr - ext_w
            if span_h < 0 or span_w < 0:
                return None
            oh_n = span_h // self.sh + 1
            ow_n = span_w // self.sw + 1
            hp_n = max((oh_n - 1) * self.sh + ext_h, self.pt + height)
            wp_n = max((ow_n - 1) * self.sw + ext_w, self.pl + width)
            if self.run_mode:
                taps = np.array([i * self.dh * wp_n * self.ctot for i in range(self.kh)],
                                dtype=np.int64)
            else:
                taps = np.array([(i * self.dh * wp_n + j * self.dw) * self.ctot
                                 for i in range(self.kh) for j in range(self.kw)],
                                dtype=np.int64)
            geo = (oh_n, ow_n, hp_n, wp_n, taps)
            self._geom[key] = geo
        return geo

    def _plane_geometry(self, oh_n, ow_n, hp_n, wp_n):
        """Phase-plane sizes, tap offsets, lane mask and garbage-lane count of the NCHW
        depthwise kernel (see ``_dwp_range``)."""
        key = ("plane", oh_n, ow_n, hp_n, wp_n)
        geo = self._geom.get(key)
        if geo is None:
            sh, sw = self.sh, self.sw
            hq = -(-hp_n // sh)
            wq = -(-wp_n // sw)
            plane = hq * wq
            toff = np.array([((((i * self.dh) % sh) * sw + (j * self.dw) % sw) * plane
                              + ((i * self.dh) // sh) * wq + (j * self.dw) // sw)
                             for i in range(self.kh) for j in range(self.kw)], dtype=np.int64)
            npos = oh_n * wq
            nvec = -(-npos // LANES)
            jj = np.arange(nvec * LANES + LANES)
            lmask = np.where((jj < npos) & (jj % wq < ow_n), -1, 0).astype(np.int32)
            n_garb = nvec * LANES - oh_n * ow_n
            geo = (hq, wq, toff, lmask, n_garb)
            self._geom[key] = geo
        return geo

    def run(self, x):
        """``(out, n_sat)`` for the 4-D input ``x`` in the step layout, or ``None``."""
        if not self.usable or x.ndim != 4:
            return None
        got = self.launch(x.shape, x.dtype)
        if got is None:
            return None
        return self.execute(got, x)

    def execute(self, got, x):
        """Run ``got = (launch, static_ok)`` of :meth:`launch` on ``x``: ``(out, n_sat)``, or
        ``None`` when the bound is only static-unproven and the input codes do not prove it
        either."""
        launch, static_ok = got
        x = np.ascontiguousarray(x)
        if not static_ok:
            # the dtype range does not prove it: look at the actual input codes
            x_absmax = max(abs(int(x.min()) - self.xzp), abs(int(x.max()) - self.xzp))
            if self.bound(x_absmax) > self.limit:
                return None
        outs, n_sat = launch.execute((x,))
        return outs[0], n_sat

    def launch(self, shape, dtype, in_view=None, out_shape=None):
        """``(Launch, static_ok)`` for a 4-D input of this shape and dtype in the step layout, or
        ``None`` when the fast path does not apply. ``static_ok``: the dtype range alone proves
        that no partial sum leaves the accumulator range (else the caller must check the input
        codes first). ``in_view``/``out_shape``: the launch input is ``In(0, in_view)`` and its
        output is viewed with ``out_shape`` (gemm runs as a 1x1 convolution)."""
        if not self.usable or len(shape) != 4:
            return None
        dtype = np.dtype(dtype)
        threads = _threads()
        key = (tuple(shape), dtype.num, threads, in_view, out_shape)
        got = self._launches.get(key, False)
        if got is False:
            got = self._launches[key] = self._build_launch(tuple(int(d) for d in shape), dtype,
                                                          threads, in_view, out_shape)
        return got

    def _build_launch(self, shape, dtype, threads, in_view, out_shape):
        if dtype.name not in self.x_dtypes:
            return None
        if self.nchw:
            n_img, n_in, height, width = shape
        else:
            n_img, height, width, n_in = shape
        if n_in != self.cg * self.group or n_img == 0:
            return None
        geo = self._geometry(height, width)
        if geo is None:
            return None
        oh_n, ow_n, hp_n, wp_n, taps = geo
        # the dtype's offset to uint8 (for the bound), and the one the kernels apply: the AMX
        # kernel multiplies int8 inputs as they are (tdpbssd), the others need uint8 (+128)
        dflip = 128 if dtype == np.int8 else 0
        use_gemv = (self.vnni and not self.depthwise and self.run_mode and not self.has_u
                    and not self.nchw and self._pointwise()
                    and n_img * oh_n * ow_n <= gemv.MAX_ROWS)
        use_amx = (self.amx is not None and not use_gemv and self._amx_pays() and (dflip == 0 or -128 <= self.xzp <= 127))
        signed = use_amx and dflip == 128
        flip = 0 if signed else dflip
        uzp = self.xzp + flip
        if not (-128 <= uzp <= 127 if signed else 0 <= uzp <= 255):
            return None
        static_ok = self.bound(self.worst_absmax[dflip]) <= self.limit
        macs = n_img * oh_n * ow_n * self.m_out * self.cg * self.kh * self.kw
        parallel = threads > 1 and macs >= PARALLEL_MIN_MACS
        ep = self.ep
        kern = kernels(ep.kind, ep.rnd)
        n_x = n_img * height * width * n_in
        if self.nchw:
            out_dims = (n_img, self.m_out, oh_n, ow_n)
        else:
            out_dims = (n_img, oh_n, ow_n, self.m_out)
        n_out = n_img * oh_n * ow_n * self.m_out
        out_view = Tmp(0, out_shape if out_shape is not None else out_dims)
        flat = Tmp(0, (n_out,))
        temps = [((n_out,), self.out_dtype.name)]
        if self.depthwise and self.nchw and DW_PLANES:
            hq, wq, toff, lmask, n_garb = self._plane_geometry(oh_n, ow_n, hp_n, wp_n)
            total = n_img * self.m_out
            common = (In(0, (n_x,)), np.int32(self.xzp), height, width, self.m_out, self.pt,
                      self.pl, self.sh, self.sw, hq, wq, oh_n, ow_n, toff, self.wtab,
                      self.bias32, lmask, n_garb) + ep.arrays() + (flat,)
            if parallel:
                call = Call(kern[5], common + (total, min(total, threads * 4)), counted=True)
            else:
                call = Call(kern[4], common + (0, total), counted=True)
            return Launch(tuple(temps), (call,), (out_view,)), static_ok
        img = hp_n * wp_n * self.ctot
        # bytes the kernels may read past the last window's run (multiplied by zero weights)
        slack = 16 + (4 * (self.amx[2] - self.c4_n) if use_amx else 0)
        # the portable dense kernel reads an int16 image (simulator.kernels.portable)
        image_dtype = "uint8" if self.vnni or self.depthwise else portable.IMAGE_DTYPE
        if (flip == 0 and image_dtype == "uint8" and not self.nchw and self.run_mode
                and self.kh == 1 and self.kw == 1
                and (hp_n, wp_n) == (height, width) and self.cg % 4 == 0
                and slack == 16):
            # an NHWC input of a 1x1 conv without padding (uint8, or int8 for the AMX kernel)
            # is its own padded image: the kernel reads exactly the C bytes of each pixel (no
            # slack needed), skip the copy
            xp = In(0, (n_x,))
            calls = []
        elif not self.vnni and portable_gemv.reads_input(self, n_img * oh_n * ow_n):
            # a batch-1 fully connected layer on the portable path reads its 8-bit input itself
            xp = In(0, (n_x,))
            calls = []
        else:
            # + slack: the row runs read up to 3 bytes, depthwise up to 15 bytes past the end
            temps.append(((n_img * img + slack,), image_dtype))
            xp = Tmp(1)
            layout = np.array([int(self.nchw), height, width], dtype=np.int64)
            args = (In(0, (n_x,)), layout, self.pt, self.pl, hp_n, wp_n, self.group, self.cg,
                    self.cgp, self.ctot, flip, uzp, xp)
            if parallel and n_img > 1:
                calls = [Call(_prepass_par, args + (n_img, min(n_img, threads)))]
            else:
                calls = [Call(_prepass_images, args + (0, n_img))]
        biasp = self._biasp_for(flip)
        n_pix = oh_n * ow_n
        total = n_img * n_pix
        if self.depthwise and self.dw3 and not self.nchw:
            n_rows = n_img * oh_n
            common = (xp, img, wp_n, self.ctot, oh_n, ow_n, self.sh, self.sw, taps, self.w32,
                      biasp) + ep.arrays() + (flat,)
            if parallel and n_rows > 1:
                calls.append(Call(kern[7], common + (n_rows, min(n_rows, threads * 4)),
                                  counted=True))
            else:
                calls.append(Call(kern[6], common + (0, n_rows), counted=True))
        elif self.depthwise:
            common = (xp, img, wp_n, self.ctot, n_pix, ow_n, self.sh, self.sw, taps, self.kw,
                      self.dw, self.w32, biasp) + ep.arrays() + (flat, self.nchw)
            if parallel:
                calls.append(Call(kern[3], common + (total, threads * 4), counted=True))
            else:
                calls.append(Call(kern[2], common + (0, total), counted=True))
        elif use_gemv:
            common = (xp, self.ctot, self.c4_n, self.nbg, self.m_out, self.wpk,
                      biasp) + ep.arrays() + (flat, total)
            calls.append(Call(gemv.kernels(ep.kind, ep.rnd), common, counted=True))
        elif use_amx:
            calls.append(self._amx_call(xp, img, n_img, oh_n, ow_n, wp_n, taps, biasp, flat,
                                        parallel, threads, signed))
        elif not self.vnni:
            n_blocks = (total + portable.MR - 1) // portable.MR
            common = (xp, img, wp_n, self.ctot, n_pix, ow_n, self.sh, self.sw, taps,
                      self.c4_n, self.cgp, self.group, self.nbg, self.mg, self.m_out,
                      self.wpk, biasp) + ep.arrays() + (flat, self.nchw, total)
            pkern = portable.kernels(ep.kind, ep.rnd)
            if total <= portable.MAX_ROWS:
                # a batch-1 fully connected layer: int8 weights (simulator.kernels.portable_gemv)
                calls.append(portable_gemv.call(self, xp, flip, biasp, flat, total)
                             or Call(pkern[2], common + (0, total), counted=True))
            elif parallel:
                calls.append(Call(pkern[1], common + (n_blocks, min(n_blocks, threads * 4)),
                                  counted=True))
            else:
                calls.append(Call(pkern[0], common + (0, n_blocks), counted=True))
        elif self._rows_pay(ow_n):
            calls.append(self._rows_call(xp, img, n_img, oh_n, ow_n, wp_n, taps, biasp, flat,
                                         parallel, threads))
        else:
            n_blocks = (total + MR - 1) // MR
            common = (xp, img, wp_n, self.ctot, n_pix, ow_n, self.sh, self.sw, taps,
                      self.c4_n, self.cgp, self.group, self.nbg, self.mg, self.m_out,
                      self.wpk, biasp, self.has_u, self.dm) + ep.arrays() + (flat, self.nchw,
                                                                            total)
            if parallel:
                calls.append(Call(kern[1], common + (n_blocks, min(n_blocks, threads * 4)),
                                  counted=True))
            else:
                calls.append(Call(kern[0], common + (0, n_blocks), counted=True))
        return Launch(tuple(temps), tuple(calls), (out_view,)), static_ok

    def _pointwise(self):
        """1x1, stride 1, no padding: the windows of consecutive positions are consecutive."""
        return (self.kh == 1 and self.kw == 1 and self.sh == 1 and self.sw == 1
                and (self.pt, self.pl, self.pb, self.pr) == (0, 0, 0, 0))

    def _rows_pay(self, ow_n):
        """Whether the row kernel of :mod:`simulator.kernels.vnni_rows` takes this VNNI step:
        its scope (one group as row runs, no zero-point split, NHWC), and rows that fill its
        8-position blocks (at most 1/8 of the products wasted on a row's last block) unless
        the positions form one long row (pointwise)."""
        if not (self.vnni and self.run_mode and not self.has_u and not self.nchw):
            return False
        padded = -(-ow_n // vnni_rows.MR) * vnni_rows.MR
        return self._pointwise() or 8 * padded <= 9 * ow_n

    def _rows_call(self, xp, img, n_img, oh_n, ow_n, wp_n, taps, biasp, flat, parallel,
                   threads):
        """The :mod:`simulator.kernels.vnni_rows` call writing ``flat`` (NHWC output)."""
        total = n_img * oh_n * ow_n
        if self._pointwise():
            # consecutive positions have consecutive windows: one long row
            oh_n, ow_n, wp_n = 1, total, total
        ep = self.ep
        rows, rows_par = vnni_rows.kernels(ep.kind, ep.rnd)
        key = ("koff", tuple(int(t) for t in taps), self.c4_n)
        koff = self._geom.get(key)
        if koff is None:
            koff = self._geom[key] = vnni_rows.koff_table(taps, self.c4_n)
        common = (xp, img, wp_n, self.ctot, oh_n, ow_n, self.sh, self.sw, koff, self.nbg,
                  self.m_out, self.wpk, biasp) + ep.arrays() + (flat,)
        n_blocks = -(-total // vnni_rows.MR)
        if parallel and n_blocks > 1:
            return Call(rows_par, common + (total, min(n_blocks, threads * 4)), counted=True)
        return Call(rows, common + (0, total), counted=True)

    def _amx_pays(self):
        """Whether the AMX kernel is expected to beat the VNNI one: a tile product of fewer
        than 8 bytes of K (a 1-channel input with a narrow kernel: KWS's first conv) costs
        more than the VNNI broadcasts it replaces (measured: 0.7x)."""
        return self.amx[1] >= 2

    def _amx_call(self, xp, img, n_img, oh_n, ow_n, wp_n, taps, biasp, flat, parallel,
                  threads, signed):
        """The :mod:`simulator.kernels.amx_conv` call writing ``flat`` (NHWC output)."""
        n_chunks, chunk4, c4p, wpk = self.amx
        if self._pointwise():
            # the windows of all positions of the batch are contiguous: one long output row
            total = n_img * oh_n * ow_n
            oh_n, ow_n, wp_n, n_rows = 1, total, total, 1
        else:
            n_rows = n_img * oh_n
        rows = min(16, ow_n)
        n_units = n_rows * -(-ow_n // rows)
        ep = self.ep
        kern = amx_conv.kernels(ep.kind, ep.rnd, signed)
        common = (xp, img, wp_n, self.ctot, oh_n, ow_n, self.sh, self.sw, taps, c4p, chunk4,
                  n_chunks, self.nbg, self.m_out, wpk, biasp) + ep.arrays() + (
                      flat, amx.config_bytes(rows, 4 * chunk4, chunk4), rows)
        n_pairs = (n_units + 1) // 2
        if parallel and n_pairs > 1:
            return Call(kern[1], common + (n_units, min(n_pairs, threads * 4)), counted=True)
        return Call(kern[0], common + (0, n_units), counted=True)


__all__ = ["MR", "PARALLEL_MIN_MACS", "ConvFast"]
