"""Float64 kernels for the float reference and calibration runs (not bit-exact hardware models:
those live in :mod:`simulator`). Numba loops where numpy would stream the data many times.

The kernels write into arrays that numpy allocates: numpy asks the kernel for transparent huge
pages on large arrays, numba's own allocator does not, so each new output was first touched
4 KiB at a time (the QAT MobileNetV2's float pass over 512 images: ~160,000 page faults with
numba's allocations, ~25,000 with numpy's; identical results)."""
from __future__ import annotations

import numba
import numpy as np

# below this many multiply-adds the numpy form is about as fast as the kernel, and a first run
# (``mrq demo``, a one-image ``mrq sim``) does not wait seconds for numba to compile the kernel
DEPTHWISE_JIT_MIN_MACS = 1 << 22


def depthwise_conv_nchw(x, w, strides, pads, dilations, oh, ow):
    """Depthwise convolution of float ``x`` [N, C, H, W] with ``w`` [C, KH, KW] (same dtype);
    zero padding (top, left) = pads; output [N, C, OH, OW] in x's dtype. Every output sums its
    taps in order (i, j) starting from 0, one rounding per multiply and per add, in the jitted
    kernel and in the numpy form alike, so both give the same bits."""
    n, c = x.shape[:2]
    if n * c * oh * ow * w.shape[1] * w.shape[2] >= DEPTHWISE_JIT_MIN_MACS:
        return depthwise_conv_nchw_jit(x, w, strides, pads, dilations, oh, ow)
    return depthwise_conv_nchw_numpy(x, w, strides, pads, dilations, oh, ow)


