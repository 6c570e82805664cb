"""NHWC depthwise conv with ``vpdpbusd``: a kernel row's taps packed into the 4 bytes of a lane.

A depthwise channel has nothing to sum across channels, so the VNNI dot product of 4 adjacent
bytes needs the bytes of *one* channel side by side. For kernels at most 4 taps wide, each image
is first rewritten as ``pk[hp, ow, c] = (u[hp, ow*sw], u[hp, ow*sw + dw], u[hp, ow*sw + 2dw],
u[hp, ow*sw + 3dw])`` (channel ``c`` of the padded ``uint8`` image ``u`` of the prepass, the
missing taps 0): the window row that output column ``ow`` needs from input row ``hp``. One
``vpdpbusd`` of that vector with the row's int8 weights ``(w0, w1, w2, 0)`` then adds the row's
products for 16 channels, so a 3x3 window is 3 instructions per 16 outputs (the int16 kernel of
:mod:`simulator.kernels.igemm`, ``_dw3_rows``, needs 9 loads, 9 ``vpmaddwd`` and 9 adds). An
input row is packed once and serves the ``kh`` output rows that read it.

Arithmetic: ``acc = biasp + sum u * ws`` with ``biasp = bias - uzp * sum ws`` per channel, as in
:mod:`simulator.kernels.igemm` (same exactness argument: ``u8 * s8`` products, int32 lanes that
wrap, a static bound that puts the true accumulator in int32). Needs every ``w - wzp`` in int8.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from simulator.kernels import epilogue as ep_k
from simulator.kernels.jitcache import specialised
from simulator.kernels.simd import (vadd_i32, vdpbusd, vload, vload_i32, vload_u8_i32,
                                    vshl_i32, vstore)

LANES = 16


def pack_weights(ws):
    """``[kh][cpad][4]`` int8 from depthwise weights ``ws[C, 1, kh, kw]`` (``kw <= 4``, values
    in int8): channel ``c``'s row ``i`` taps in the 4 bytes of its lane, zeros elsewhere."""
    n_ch, _, kh_n, kw_n = ws.shape
    cpad = (n_ch + LANES - 1) // LANES * LANES
    w4 = np.zeros((kh_n, cpad, 4), dtype=np.int8)
    w4[:, :n_ch, :kw_n] = np.transpose(ws[:, 0], (1, 0, 2))
    return w4.reshape(-1)


def kernels(kind, rnd):
    """``(dw_images, dw_par)`` for an epilogue kind and rounding mode (Python ints)."""
    return specialised(_make_kernels, int(kind), int(rnd))


def _make_kernels(kind, rnd):
    @njit(cache=True)
    def dw_images(xp, img, wp_n, n_ch, hp_n, oh_n, ow_n, sh, sw, dh, dw, kh_n, kw_n, w4, biasp,
                  mf, mi, s1, s2, zpf, zp, lo, hi, out, n0, n1):
        """Images ``[n0, n1)`` of the padded image ``xp``; returns the saturation count."""
        cpad = (n_ch + LANES - 1) // LANES * LANES
        rowb = ow_n * cpad * 4
        pk = np.empty(hp_n * rowb, dtype=np.uint8)
        tap = dw * n_ch
        cnt = 0
        for n in range(n0, n1):
            for hp in range(hp_n):
                for ow in range(ow_n):
                    src = n * img + (hp * wp_n + ow * sw) * n_ch
                    dst = hp * rowb + ow * cpad * 4
                    for c0 in range(0, cpad, LANES):
                        # channels past n_ch read the next pixel (or the prepass slack):
                        # their lanes meet zero weights and are never stored
                        v = vload_u8_i32(xp, src + c0)
                        if kw_n > 1:
                            v = vadd_i32(v, vshl_i32(vload_u8_i32(xp, src + tap + c0), 8))
                        if kw_n > 2:
                            v = vadd_i32(v, vshl_i32(vload_u8_i32(xp, src + 2 * tap + c0), 16))
                        if kw_n > 3:
                            v = vadd_i32(v, vshl_i32(vload_u8_i32(xp, src + 3 * tap + c0), 24))
                        vstore(pk, dst + 4 * c0, v)
            for c0 in range(0, n_ch, LANES):
                nch = min(LANES, n_ch - c0)
                bv = vload_i32(biasp, c0)
                for oh in range(oh_n):
                    ob = (n * oh_n + oh) * ow_n * n_ch + c0
                    rb = oh * sh * rowb + 4 * c0
                    for ow in range(ow_n):
                        acc = bv
                        a = rb + ow * cpad * 4
                        for i in range(kh_n):
                            acc = vdpbusd(acc, vload(pk, a + i * dh * rowb),
                                          vload(w4, 4 * (i * cpad + c0)))
                        codes, k = ep_k.ep16(kind, rnd, acc, mf, mi, s1, s2, c0, zpf, zp, lo,
                                             hi, nch)
                        ep_k.store16(out, ob + ow * n_ch, 1, codes, nch)
                        cnt += k
        return cnt

    @njit(cache=True, parallel=True)
    def dw_par(xp, img, wp_n, n_ch, hp_n, oh_n, ow_n, sh, sw, dh, dw, kh_n, kw_n, w4, biasp, mf,
               mi, s1, s2, zpf, zp, lo, hi, out, n_img, n_chunks):
        cnts = np.zeros(n_chunks, dtype=np.int64)
        for ch in prange(n_chunks):
            cnts[ch] = dw_images(xp, img, wp_n, n_ch, hp_n, oh_n, ow_n, sh, sw, dh, dw, kh_n,
                                 kw_n, w4, biasp, mf, mi, s1, s2, zpf, zp, lo, hi, out,
                                 ch * n_img // n_chunks, (ch + 1) * n_img // n_chunks)
        return cnts.sum()

    return dw_images, dw_par


__all__ = ["kernels", "pack_weights"]
