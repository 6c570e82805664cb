"""Conv and gemm on AMX tiles: the :mod:`simulator.kernels.igemm` VNNI kernel's arithmetic, 16
output positions x 16 output channels per ``tdpbusd``.

Same inputs as the VNNI kernel (the padded NHWC ``uint8`` image ``xp`` of the prepass, the
per-channel constant ``biasp``, the fused epilogue), same exactness argument (module docstring
of :mod:`simulator.kernels.igemm`): every product is ``u8 * s8`` and every lane wraps modulo
2**32, while the static bound puts the true accumulator inside int32.

Work is cut into *units*: ``rows`` (at most 16) consecutive output positions of one output row,
whose input windows start ``sw * ctot`` bytes apart in ``xp`` -- exactly the layout of an AMX
input tile (one window row per tile row, the row stride as the load stride). A row whose width
is not a multiple of ``rows`` ends with a unit that overlaps its predecessor; the overlapping
positions are computed twice (same bits) and stored and counted once. A 1x1 stride-1 conv
without padding sees all positions of the batch as one row (contiguous windows).

The K axis: for every tap (a kernel row of ``kw * cg`` contiguous bytes in the "row run" layout,
or one ``(i, j)`` position) the weights hold ``c4p`` groups of 4 bytes (zero past the real
ones), split into ``n_chunks`` equal chunks of ``chunk4`` groups; one chunk is one tile product
(input tile ``rows x 4*chunk4`` bytes, weight tile ``chunk4 x 64`` bytes). Bytes read past a run
belong to the next pixels or to the slack at the end of ``xp`` and meet zero weights.

Tiles: two units (input tiles 4, 5) x two 16-channel blocks (weight tiles 6, 7) -> accumulator
tiles 0-3; an odd unit or channel block at the end uses the tiles it needs.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from simulator.kernels import amx
from simulator.kernels import epilogue as ep_k
from simulator.kernels.jitcache import specialised
from simulator.kernels.simd import vadd_i32, vload_i32

LANES = 16


def chunking(c4_n):
    """``(n_chunks, chunk4, c4p)``: the K groups of one tap cut into equal tile products of at
    most 16 groups (64 bytes), ``c4p = n_chunks * chunk4 >= c4_n``."""
    n_chunks = max(1, -(-c4_n // 16))
    chunk4 = -(-c4_n // n_chunks)
    return n_chunks, chunk4, n_chunks * chunk4


def kernels(kind, rnd, signed):
    """``(amx_range, amx_par)`` for an epilogue kind and rounding mode (Python ints); ``signed``:
    the input bytes are int8 (``tdpbssd``) instead of uint8 (``tdpbusd``)."""
    return specialised(_make_kernels, int(kind), int(rnd), int(bool(signed)))


@njit(cache=True, inline="always")
def _unit(u, n_blk, rows, oh_n, ow_n, img, sh, wp_n, sw, ctot, m_out):
    """``(first input byte, first output element, first row not computed before)`` of unit
    ``u``: block ``u % n_blk`` of output row ``u // n_blk``; the last block of a row starts at
    ``ow_n - rows`` and overlaps the one before it."""
    row = u // n_blk
    bi = u - row * n_blk
    n = row // oh_n
    oh = row - n * oh_n
    ow0 = min(bi * rows, ow_n - rows)
    return (n * img + (oh * sh * wp_n + ow0 * sw) * ctot, (row * ow_n + ow0) * m_out,
            bi * rows - ow0)


def _make_kernels(kind, rnd, signed):
    @njit(cache=True, inline="always")
    def _finish(out, scratch, so, o_base, r_first, rows, m_out, m0, biasp, mf, mi, s1, s2, zpf,
                zp, lo, hi):
        """Requantize rows ``[r_first, rows)`` of the accumulator tile stored at
        ``scratch[so:]`` (channels ``m0 ..``) into ``out[o_base + r * m_out + m0 ...]``."""
        nch = min(LANES, m_out - m0)
        bv = vload_i32(biasp, m0)
        cnt = 0
        for r in range(r_first, rows):
            codes, k = ep_k.ep16(kind, rnd, vadd_i32(vload_i32(scratch, so + r * LANES), bv),
                                 mf, mi, s1, s2, m0, zpf, zp, lo, hi, nch)
            ep_k.store16(out, o_base + r * m_out + m0, 1, codes, nch)
            cnt += k
        return cnt

    @njit(cache=True)
    def amx_range(xp, img, wp_n, ctot, oh_n, ow_n, sh, sw, taps, c4p, chunk4, n_chunks, nbg,
                  m_out, wpk, biasp, mf, mi, s1, s2, zpf, zp, lo, hi, out, cfg, rows, u0, u1):
        """Units ``[u0, u1)`` (unit ``u``: block ``u % n_blk`` of output row ``u // n_blk``,
        rows counted over the batch); returns the saturation count."""
        n_blk = (ow_n + rows - 1) // rows
        n_taps = taps.shape[0]
        step = sw * ctot
        wtap = c4p * 64
        wnb = n_taps * wtap
        cstep = chunk4 * 4
        wstep = chunk4 * 64
        scratch = np.empty(4 * 16 * LANES, dtype=np.int32)
        cnt = 0
        amx.tile_config(cfg)
        u = u0
        while u < u1:
            two_u = u + 1 < u1
            a0, o0, f0 = _unit(u, n_blk, rows, oh_n, ow_n, img, sh, wp_n, sw, ctot, m_out)
            a1, o1, f1 = a0, o0, rows
            if two_u:
                a1, o1, f1 = _unit(u + 1, n_blk, rows, oh_n, ow_n, img, sh, wp_n, sw, ctot, m_out)
            for nb in range(0, nbg, 2):
                two_n = nb + 1 < nbg
                amx.zero0()
                if two_n:
                    amx.zero1()
                if two_u:
                    amx.zero2()
                    if two_n:
                        amx.zero3()
                wb = nb * wnb
                for t in range(n_taps):
                    ta0 = a0 + taps[t]
                    ta1 = a1 + taps[t]
                    wt = wb + t * wtap
                    for ck in range(n_chunks):
                        amx.load4(xp, ta0 + ck * cstep, step)
                        amx.load6(wpk, wt + ck * wstep, 64)
                        if two_u:
                            amx.load5(xp, ta1 + ck * cstep, step)
                        if two_n:
                            amx.load7(wpk, wt + wnb + ck * wstep, 64)
                        if signed:
                            amx.sdp_0_4_6()
                            if two_u:
                                amx.sdp_2_5_6()
                            if two_n:
                                amx.sdp_1_4_7()
                                if two_u:
                                    amx.sdp_3_5_7()
                        else:
                            amx.dp_0_4_6()
                            if two_u:
                                amx.dp_2_5_6()
                            if two_n:
                                amx.dp_1_4_7()
                                if two_u:
                                    amx.dp_3_5_7()
                amx.store0(scratch, 0, 64)
                if two_n:
                    amx.store1(scratch, 256, 64)
                if two_u:
                    amx.store2(scratch, 512, 64)
                    if two_n:
                        amx.store3(scratch, 768, 64)
                # tile q = 2 * unit + channel block (the store order above); one inlined
                # epilogue in a loop compiles in a third of the time of four copies
                for q in range(4):
                    if (q >= 2 and not two_u) or (q & 1 and not two_n):
                        continue
                    cnt += _finish(out, scratch, q * 256, o1 if q >= 2 else o0,
                                   f1 if q >= 2 else f0, rows, m_out, (nb + (q & 1)) * LANES,
                                   biasp, mf, mi, s1, s2, zpf, zp, lo, hi)
            u += 2
        amx.tile_release()
        return cnt

    @njit(cache=True, parallel=True)
    def amx_par(xp, img, wp_n, ctot, oh_n, ow_n, sh, sw, taps, c4p, chunk4, n_chunks, nbg,
                m_out, wpk, biasp, mf, mi, s1, s2, zpf, zp, lo, hi, out, cfg, rows, n_units,
                n_parts):
        """:func:`amx_range` over all units, cut into ``n_parts`` ranges of whole unit pairs
        (the tile state is per thread: each range configures its own tiles)."""
        n_pairs = (n_units + 1) // 2
        cnts = np.zeros(n_parts, dtype=np.int64)
        for ch in prange(n_parts):
            u0 = ch * n_pairs // n_parts * 2
            u1 = min((ch + 1) * n_pairs // n_parts * 2, n_units)
            cnts[ch] = amx_range(xp, img, wp_n, ctot, oh_n, ow_n, sh, sw, taps, c4p, chunk4,
                                 n_chunks, nbg, m_out, wpk, biasp, mf, mi, s1, s2, zpf, zp, lo,
                                 hi, out, cfg, rows, u0, u1)
        return cnts.sum()

    return amx_range, amx_par


def pad_weights(wpk, n_blocks, n_taps, c4_n, c4p):
    """The VNNI kernel's packed weights ``[block][tap][c4_n][16 channels][4]`` with the group
    axis zero-padded to ``c4p`` (the layout of the AMX weight tiles)."""
    if c4p == c4_n:
        return wpk
    w = wpk.reshape(n_blocks, n_taps, c4_n, 64)
    padded = np.zeros((n_blocks, n_taps, c4p, 64), dtype=wpk.dtype)
    padded[:, :, :c4_n] = w
    return padded.reshape(-1)


__all__ = ["chunking", "kernels", "pad_weights"]
