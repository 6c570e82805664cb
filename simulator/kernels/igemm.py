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
- The requantization of :mod:`simulator.kernels.epilogue` is applied to ``dot + biasp`` while the
  tile is in cache, and the output is written in the step's layout and dtype.

The gemm ``a[R, K] @ w[K, N]`` runs as a 1x1 convolution over an ``R x 1`` image. Depthwise
convolutions (one input channel per group, one output channel per group) use a portable kernel
vectorized over channels (products of at most 255 * 128, nine of them, in int32).

Work is split into contiguous ranges of blocks of ``MR = 8`` output positions (batch and pixels
flattened); each range is owned by one thread, so results do not depend on the thread count.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from simulator.kernels import epilogue as ep_k
from simulator.kernels import simd
from simulator.kernels.simd import vbcast4, vdpbusd, vload, vstore, vzero

MR = 8
LANES = 16
_INT32_LIMIT = 2**31 - 1
# below this many multiply-accumulates a step runs on the calling thread only
PARALLEL_MIN_MACS = 4_000_000


# --------------------------------------------------------------------------------------------
# Padded NHWC uint8 copy of the input
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _prepass_images(x, nchw, pt, pl, hp_n, wp_n, n_groups, cg, cgp, ctot, flip, padval, xp,
                    n0, n1):
    """Fill images ``[n0, n1)`` of ``xp`` (flat, [N, Hp, Wp, Ctot]) from ``x``; returns the
    minimum and maximum input code of those images."""
    if nchw:
        height = x.shape[2]
        width = x.shape[3]
    else:
        height = x.shape[1]
        width = x.shape[2]
    img = hp_n * wp_n * ctot
    pad8 = np.uint8(padval)
    mn = np.int64(1) << 40
    mx = -mn
    for n in range(n0, n1):
        ib = n * img
        # border rows / columns and channel padding
        for hh in range(hp_n):
            inside_h = pt <= hh < pt + height
            for ww in range(wp_n):
                o = ib + (hh * wp_n + ww) * ctot
                if inside_h and pl <= ww < pl + width:
                    if cgp != cg:
                        for g in range(n_groups):
                            for c in range(cg, cgp):
                                xp[o + g * cgp + c] = 0
                else:
                    for c in range(ctot):
                        xp[o + c] = pad8
        if nchw:
            for g in range(n_groups):
                for c in range(cg):
                    ci = g * cg + c
                    for h in range(height):
                        o = ib + ((h + pt) * wp_n + pl) * ctot + g * cgp + c
                        for w in range(width):
                            v = np.int64(x[n, ci, h, w])
                            mn = min(mn, v)
                            mx = max(mx, v)
                            xp[o + w * ctot] = np.uint8(v + flip)
        else:
            for h in range(height):
                for w in range(width):
                    o = ib + ((h + pt) * wp_n + (w + pl)) * ctot
                    for g in range(n_groups):
                        for c in range(cg):
                            v = np.int64(x[n, h, w, g * cg + c])
                            mn = min(mn, v)
                            mx = max(mx, v)
                            xp[o + g * cgp + c] = np.uint8(v + flip)
    return mn, mx


@njit(cache=True, parallel=True)
def _prepass_par(x, nchw, pt, pl, hp_n, wp_n, n_groups, cg, cgp, ctot, flip, padval, xp,
                 n_chunks):
    n_img = x.shape[0]
    mins = np.zeros(n_chunks, dtype=np.int64)
    maxs = np.zeros(n_chunks, dtype=np.int64)
    for ch in prange(n_chunks):
        n0 = ch * n_img // n_chunks
        n1 = (ch + 1) * n_img // n_chunks
        mn, mx = _prepass_images(x, nchw, pt, pl, hp_n, wp_n, n_groups, cg, cgp, ctot, flip,
                                 padval, xp, n0, n1)
        mins[ch] = mn
        maxs[ch] = mx
    return mins.min(), maxs.max()


