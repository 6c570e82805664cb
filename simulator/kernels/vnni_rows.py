"""Dense NHWC conv on AVX-512 VNNI, one output row at a time: the small-image kernel.

The block kernel of :mod:`simulator.kernels.igemm` (``_vnni_blocks``) walks blocks of 8 flat
output positions that may straddle rows and images, so for every block it recomputes each
position's (image, row, column) and window address, accumulates from zero, then adds the bias
and requantizes from a scratch copy, checking the zero-point split and NCHW staging on the way.
With 16 or 32 output channels (ResNet-8 at batch 1) a block is only 9-72 weight vectors of
work and that bookkeeping cost a quarter to a half of a step (ResNet-8's first conv 12.6 ->
6.5 us, its 16-channel 3x3 convs 20 -> 15 us; CPU time, loaded 2-vCPU AMD EPYC). Here a block never leaves an
output row, so its 8 window addresses are ``a0 + r * sw * C``; the kernel's K axis (kernel rows
x padded row runs, ``koff``) is one flat loop instead of taps x channel groups; the
accumulators start at the bias; the epilogue reads the 16 per-channel requantization vectors
once per channel block and row.

Scope (``ConvFast`` chooses it): one group, no zero-point split (``has_u == 0``), NHWC output,
the run-mode weight packing of ``ConvFast`` (per kernel row the ``KW * C`` window bytes are
contiguous). A 1x1 stride-1 unpadded conv or gemm is one long row over the whole batch.

Same inputs (the uint8 image of the prepass, the packed weights, ``biasp``) and the same
exactness argument as ``_vnni_blocks`` (igemm module docstring): ``u8 * s8`` products summed in
wrapping int32 lanes, whose result is the true accumulator because the static bound puts it in
int32; starting from ``biasp`` instead of adding it last changes nothing modulo 2**32. Positions
past the end of a row repeat the row's last position and are not stored.

At batch 256 it also beats the block kernel on the steps it takes (same host: ResNet-8's convs
17.7 vs 20.8 ms, ORT-quantized MobileNetV2's 17.6 vs 21.0 ms, AD01's gemms 0.37 vs 0.39 ms).
Rows narrower than a block waste its products, so ``ConvFast`` keeps the block kernel for rows
whose last block would be more than 1/8 empty (KWS's 5-column rows: 3.9 vs 3.7 us).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from simulator.kernels import epilogue as ep_k
from simulator.kernels import simd
from simulator.kernels.jitcache import specialised
from simulator.kernels.portable_glue import stack_array
from simulator.kernels.simd import vbcast4, vdpbusd, vload, vload_i32, vstore

MR = 8
LANES = 16


def kernels(kind, rnd):
    """``(rows, rows_par)`` specialised for an epilogue kind and rounding mode (Python ints)."""
    got = specialised(_make_kernels, int(kind), int(rnd))
    _SPECS[got[0]] = (int(kind), int(rnd))
    return got


# serial kernel -> (kind, rnd): how simulator.fusion recognises the calls it may rewrite
_SPECS = {}


def spec_of(fn):
    """``(kind, rnd)`` of a serial :func:`kernels` kernel (``rows``), else ``None``."""
    return _SPECS.get(fn)


def koff_table(taps, c4_n):
    """The byte offset of every 4-byte K step from a window's first byte, in the packed
    weights' order (kernel row, then 4-byte group of the row run)."""
    return np.array([int(t) + 4 * k4 for t in taps for k4 in range(c4_n)], dtype=np.int64)


def _make_kernels(kind, rnd):
    @njit(cache=True)
    def rows(xp, img, wp_n, ctot, oh_n, ow_n, sh, sw, koff, nbg, m_out, wpk, biasp, mf, mi,
             s1, s2, zpf, zp, lo, hi, out, p0, p1):
        """Flat output positions ``[p0, p1)`` (position ``p``: row ``p // ow_n`` = image
        ``row // oh_n``, output row ``row % oh_n``; column ``p % ow_n``) into flat NHWC
        ``out``; returns the saturation count."""
        nk = koff.shape[0]
        # in the frame, not a heap allocation and free per call (~50 ns each)
        scratch = stack_array(128, np.int32)  # MR * LANES
        ps = sw * ctot
        rstep = sh * wp_n * ctot
        wblk = nk * 64
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
                a0 = rb + ow * ps
                a1 = a0 + min(1, last) * ps
                a2 = a0 + min(2, last) * ps
                a3 = a0 + min(3, last) * ps
                a4 = a0 + min(4, last) * ps
                a5 = a0 + min(5, last) * ps
                a6 = a0 + min(6, last) * ps
                a7 = a0 + min(7, last) * ps
                ob = (gp - ow0 + ow) * m_out
                for nb in range(nbg):
                    m0 = nb * LANES
                    bv = vload_i32(biasp, m0)
                    c0 = bv
                    c1 = bv
                    c2 = bv
                    c3 = bv
                    c4 = bv
                    c5 = bv
                    c6 = bv
                    c7 = bv
                    wb = nb * wblk
                    for j in range(nk):
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
                    # one inlined epilogue in a loop: eight copies compile several times slower
                    vstore(scratch, 0, c0)
                    vstore(scratch, 16, c1)
                    vstore(scratch, 32, c2)
                    vstore(scratch, 48, c3)
                    vstore(scratch, 64, c4)
                    vstore(scratch, 80, c5)
                    vstore(scratch, 96, c6)
                    vstore(scratch, 112, c7)
                    nch = min(LANES, m_out - m0)
                    mfv = simd.vload_f32(mf, m0)
                    miv = simd.vload_i64(mi, m0)
                    s1v = simd.vload_i64(s1, m0)
                    s2v = simd.vload_i64(s2, m0)
                    for r in range(last + 1):
                        codes, k = ep_k._ep16_vec(kind, rnd, vload_i32(scratch, r * LANES), mfv,
                                                  miv, s1v, s2v, zpf, zp, lo, hi, nch)
                        cnt += k
                        ep_k.store16(out, ob + r * m_out + m0, 1, codes, nch)
            gp = end
        return cnt

    @njit(cache=True, parallel=True)
    def rows_par(xp, img, wp_n, ctot, oh_n, ow_n, sh, sw, koff, nbg, m_out, wpk, biasp, mf, mi,
                 s1, s2, zpf, zp, lo, hi, out, total, n_chunks):
        """:func:`rows` on ``n_chunks`` ranges of whole 8-position blocks, one per thread."""
        cnts = np.zeros(n_chunks, dtype=np.int64)
        n_blocks = (total + MR - 1) // MR
        for ch in prange(n_chunks):
            p0 = min(total, ch * n_blocks // n_chunks * MR)
            p1 = min(total, (ch + 1) * n_blocks // n_chunks * MR)
            cnts[ch] = rows(xp, img, wp_n, ctot, oh_n, ow_n, sh, sw, koff, nbg, m_out, wpk,
                            biasp, mf, mi, s1, s2, zpf, zp, lo, hi, out, p0, p1)
        return cnts.sum()

    return rows, rows_par


__all__ = ["MR", "kernels", "koff_table", "spec_of"]
