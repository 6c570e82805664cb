"""The dense conv / gemm kernel of the ``portable`` path: int16 pair products on any 64-bit host.

:mod:`simulator.kernels.igemm` runs its dense micro-kernel on ``vpdpbusd`` (u8 x s8, four
products per int32 lane), an AVX-512 VNNI instruction. Hosts without it (AVX2-only x86, ARM)
run this kernel instead: same padded NHWC image, same weight order, same fused epilogue
(:mod:`simulator.kernels.epilogue`), same output, but the image holds ``u`` as int16 and the
weights ``ws = w - wzp`` as int16, and the inner product is
:func:`simulator.kernels.simd.vmaddwd` (``acc[j] += a[2j] * w[2j] + a[2j+1] * w[2j+1]``, int16 x
int16 -> int32): ``vpmaddwd`` on x86 (AVX2 or AVX-512BW; LLVM fuses it with the add into
``vpdpwssd`` where the CPU has that), widening multiplies elsewhere (NEON ``smull``/``smlal``).

Exactness, the igemm argument with other operand types:

- ``u`` is in ``[0, 255]`` and every weight fits int16 (:func:`usable_weights`), so each product
  ``|u * ws| <= 255 * 32768`` and each pair sum are exact int32 values (``vpmaddwd`` only
  overflows for two ``-32768 * -32768`` products, impossible with ``u >= 0``);
- the lane additions wrap modulo 2**32, so the int32 result is congruent to the true
  accumulator, and the static bound of ``ConvFast`` puts the true accumulator in int32: the
  wrapped result is the accumulator. No zero-point split is needed: uint8 weights with a zero
  point fit int16 as they are.

Weight layout (:func:`pack_pairs`): the VNNI order ``[group][block of 16 channels][tap][k4][lane
16][4 channels]`` with each ``[lane][4]`` block stored as two vectors ``[p][lane][2]`` (channels
``4*k4 + 2p``, ``4*k4 + 2p + 1``), so one 32-bit broadcast of the image (two int16 channels)
meets one 64-byte weight vector.

Positions are taken ``MR = 4`` at a time on AVX2 and NEON targets (4 accumulators of 16 int32
lanes are 8 AVX2 registers, which leaves room for the weights and the broadcast) and 8 at a time
on AVX-512 targets (two ``MR`` blocks per tile: 8 independent multiply-add chains, each weight
load feeding 8 of them; measured 5-25% faster than 4 on Zen 4, most on narrow inputs;
:func:`wide_target`). A step with at most :data:`MAX_ROWS` output positions takes them one at a
time instead (``_rows``), unless it is a fully connected layer whose weights fit int8:
:mod:`simulator.kernels.portable_gemv` reads those as int8, half the bytes. (Compiled for
AVX-512, this kernel's inner loop is nothing but weight loads and ``vpdpwssd`` with broadcast
operands: 32 products per instruction, half of the VNNI kernels' ``vpdpbusd``;
``bench/portable_kernels.py`` measures both.)
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from simulator.capabilities import target_features
from simulator.kernels import epilogue as ep_k
from simulator.kernels.jitcache import specialised
from simulator.kernels.simd import (
    vadd_i32,
    vbcast4,
    vload,
    vload_i32,
    vmaddwd,
    vstore,
    vzero,
)

MR = 4
# up to this many output positions: one at a time (``_rows``) rather than a 4-row block
MAX_ROWS = 3
LANES = 16
IMAGE_DTYPE = "int16"
_INT16_MIN = -(2**15)
_INT16_MAX = 2**15 - 1


def wide_target() -> bool:
    """Whether the target numba generates code for has 32 vector registers of 16 int32 lanes
    (AVX-512: :func:`simulator.capabilities.target_features`). The portable kernels size their
    register tiles by it: elsewhere a 16-lane vector takes 2 of AVX2's 16 registers (4 of
    NEON's 32)."""
    return bool(target_features().get("avx512f"))


def usable_weights(wmin: int, wmax: int) -> bool:
    """Whether weights ``ws`` with this range fit the kernel's int16 weight type."""
    return _INT16_MIN <= int(wmin) and int(wmax) <= _INT16_MAX


def pack_pairs(wpk4):
    """int16 weights in this kernel's order from ``wpk4``: the VNNI kernel's packed weights
    (any integer dtype, values fitting int16, flat, a multiple of 64 long: ``[lane 16][4]``
    blocks)."""
    blocks = np.asarray(wpk4).reshape(-1, LANES, 2, 2)
    return np.ascontiguousarray(blocks.transpose(0, 2, 1, 3)).reshape(-1).astype(np.int16)