# --------------------------------------------------------------------------------------------
# VNNI micro-kernel: MR output positions x 16 output channels
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _vnni_blocks(xp, img, wp_n, ctot, n_pix, ow_n, sh, sw, taps, c4_n, cgp, n_groups, nbg, mg,
                 m_out, wpk, biasp, kind, rnd, mf, mi, s1, s2, zpf, zp, lo, hi, out, nchw_out,
                 total, b0, b1):
    """Output blocks ``[b0, b1)`` (block ``b`` = flat output positions ``b*MR .. b*MR+MR-1``);
    returns the saturation count."""
    scratch = np.empty(MR * LANES, dtype=np.int32)
    base = np.empty(MR, dtype=np.int64)
    obase = np.empty(MR, dtype=np.int64)
    n_taps = taps.shape[0]
    ostride = n_pix if nchw_out else 1
    cnt = 0
    for b in range(b0, b1):
        g0 = b * MR
        n_valid = min(MR, total - g0)
        for r in range(MR):
            gp = min(g0 + r, total - 1)
            n = gp // n_pix
            p = gp - n * n_pix
            oh = p // ow_n
            ow = p - oh * ow_n
            base[r] = n * img + (oh * sh * wp_n + ow * sw) * ctot
            obase[r] = n * m_out * n_pix + p if nchw_out else gp * m_out
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
            for nb in range(nbg):
                c0 = vzero()
                c1 = vzero()
                c2 = vzero()
                c3 = vzero()
                c4 = vzero()
                c5 = vzero()
                c6 = vzero()
                c7 = vzero()
                wb = (g * nbg + nb) * n_taps * c4_n * 64
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
                vstore(scratch, 0, c0)
                vstore(scratch, 16, c1)
                vstore(scratch, 32, c2)
                vstore(scratch, 48, c3)
                vstore(scratch, 64, c4)
                vstore(scratch, 80, c5)
                vstore(scratch, 96, c6)
                vstore(scratch, 112, c7)
                m0 = g * mg + nb * LANES
                nch = min(LANES, mg - nb * LANES)
                for r in range(n_valid):
                    cnt += ep_k.store_row(scratch, r * LANES, biasp, m0, nch, kind, rnd, mf, mi,
                                          s1, s2, zpf, zp, lo, hi, out, obase[r] + m0 * ostride,
                                          ostride)
    return cnt


@njit(cache=True, parallel=True)
def _vnni_par(xp, img, wp_n, ctot, n_pix, ow_n, sh, sw, taps, c4_n, cgp, n_groups, nbg, mg,
              m_out, wpk, biasp, kind, rnd, mf, mi, s1, s2, zpf, zp, lo, hi, out, nchw_out,
              total, n_blocks, n_chunks):
    cnts = np.zeros(n_chunks, dtype=np.int64)
    for ch in prange(n_chunks):
        b0 = ch * n_blocks // n_chunks
        b1 = (ch + 1) * n_blocks // n_chunks
        cnts[ch] = _vnni_blocks(xp, img, wp_n, ctot, n_pix, ow_n, sh, sw, taps, c4_n, cgp,
                                n_groups, nbg, mg, m_out, wpk, biasp, kind, rnd, mf, mi, s1, s2,
                                zpf, zp, lo, hi, out, nchw_out, total, b0, b1)
    return cnts.sum()


# --------------------------------------------------------------------------------------------
# Depthwise (one input and one output channel per group), vectorized over channels
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _dw_range(xp, img, wp_n, n_ch, n_pix, ow_n, sh, sw, taps, w32, biasp, kind, rnd, mf, mi, s1,
              s2, zpf, zp, lo, hi, out, nchw_out, p0, p1):
    acc = np.empty(n_ch, dtype=np.int32)
    n_taps = taps.shape[0]
    ostride = n_pix if nchw_out else 1
    cnt = 0
    for gp in range(p0, p1):
        n = gp // n_pix
        p = gp - n * n_pix
        oh = p // ow_n
        ow = p - oh * ow_n
        base = n * img + (oh * sh * wp_n + ow * sw) * n_ch
        for c in range(n_ch):
            acc[c] = 0
        for t in range(n_taps):
            src = base + taps[t]
            wo = t * n_ch
            for c in range(n_ch):
                acc[c] = np.int32(acc[c] + np.int32(xp[src + c]) * w32[wo + c])
        ob = n * n_ch * n_pix + p if nchw_out else gp * n_ch
        cnt += ep_k.store_row(acc, 0, biasp, 0, n_ch, kind, rnd, mf, mi, s1, s2, zpf, zp, lo, hi,
                              out, ob, ostride)
    return cnt