def depthwise_conv_nchw_numpy(x, w, strides, pads, dilations, oh, ow):
    """:func:`depthwise_conv_nchw` as KH*KW whole-array multiply-adds (small inputs)."""
    n, c, h, wd = x.shape
    kh, kw = w.shape[1], w.shape[2]
    sh, sw = strides
    dh, dw = dilations
    top, left = pads
    hp = (oh - 1) * sh + (kh - 1) * dh + 1
    wp = (ow - 1) * sw + (kw - 1) * dw + 1
    buf = np.zeros((n, c, hp, wp), x.dtype)
    y0, y1, x0, x1 = min(top, hp), min(h + top, hp), min(left, wp), min(wd + left, wp)
    if y1 > y0 and x1 > x0:
        buf[:, :, y0:y1, x0:x1] = x[:, :, y0 - top:y1 - top, x0 - left:x1 - left]
    out = np.zeros((n, c, oh, ow), x.dtype)
    for i in range(kh):
        for j in range(kw):
            tap = buf[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            out += w[:, i, j].reshape(1, c, 1, 1) * tap
    return out


def depthwise_conv_nchw_jit(x, w, strides, pads, dilations, oh, ow):
    """:func:`depthwise_conv_nchw` as a parallel loop (large inputs)."""
    out = np.empty((x.shape[0], x.shape[1], oh, ow), x.dtype)
    _depthwise_conv_nchw_into(out, x, w, strides, pads, dilations)
    return out


@numba.njit(cache=True, parallel=True)
def _depthwise_conv_nchw_into(out, x, w, strides, pads, dilations):
    """The depthwise convolution into ``out`` [N, C, OH, OW]. Each plane is copied into a
    zero-padded buffer (one per image, reused across channels), with an unrolled branch-free
    path for 3x3 kernels."""
    n, c, h, wd = x.shape
    oh, ow = out.shape[2], out.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    sh, sw = strides
    dh, dw = dilations
    top, left = pads
    hp = (oh - 1) * sh + (kh - 1) * dh + 1
    wp = (ow - 1) * sw + (kw - 1) * dw + 1
    zero = np.zeros(1, x.dtype)[0]
    three = kh == 3 and kw == 3
    for b in numba.prange(n):
        buf = np.zeros((hp, wp), x.dtype)
        for ch in range(c):
            for yy in range(hp):
                iy = yy - top
                for xx in range(wp):
                    ix = xx - left
                    if 0 <= iy < h and 0 <= ix < wd:
                        buf[yy, xx] = x[b, ch, iy, ix]
            if three:
                w00, w01, w02 = w[ch, 0, 0], w[ch, 0, 1], w[ch, 0, 2]
                w10, w11, w12 = w[ch, 1, 0], w[ch, 1, 1], w[ch, 1, 2]
                w20, w21, w22 = w[ch, 2, 0], w[ch, 2, 1], w[ch, 2, 2]
                for y in range(oh):
                    r0 = buf[y * sh]
                    r1 = buf[y * sh + dh]
                    r2 = buf[y * sh + 2 * dh]
                    for xx in range(ow):
                        c0 = xx * sw
                        c1 = c0 + dw
                        c2 = c1 + dw
                        acc = zero + w00 * r0[c0]
                        acc += w01 * r0[c1]
                        acc += w02 * r0[c2]
                        acc += w10 * r1[c0]
                        acc += w11 * r1[c1]
                        acc += w12 * r1[c2]
                        acc += w20 * r2[c0]
                        acc += w21 * r2[c1]
                        acc += w22 * r2[c2]
                        out[b, ch, y, xx] = acc
            else:
                for y in range(oh):
                    for xx in range(ow):
                        acc = zero
                        for i in range(kh):
                            for j in range(kw):
                                acc += w[ch, i, j] * buf[y * sh + i * dh, xx * sw + j * dw]
                        out[b, ch, y, xx] = acc


def fake_quant_3d(x, scale, zero_point, qmin, qmax, lo, hi):
    """Clamp ``x`` [outer, C, inner] to [lo, hi], round it onto the grid (scale, zero point per
    channel C; round half to even) and clamp to the codes [qmin, qmax]: one pass, a new array.
    Same arithmetic, element by element, as ``(clip(rint(clip(x, lo, hi) / s) + z, qmin, qmax) - z) * s``."""
    out = np.empty(x.shape, x.dtype)
    _fake_quant_3d_into(out, x, scale, zero_point, qmin, qmax, lo, hi)
    return out


@numba.njit(cache=True, parallel=True)
def _fake_quant_3d_into(out, x, scale, zero_point, qmin, qmax, lo, hi):
    outer, c, inner = x.shape
    for job in numba.prange(outer * c):
        o = job // c
        ch = job % c
        s = scale[ch]
        z = zero_point[ch]
        for i in range(inner):
            v = x[o, ch, i]
            if v < lo:
                v = lo
            if v > hi:
                v = hi
            q = np.rint(v / s) + z
            if q < qmin:
                q = qmin
            if q > qmax:
                q = qmax
            out[o, ch, i] = (q - z) * s


def fake_quant_3d_t(xt, scale, zero_point, qmin, qmax, lo, hi):
    """fake_quant_3d of ``xt`` [C, outer, inner] (channel-major, as a convolution computed by one
    matrix product leaves it) written as [outer, C, inner]: the transposition costs no extra pass."""
    out = np.empty((xt.shape[1], xt.shape[0], xt.shape[2]), xt.dtype)
    _fake_quant_3d_t_into(out, xt, scale, zero_point, qmin, qmax, lo, hi)
    return out


@numba.njit(cache=True, parallel=True)
def _fake_quant_3d_t_into(out, xt, scale, zero_point, qmin, qmax, lo, hi):
    c, outer, inner = xt.shape
    for job in numba.prange(outer * c):
        o = job // c
        ch = job % c
        s = scale[ch if scale.size > 1 else 0]
        z = zero_point[ch if zero_point.size > 1 else 0]
        for i in range(inner):
            v = xt[ch, o, i]
            if v < lo:
                v = lo
            if v > hi:
                v = hi
            q = np.rint(v / s) + z
            if q < qmin:
                q = qmin
            if q > qmax:
                q = qmax
            out[o, ch, i] = (q - z) * s


def clamp_3d(x, lo, hi):
    """``x`` clamped to [lo, hi] (a new array); x is [outer, C, inner]."""
    out = np.empty(x.shape, x.dtype)
    _clamp_3d_into(out, x, lo, hi)
    return out


@numba.njit(cache=True, parallel=True)
def _clamp_3d_into(out, x, lo, hi):
    outer, c, inner = x.shape
    for job in numba.prange(outer * c):
        o = job // c
        ch = job % c
        for i in range(inner):
            v = x[o, ch, i]
            if v < lo:
                v = lo
            if v > hi:
                v = hi
            out[o, ch, i] = v


@numba.njit(cache=True, parallel=True)
def quant_sq_errors(values, scales, zero_points, qmins, qmaxs):
    """Mean squared error of rounding float64 ``values`` onto each per-tensor grid
    (scales[k], zero_points[k], codes [qmins[k], qmaxs[k]]); one result per grid."""
    k = scales.size
    n = values.size
    out = np.zeros(k)
    for g in numba.prange(k):
        s = scales[g]
        z = zero_points[g]
        qmin = qmins[g]
        qmax = qmaxs[g]
        acc = 0.0
        for i in range(n):
            v = values[i]
            q = np.rint(v / s) + z
            if q < qmin:
                q = qmin
            if q > qmax:
                q = qmax
            e = (q - z) * s - v
            acc += e * e
        out[g] = acc / n
    return out


@numba.njit(cache=True, parallel=True)
def channel_quant_sq_errors(x, scales, zero_points, qmins, qmaxs):
    """Per channel of ``x`` [N, C, H, W], the mean squared error of rounding its values (as
    float64) onto each per-tensor grid; ``out[k, c]`` for grid ``k``. One pass over the data."""
    n_img, n_ch, height, width = x.shape
    k = scales.size
    out = np.zeros((k, n_ch))
    count = n_img * height * width
    for c in numba.prange(n_ch):
        acc = np.zeros(k)
        for n in range(n_img):
            for h in range(height):
                for w in range(width):
                    v = np.float64(x[n, c, h, w])
                    for g in range(k):
                        s = scales[g]
                        z = zero_points[g]
                        q = np.rint(v / s) + z
                        if q < qmins[g]:
                            q = qmins[g]
                        if q > qmaxs[g]:
                            q = qmaxs[g]
                        e = (q - z) * s - v
                        acc[g] += e * e
        for g in range(k):
            out[g, c] = acc[g] / max(count, 1)
    return out