def kernels(kind, rnd):
    """``(blocks, blocks_par, rows)`` specialised for an epilogue kind and rounding mode (Python
    ints), compiled on first use; the tile height follows the target's vector registers."""
    return specialised(_make_kernels, int(kind), int(rnd), wide_target())


def _make_kernels(kind, rnd, wide):
    # positions per tile: AVX-512's 32 registers hold 8 accumulators of 16 lanes (two MR blocks
    # at once: 8 independent multiply-add chains, each weight load feeding 8 of them); AVX2's
    # 16 registers (NEON's 32 of 4 lanes) hold 4 without spilling
    tile = 2 * MR if wide else MR

    @njit(cache=True)
    def _blocks(xp, img, wp_n, ctot, n_pix, ow_n, sh, sw, taps, c4_n, cgp, n_groups, nbg, mg,
                m_out, wpk, biasp, mf, mi, s1, s2, zpf, zp, lo, hi, out, nchw_out, total,
                b0, b1):
        """Output blocks ``[b0, b1)`` (block ``b`` = flat output positions ``b*MR ..
        b*MR+MR-1``) from the int16 image ``xp``, ``tile`` positions at a time; returns the
        saturation count."""
        scratch = np.empty(tile * LANES, dtype=np.int32)
        mpad = (m_out + LANES - 1) // LANES * LANES + LANES
        stage = np.empty(tile * mpad if nchw_out else 1, dtype=np.int32)
        base = np.empty(tile, dtype=np.int64)
        obase = np.empty(tile, dtype=np.int64)
        n_taps = taps.shape[0]
        cnt = 0
        # the (image, row, column) of flat output position gp, advanced without divisions
        gp = b0 * MR
        end = min(b1 * MR, total)
        n = gp // n_pix
        p = gp - n * n_pix
        oh = p // ow_n
        ow = p - oh * ow_n
        while gp < end:
            n_valid = min(tile, end - gp)
            for r in range(tile):
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
                a4 = base[4 % tile] + goff
                a5 = base[5 % tile] + goff
                a6 = base[6 % tile] + goff
                a7 = base[7 % tile] + goff
                for nb in range(nbg):
                    c0 = vzero()
                    c1 = vzero()
                    c2 = vzero()
                    c3 = vzero()
                    c4 = vzero()
                    c5 = vzero()
                    c6 = vzero()
                    c7 = vzero()
                    # int16 elements: 4 channels x 16 lanes per k4 step
                    wb = (g * nbg + nb) * n_taps * c4_n * 64
                    for t in range(n_taps):
                        to = taps[t]
                        for k4 in range(c4_n):
                            o = to + 4 * k4
                            wv = vload(wpk, wb)
                            c0 = vmaddwd(c0, vbcast4(xp, a0 + o), wv)
                            c1 = vmaddwd(c1, vbcast4(xp, a1 + o), wv)
                            c2 = vmaddwd(c2, vbcast4(xp, a2 + o), wv)
                            c3 = vmaddwd(c3, vbcast4(xp, a3 + o), wv)
                            if wide:
                                c4 = vmaddwd(c4, vbcast4(xp, a4 + o), wv)
                                c5 = vmaddwd(c5, vbcast4(xp, a5 + o), wv)
                                c6 = vmaddwd(c6, vbcast4(xp, a6 + o), wv)
                                c7 = vmaddwd(c7, vbcast4(xp, a7 + o), wv)
                            wv = vload(wpk, wb + 32)
                            c0 = vmaddwd(c0, vbcast4(xp, a0 + o + 2), wv)
                            c1 = vmaddwd(c1, vbcast4(xp, a1 + o + 2), wv)
                            c2 = vmaddwd(c2, vbcast4(xp, a2 + o + 2), wv)
                            c3 = vmaddwd(c3, vbcast4(xp, a3 + o + 2), wv)
                            if wide:
                                c4 = vmaddwd(c4, vbcast4(xp, a4 + o + 2), wv)
                                c5 = vmaddwd(c5, vbcast4(xp, a5 + o + 2), wv)
                                c6 = vmaddwd(c6, vbcast4(xp, a6 + o + 2), wv)
                                c7 = vmaddwd(c7, vbcast4(xp, a7 + o + 2), wv)
                            wb += 64
                    vstore(scratch, 0, c0)
                    vstore(scratch, 16, c1)
                    vstore(scratch, 32, c2)
                    vstore(scratch, 48, c3)
                    if wide:
                        vstore(scratch, 64, c4)
                        vstore(scratch, 80, c5)
                        vstore(scratch, 96, c6)
                        vstore(scratch, 112, c7)
                    m0 = g * mg + nb * LANES
                    nch = min(LANES, mg - nb * LANES)
                    bv = vload_i32(biasp, m0)
                    for r in range(n_valid):
                        accv = vadd_i32(vload_i32(scratch, r * LANES), bv)
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
                        out[np.uint64(obase[r] + m * n_pix)] = stage[np.uint64(r * mpad + m)]
        return cnt

    @njit(cache=True)
    def _rows(xp, img, wp_n, ctot, n_pix, ow_n, sh, sw, taps, c4_n, cgp, n_groups, nbg, mg,
              m_out, wpk, biasp, mf, mi, s1, s2, zpf, zp, lo, hi, out, nchw_out, total, b0,
              b1):
        """Output positions ``[b0, b1)`` one at a time (a batch-1 fully connected layer:
        the 4-row block would compute three positions that do not exist); four accumulator
        chains (two pairs x even / odd ``k4``) keep the multiply-adds independent. Returns the
        saturation count."""
        n_taps = taps.shape[0]
        cnt = 0
        for gp in range(b0, b1):
            n = gp // n_pix
            p = gp - n * n_pix
            oh = p // ow_n
            ow = p - oh * ow_n
            base = n * img + (oh * sh * wp_n + ow * sw) * ctot
            obase = n * m_out * n_pix + p if nchw_out else gp * m_out
            ostride = n_pix if nchw_out else 1
            for g in range(n_groups):
                a = base + g * cgp
                for nb in range(nbg):
                    c0 = vzero()
                    c1 = vzero()
                    c2 = vzero()
                    c3 = vzero()
                    wb = (g * nbg + nb) * n_taps * c4_n * 64
                    for t in range(n_taps):
                        o = a + taps[t]
                        k4 = 0
                        while k4 + 1 < c4_n:
                            c0 = vmaddwd(c0, vbcast4(xp, o), vload(wpk, wb))
                            c1 = vmaddwd(c1, vbcast4(xp, o + 2), vload(wpk, wb + 32))
                            c2 = vmaddwd(c2, vbcast4(xp, o + 4), vload(wpk, wb + 64))
                            c3 = vmaddwd(c3, vbcast4(xp, o + 6), vload(wpk, wb + 96))
                            o += 8
                            wb += 128
                            k4 += 2
                        if k4 < c4_n:
                            c0 = vmaddwd(c0, vbcast4(xp, o), vload(wpk, wb))
                            c1 = vmaddwd(c1, vbcast4(xp, o + 2), vload(wpk, wb + 32))
                            wb += 64
                    m0 = g * mg + nb * LANES
                    nch = min(LANES, mg - nb * LANES)
                    accv = vadd_i32(vadd_i32(c0, c1), vadd_i32(c2, c3))
                    codes, k = ep_k.ep16(kind, rnd, vadd_i32(accv, vload_i32(biasp, m0)), mf,
                                         mi, s1, s2, m0, zpf, zp, lo, hi, nch)
                    cnt += k
                    ep_k.store16(out, obase + m0 * ostride, ostride, codes, nch)
        return cnt

    @njit(cache=True, parallel=True)
    def _blocks_par(xp, img, wp_n, ctot, n_pix, ow_n, sh, sw, taps, c4_n, cgp, n_groups, nbg,
                    mg, m_out, wpk, biasp, mf, mi, s1, s2, zpf, zp, lo, hi, out, nchw_out,
                    total, n_blocks, n_chunks):
        cnts = np.zeros(n_chunks, dtype=np.int64)
        for ch in prange(n_chunks):
            b0 = ch * n_blocks // n_chunks
            b1 = (ch + 1) * n_blocks // n_chunks
            cnts[ch] = _blocks(xp, img, wp_n, ctot, n_pix, ow_n, sh, sw, taps, c4_n, cgp,
                               n_groups, nbg, mg, m_out, wpk, biasp, mf, mi, s1, s2, zpf, zp,
                               lo, hi, out, nchw_out, total, b0, b1)
        return cnts.sum()

    return _blocks, _blocks_par, _rows


__all__ = ["IMAGE_DTYPE", "MAX_ROWS", "MR", "kernels", "pack_pairs", "usable_weights",
           "wide_target"]