@njit(cache=True, parallel=True)
def _dw_par(xp, img, wp_n, n_ch, n_pix, ow_n, sh, sw, taps, w32, biasp, kind, rnd, mf, mi, s1,
            s2, zpf, zp, lo, hi, out, nchw_out, total, n_chunks):
    cnts = np.zeros(n_chunks, dtype=np.int64)
    for ch in prange(n_chunks):
        p0 = ch * total // n_chunks
        p1 = (ch + 1) * total // n_chunks
        cnts[ch] = _dw_range(xp, img, wp_n, n_ch, n_pix, ow_n, sh, sw, taps, w32, biasp, kind,
                             rnd, mf, mi, s1, s2, zpf, zp, lo, hi, out, nchw_out, p0, p1)
    return cnts.sum()


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
        self.usable = (ws64.size > 0 and int(ws64.min()) >= -128 and int(ws64.max()) <= 127
                       and int(self.sumabs.max()) * 255 <= _INT32_LIMIT)
        if self.ep.acc_limit is not None and self.ep.acc_limit < _INT32_LIMIT:
            self.usable = False  # the fused int epilogue needs |acc| < 2**31 to be exact
        if not self.depthwise and not simd.ENABLED:
            self.usable = False
        self._colsum = colsum
        self._biasp = {}
        if not self.usable:
            return
        self.mg = m_out // group
        if self.depthwise:
            self.cgp = 1
            self.ctot = group
            self.w32 = np.ascontiguousarray(
                ws64.reshape(m_out, kh_n * kw_n).T.astype(np.int32)).reshape(-1)
        else:
            self.cgp = (cg + 3) // 4 * 4
            self.ctot = group * self.cgp
            self.nbg = (self.mg + LANES - 1) // LANES
            pk = np.zeros((group, self.nbg * LANES, self.cgp, kh_n, kw_n), dtype=np.int8)
            pk[:, :self.mg, :cg] = ws64.reshape(group, self.mg, cg, kh_n, kw_n)
            pk = pk.reshape(group, self.nbg, LANES, self.cgp // 4, 4, kh_n, kw_n)
            self.wpk = np.ascontiguousarray(pk.transpose(0, 1, 5, 6, 3, 2, 4)).reshape(-1)
        self._geom = {}

    def _biasp_for(self, flip):
        bp = self._biasp.get(flip)
        if bp is None:
            uzp = self.xzp + flip
            bp = np.ascontiguousarray(self.bias - np.int64(uzp) * self._colsum)
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
            taps = np.array([(i * self.dh * wp_n + j * self.dw) * self.ctot
                             for i in range(self.kh) for j in range(self.kw)], dtype=np.int64)
            geo = (oh_n, ow_n, hp_n, wp_n, taps)
            self._geom[key] = geo
        return geo

    def run(self, x):
        """``(out, n_sat)`` for the 4-D input ``x`` in the step layout, or ``None``."""
        if not self.usable or x.dtype.name not in self.x_dtypes or x.ndim != 4:
            return None
        if self.nchw:
            n_img, n_in, height, width = x.shape
        else:
            n_img, height, width, n_in = x.shape
        if n_in != self.cg * self.group or n_img == 0:
            return None
        geo = self._geometry(height, width)
        if geo is None:
            return None
        oh_n, ow_n, hp_n, wp_n, taps = geo
        flip = 128 if x.dtype == np.int8 else 0
        uzp = self.xzp + flip
        if not 0 <= uzp <= 255:
            return None
        img = hp_n * wp_n * self.ctot
        xp = np.empty(n_img * img, dtype=np.uint8)
        macs = n_img * oh_n * ow_n * self.m_out * self.cg * self.kh * self.kw
        threads = _threads()
        parallel = threads > 1 and macs >= PARALLEL_MIN_MACS
        x = np.ascontiguousarray(x)
        args = (x, self.nchw, self.pt, self.pl, hp_n, wp_n, self.group, self.cg, self.cgp,
                self.ctot, flip, uzp, xp)
        if parallel and n_img > 1:
            xmin, xmax = _prepass_par(*args, min(n_img, threads))
        else:
            xmin, xmax = _prepass_images(*args, 0, n_img)
        x_absmax = max(abs(int(xmin) - self.xzp), abs(int(xmax) - self.xzp))
        bound = int((self.bias_abs + self.sumabs * x_absmax).max())
        if bound > self.acc_hi:
            return None
        ep = self.ep
        if ep.acc_limit is not None and bound > ep.acc_limit:
            return None
        biasp = self._biasp_for(flip)
        n_pix = oh_n * ow_n
        total = n_img * n_pix
        if self.nchw:
            out = np.empty((n_img, self.m_out, oh_n, ow_n), dtype=self.out_dtype)
        else:
            out = np.empty((n_img, oh_n, ow_n, self.m_out), dtype=self.out_dtype)
        flat = out.reshape(-1)
        if self.depthwise:
            common = (xp, img, wp_n, self.ctot, n_pix, ow_n, self.sh, self.sw, taps, self.w32,
                      biasp) + ep.args() + (flat, self.nchw)
            if parallel:
                n_sat = _dw_par(*common, total, threads * 4)
            else:
                n_sat = _dw_range(*common, 0, total)
        else:
            n_blocks = (total + MR - 1) // MR
            common = (xp, img, wp_n, self.ctot, n_pix, ow_n, self.sh, self.sw, taps,
                      self.cgp // 4, self.cgp, self.group, self.nbg, self.mg, self.m_out,
                      self.wpk, biasp) + ep.args() + (flat, self.nchw, total)
            if parallel:
                n_sat = _vnni_par(*common, n_blocks, min(n_blocks, threads * 4))
            else:
                n_sat = _vnni_blocks(*common, 0, n_blocks)
        return out, int(n_sat)


__all__ = ["ConvFast", "MR", "PARALLEL_MIN_MACS"]
