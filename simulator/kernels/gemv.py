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

from numba import njit

from simulator.kernels import epilogue as ep_k
from simulator.kernels.jitcache import specialised
from simulator.kernels.simd import vadd_i32, vbcast4, vdpbusd, vload, vload_i32, vzero

LANES = 16
# a gemm takes this kernel up to this many rows (measured on the MLPerf Tiny FC layers: the
# 8-row VNNI block wins from about 4 rows on)
MAX_ROWS = 3


def kernels(kind, rnd):
    """The ``gemv_rows`` kernel for an epilogue kind and rounding mode (Python ints)."""
    return specialised(_make_kernels, int(kind), int(rnd))


def _make_kernels(kind, rnd):
    @njit(cache=True, inline="always")
    def _finish(out, o, acc, nb, nbg, m_out, biasp, mf, mi, s1, s2, zpf, zp, lo, hi):
        if nb >= nbg:
            return 0
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
                cnt += _finish(out, o, a0, nb0, nbg, m_out, biasp, mf, mi, s1, s2, zpf, zp, lo,
                               hi)
                cnt += _finish(out, o, a1, nb0 + 1, nbg, m_out, biasp, mf, mi, s1, s2, zpf, zp,
                               lo, hi)
                cnt += _finish(out, o, a2, nb0 + 2, nbg, m_out, biasp, mf, mi, s1, s2, zpf, zp,
                               lo, hi)
                cnt += _finish(out, o, a3, nb0 + 3, nbg, m_out, biasp, mf, mi, s1, s2, zpf, zp,
                               lo, hi)
                cnt += _finish(out, o, a4, nb0 + 4, nbg, m_out, biasp, mf, mi, s1, s2, zpf, zp,
                               lo, hi)
                cnt += _finish(out, o, a5, nb0 + 5, nbg, m_out, biasp, mf, mi, s1, s2, zpf, zp,
                               lo, hi)
                cnt += _finish(out, o, a6, nb0 + 6, nbg, m_out, biasp, mf, mi, s1, s2, zpf, zp,
                               lo, hi)
                cnt += _finish(out, o, a7, nb0 + 7, nbg, m_out, biasp, mf, mi, s1, s2, zpf, zp,
                               lo, hi)
        return cnt

    return (gemv_rows,)


__all__ = ["MAX_ROWS", "kernels"]
