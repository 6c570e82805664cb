"""Slow scalar references for the float-island kernels (simulator/kernels/ort_eltwise.py),
written after ORT's kernels element by element: MLAS's global average pool and softmax
summation orders, and a max pool by explicit window loops. float32 scalars throughout, so each
``+`` is one float32 rounding."""
from __future__ import annotations

import math

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


def softmax_row_sum(exps):
    """The row sum of MLAS's AVX-512F softmax: 16 lane sums (element i into lane i % 16, in
    order), then lanes j and j + 8, then the two horizontal adds and the final add."""
    lanes = [f32(0.0)] * 16
    for i, v in enumerate(exps):
        lanes[i % 16] = f32(lanes[i % 16] + f32(v))
    s = [f32(lanes[j + 8] + lanes[j]) for j in range(8)]
    h = [f32(s[0] + s[1]), f32(s[2] + s[3]), f32(s[4] + s[5]), f32(s[6] + s[7])]
    return f32(f32(h[0] + h[1]) + f32(h[2] + h[3]))


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
