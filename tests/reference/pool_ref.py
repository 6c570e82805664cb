"""Reference pooling, written after ORT's qlinear_pool.cc / pool_attributes.h and TFLite's
reference_integer_ops/pooling.h. NCHW only (tests transpose for NHWC)."""
from __future__ import annotations

import math

import numpy as np

from . import primitives_ref as P
from .quant_ref import clamp

f32 = np.float32


def out_size(in_size, k, s, p0, p1, d, ceil_mode):
    numerator = in_size + p0 + p1 - d * (k - 1) - 1
    if ceil_mode:
        out = math.ceil(numerator / s) + 1
        if (out - 1) * s >= in_size + p0:
            out -= 1
        return out
    return numerator // s + 1


def maxpool(x, kernel, strides, pads, dilations, ceil_mode):
    n_b, n_c, height, width = x.shape
    kh, kw = kernel
    oh_n = out_size(height, kh, strides[0], pads[0], pads[2], dilations[0], ceil_mode)
    ow_n = out_size(width, kw, strides[1], pads[1], pads[3], dilations[1], ceil_mode)
    out = np.zeros((n_b, n_c, oh_n, ow_n), dtype=x.dtype)
    lowest = np.iinfo(x.dtype).min
    for n in range(n_b):
        for c in range(n_c):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    vals = [int(x[n, c, oh * strides[0] - pads[0] + i * dilations[0],
                                  ow * strides[1] - pads[1] + j * dilations[1]])
                            for i in range(kh) for j in range(kw)
                            if 0 <= oh * strides[0] - pads[0] + i * dilations[0] < height
                            and 0 <= ow * strides[1] - pads[1] + j * dilations[1] < width]
                    out[n, c, oh, ow] = max(vals) if vals else lowest
    return out


def _windows(height, width, kernel, strides, pads, ceil_mode):
    kh, kw = kernel
    oh_n = out_size(height, kh, strides[0], pads[0], pads[2], 1, ceil_mode)
    ow_n = out_size(width, kw, strides[1], pads[1], pads[3], 1, ceil_mode)
    for oh in range(oh_n):
        hstart = oh * strides[0] - pads[0]
        hend = min(hstart + kh, height)
        hstart = max(hstart, 0)
        for ow in range(ow_n):
            wstart = ow * strides[1] - pads[1]
            wend = min(wstart + kw, width)
            wstart = max(wstart, 0)
            yield oh, ow, hstart, hend, wstart, wend


def _shape(height, width, kernel, strides, pads, ceil_mode):
    return (out_size(height, kernel[0], strides[0], pads[0], pads[2], 1, ceil_mode),
            out_size(width, kernel[1], strides[1], pads[1], pads[3], 1, ceil_mode))


def avgpool_ort_float(x, kernel, strides, pads, ceil_mode, count_include_pad, x_scale, x_zp,
                      y_scale, y_zp, out_min, out_max, out_dtype):
    """QLinearAveragePool: dequantize_value, float sum, Finalize, quantize_value."""
    n_b, n_c, height, width = x.shape
    out = np.zeros((n_b, n_c) + _shape(height, width, kernel, strides, pads, ceil_mode), np.int64)
    x_scale, y_scale = f32(x_scale), f32(y_scale)
    n_sat = 0
    for n in range(n_b):
        for c in range(n_c):
            for oh, ow, h0, h1, w0, w1 in _windows(height, width, kernel, strides, pads, ceil_mode):
                yh = f32(0.0)
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        yh = f32(yh + f32(x_scale * f32(int(x[n, c, h, w]) - int(x_zp))))
                size = kernel[0] * kernel[1] if count_include_pad else (h1 - h0) * (w1 - w0)
                yh = f32(yh / f32(size))
                v = f32(f32(yh / y_scale) + f32(int(y_zp)))
                out[n, c, oh, ow], sat = clamp(P.round_float(v, "half_even"), out_min, out_max)
                n_sat += sat
    return out.astype(out_dtype), n_sat


def avgpool_tflite(x, kernel, strides, pads, ceil_mode, count_include_pad, out_min, out_max,
                   out_dtype):
    """reference_integer_ops::AveragePool: raw-code sum, (acc +- count/2) / count in C."""
    n_b, n_c, height, width = x.shape
    out = np.zeros((n_b, n_c) + _shape(height, width, kernel, strides, pads, ceil_mode), np.int64)
    n_sat = 0
    for n in range(n_b):
        for c in range(n_c):
            for oh, ow, h0, h1, w0, w1 in _windows(height, width, kernel, strides, pads, ceil_mode):
                acc = sum(int(x[n, c, h, w]) for h in range(h0, h1) for w in range(w0, w1))
                count = kernel[0] * kernel[1] if count_include_pad else (h1 - h0) * (w1 - w0)
                if acc > 0:
                    avg = P.c_div(acc + count // 2, count)
                else:
                    avg = P.c_div(acc - count // 2, count)
                out[n, c, oh, ow], sat = clamp(avg, out_min, out_max)
                n_sat += sat
    return out.astype(out_dtype), n_sat


def avgpool_fixed_avg(x, kernel, strides, pads, ceil_mode, count_include_pad, x_zp, rounding):
    """round(sum(x - zp) / count) as int64 (before the requantization block)."""
    n_b, n_c, height, width = x.shape
    out = np.zeros((n_b, n_c) + _shape(height, width, kernel, strides, pads, ceil_mode), np.int64)
    for n in range(n_b):
        for c in range(n_c):
            for oh, ow, h0, h1, w0, w1 in _windows(height, width, kernel, strides, pads, ceil_mode):
                acc = sum(int(x[n, c, h, w]) - int(x_zp) for h in range(h0, h1)
                          for w in range(w0, w1))
                count = kernel[0] * kernel[1] if count_include_pad else (h1 - h0) * (w1 - w0)
                out[n, c, oh, ow] = P.rounding_divide(acc, count, rounding)
    return out


def global_sum(x, x_zp):
    """[N, C, 1, 1] int64 sums of (x - zp)."""
    n_b, n_c = x.shape[:2]
    out = np.zeros((n_b, n_c, 1, 1), dtype=np.int64)
    for n in range(n_b):
        for c in range(n_c):
            out[n, c, 0, 0] = sum(int(v) - int(x_zp) for v in x[n, c].ravel())
    return out
