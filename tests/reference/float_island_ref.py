"""Slow scalar references for the float-island kernels (simulator/kernels/ort_eltwise.py),
written after ORT's kernels element by element: MLAS's global average pool and softmax
summation orders, and a max pool by explicit window loops. float32 scalars throughout, so each
``+`` is one float32 rounding."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .pool_ref import out_size

f32 = np.float32


def global_average_pool(x, order):
    """Per channel: ``mlas`` four lane sums (element i into lane i % 4 while 4 remain), lanes
    ``(l0 + l2) + (l1 + l3)``, the tail one by one; ``nchwc`` the plane in order; / count."""
    n_b, n_c = x.shape[:2]
    out = np.zeros((n_b, n_c), f32)
    for n in range(n_b):
        for c in range(n_c):
            plane = [f32(v) for v in x[n, c].reshape(-1)]
            if order == "nchwc":
                total = f32(0.0)
                for v in plane:
                    total = f32(total + v)
            else:
                lanes = [f32(0.0)] * 4
                body = len(plane) - len(plane) % 4
                for i in range(body):
                    lanes[i % 4] = f32(lanes[i % 4] + plane[i])
                total = f32(f32(lanes[0] + lanes[2]) + f32(lanes[1] + lanes[3]))
                for v in plane[body:]:
                    total = f32(total + v)
            out[n, c] = f32(total / f32(len(plane)))
    return out.reshape((n_b, n_c) + (1,) * (x.ndim - 2))


def softmax_row_sum(exps, isa="avx512f"):
    """The row sum of MLAS's softmax: 16 (AVX-512F) or 8 (FMA3) lane sums (element i into lane
    i % lanes, in order); AVX-512F then adds lanes j and j + 8; then the two horizontal adds
    and the final add."""
    n = 16 if isa == "avx512f" else 8
    lanes = [f32(0.0)] * n
    for i, v in enumerate(exps):
        lanes[i % n] = f32(lanes[i % n] + f32(v))
    s = [f32(lanes[j + 8] + lanes[j]) for j in range(8)] if n == 16 else lanes
    h = [f32(s[0] + s[1]), f32(s[2] + s[3]), f32(s[4] + s[5]), f32(s[6] + s[7])]
    return f32(f32(h[0] + h[1]) + f32(h[2] + h[3]))


def round_f32(q: Fraction) -> np.float32:
    """The float32 nearest the exact rational ``q``, ties to even (subnormals included)."""
    c = f32(float(q))
    best = c
    for cand in (np.nextafter(c, f32(-np.inf)), np.nextafter(c, f32(np.inf))):
        if not np.isfinite(cand):
            continue
        d_best, d_cand = abs(Fraction(float(best)) - q), abs(Fraction(float(cand)) - q)
        if d_cand < d_best or (d_cand == d_best and int(cand.view(np.int32)) % 2 == 0):
            best = cand
    return f32(best)


def fma(a, b, c) -> np.float32:
    """float32 ``a * b + c`` with one rounding, in exact rationals."""
    return round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def sum_exp_term(v, isa="avx512f") -> np.float32:
    """One lane of MLAS's sum-exp kernel for a finite ``v <= 0`` (a max-shifted input): clamp
    (AVX-512F at -103.972084, FMA3 at -88.3762627), ``m = round(v / ln2)`` by the 1.5 * 2^23
    bias, two FMAs of range reduction, the polynomial by FMAs, then ``p * 2^m`` rounded once;
    FMA3 builds 2^m from exponent bits, which for m = -127 are those of 0.0f."""
    lower = f32(-103.9720840454) if isa == "avx512f" else f32(-88.3762626647949)
    bias = f32(12582912.0)
    v = max(lower, f32(v))
    biased = fma(v, f32(1.44269504088896341), bias)
    m = f32(biased - bias)
    r = fma(m, f32(-6.93145752e-1), v)
    r = fma(m, f32(-1.42860677e-6), r)
    p = f32(float.fromhex("0x1.694000p-10"))
    for h in ("0x1.125edcp-7", "0x1.555b5ap-5", "0x1.555450p-3", "0x1.fffff6p-2", "0x1p0", "0x1p0"):
        p = fma(p, r, f32(float.fromhex(h)))
    k = int(m)
    if isa == "fma3" and k <= -127:
        return f32(0.0)
    return round_f32(Fraction(float(p)) * Fraction(2) ** k)


def maxpool(x, kernel, strides, pads, dilations, ceil_mode):
    """Float max pool by windows (the largest valid tap; a window with none is -inf)."""
    n_b, n_c, height, width = x.shape
    kh, kw = kernel
    oh_n = out_size(height, kh, strides[0], pads[0], pads[2], dilations[0], ceil_mode)
    ow_n = out_size(width, kw, strides[1], pads[1], pads[3], dilations[1], ceil_mode)
    out = np.full((n_b, n_c, oh_n, ow_n), -np.inf, f32)
    for n in range(n_b):
        for c in range(n_c):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    best = -math.inf
                    for i in range(kh):
                        for j in range(kw):
                            h = oh * strides[0] - pads[0] + i * dilations[0]
                            w = ow * strides[1] - pads[1] + j * dilations[1]
                            if 0 <= h < height and 0 <= w < width:
                                best = max(best, float(x[n, c, h, w]))
                    out[n, c, oh, ow] = best
    return out


def conv_nchwc(x, w, bias, strides, pads, dilations, group, block):
    """ORT's NCHWc float Conv written out per output element, for a channel block of 16
    (AVX-512F) or 8 (FMA3): the input channels of the element's group split into segments
    (``nchw``: fewer channels than the block, one segment per channel; ``depthwise``: the one
    channel; ``pointwise``: 1x1 unpadded, batches of 128 channels; else ``nchwc``: blocks of
    ``block`` channels), each segment an FMA chain from 0 (``nchwc``: row, column, then channel;
    the others: channel, row, column; taps in the padding skipped), later segments' chains added
    to the running value, the bias added last."""
    n_b, c_in, height, width = x.shape
    m_out, c_group, kh, kw = w.shape
    m_group = m_out // group
    (sh, sw), (dh, dw), (top, left) = strides, dilations, pads[:2]
    oh_n = (height + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    ow_n = (width + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    if c_group == 1 and group > 1:
        seg, tap_major = 1, False                      # depthwise
    elif group == 1 and c_in < block:
        seg, tap_major = 1, False                      # nchw
    elif (kh, kw) == (1, 1) and not any(pads):
        seg, tap_major = 128, False                    # pointwise
    else:
        seg, tap_major = block, True                   # nchwc
    out = np.zeros((n_b, m_out, oh_n, ow_n), f32)
    for n in range(n_b):
        for m in range(m_out):
            c0 = (m // m_group) * c_group
            for oy in range(oh_n):
                for ox in range(ow_n):
                    taps = [(i, j) for i in range(kh) for j in range(kw)
                            if 0 <= oy * sh - top + i * dh < height and 0 <= ox * sw - left + j * dw < width]
                    total = None
                    for s0 in range(0, c_group, seg):
                        chans = range(s0, min(c_group, s0 + seg))
                        order = [(c, i, j) for (i, j) in taps for c in chans] if tap_major else \
                            [(c, i, j) for c in chans for (i, j) in taps]
                        acc = f32(0.0)
                        for c, i, j in order:
                            acc = fma(x[n, c0 + c, oy * sh - top + i * dh, ox * sw - left + j * dw],
                                      w[m, c, i, j], acc)
                        total = acc if total is None else f32(acc + total)
                    out[n, m, oy, ox] = f32(total + f32(bias[m]))
    return out
