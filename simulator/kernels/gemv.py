"""Gemm (or 1x1 stride-1 unpadded conv) with a handful of rows: ``vpdpbusd`` over the output
channels, one row at a time.

The VNNI kernel of :mod:`simulator.kernels.igemm` computes blocks of 8 rows and the AMX kernel
tiles of up to 16; with 1-3 rows (a fully connected layer at batch 1) both spend most of their
work on rows that do not exist. Here each row's 4 input bytes are broadcast once and meet the
packed weights of 8 channel blocks (128 output channels) at a time, 8 independent accumulator
chains; the weights are read once per row. Same inputs (the uint8 image of the prepass, the
packed weights and ``biasp`` of ``ConvFast``) and the same exactness argument as the VNNI kernel:
``u8 * s8`` products in wrapping int32 lanes, the static bound puts the true sum in int32.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from simulator.kernels import epilogue as ep_k
from simulator.kernels.jitcache import specialised
from simulator.kernels.simd import vadd_i32, vbcast4, vdpbusd, vload, vload_i32, vstore, vzero

LANES = 16
# a gemm takes this kernel up to this many rows: below that the 8-row VNNI block and the 16-row
# tile compute mostly rows that do not exist (not tuned: 1 row, the batch-1 case, was measured)
MAX_ROWS = 3


def kernels(kind, rnd):
    """The ``gemv_rows`` kernel for an epilogue kind and rounding mode (Python ints)."""
    return specialised(_make_kernels, int(kind), int(rnd))


def _make_kernels(kind, rnd):
    @njit(cache=True, inline="always")
    def _finish(out, o, acc, nb, m_out, biasp, mf, mi, s1, s2, zpf, zp, lo, hi):
        m0 = nb * LANES
        nch = min(LANES, m_out - m0)
        codes, k = ep_k.ep16(kind, rnd, vadd_i32(acc, vload_i32(biasp, m0)), mf, mi, s1, s2,
                             m0, zpf, zp, lo, hi, nch)
        ep_k.store16(out, o + m0, 1, codes, nch)
        return k

    @njit(cache=True)
    def gemv_rows(xp, ctot, c4_n, nbg, m_out, wpk, biasp, mf, mi, s1, s2, zpf, zp, lo, hi, out,
                  n_rows):
        """Rows ``[0, n_rows)`` of ``xp`` (``ctot`` bytes apart); returns the saturation
        count."""
        cnt = 0
        scratch = np.empty(8 * LANES, dtype=np.int32)
        wblk = c4_n * 64
        last = (nbg - 1) * wblk
        for r in range(n_rows):
            xb = r * ctot
            o = r * m_out
            for nb0 in range(0, nbg, 8):
                # blocks past the last one recompute it (never stored): no bounds branches
                w0 = nb0 * wblk
                w1 = min(w0 + wblk, last)
                w2 = min(w0 + 2 * wblk, last)
                w3 = min(w0 + 3 * wblk, last)
                w4 = min(w0 + 4 * wblk, last)
                w5 = min(w0 + 5 * wblk, last)
                w6 = min(w0 + 6 * wblk, last)
                w7 = min(w0 + 7 * wblk, last)
                a0 = vzero()
                a1 = vzero()
                a2 = vzero()
                a3 = vzero()
                a4 = vzero()
                a5 = vzero()
                a6 = vzero()
                a7 = vzero()
                for k4 in range(c4_n):
                    xv = vbcast4(xp, xb + 4 * k4)
                    k = 64 * k4
                    a0 = vdpbusd(a0, xv, vload(wpk, w0 + k))
                    a1 = vdpbusd(a1, xv, vload(wpk, w1 + k))
                    a2 = vdpbusd(a2, xv, vload(wpk, w2 + k))
                    a3 = vdpbusd(a3, xv, vload(wpk, w3 + k))
                    a4 = vdpbusd(a4, xv, vload(wpk, w4 + k))
                    a5 = vdpbusd(a5, xv, vload(wpk, w5 + k))
                    a6 = vdpbusd(a6, xv, vload(wpk, w6 + k))
                    a7 = vdpbusd(a7, xv, vload(wpk, w7 + k))
                # one inlined epilogue in a loop (eight copies took 3x as long to compile)
                vstore(scratch, 0, a0)
                vstore(scratch, 16, a1)
                vstore(scratch, 32, a2)
                vstore(scratch, 48, a3)
                vstore(scratch, 64, a4)
                vstore(scratch, 80, a5)
                vstore(scratch, 96, a6)
                vstore(scratch, 112, a7)
                for j in range(min(8, nbg - nb0)):
                    cnt += _finish(out, o, vload_i32(scratch, 16 * j), nb0 + j, m_out, biasp, mf,
                                   mi, s1, s2, zpf, zp, lo, hi)
        return cnt

    return (gemv_rows,)


__all__ = ["MAX_ROWS", "kernels"]
