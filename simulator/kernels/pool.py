"""Pooling: max, average (three arithmetics) and global average, on NCHW or NHWC tensors.

Window geometry follows ONNX / ONNX Runtime (``pool_attributes.h``):
output length ``floor((in + pads - ((k - 1) * d + 1)) / s) + 1``; with ``ceil_mode`` the division
rounds up and a last window that would start in the end padding (``(out - 1) * s >= in +
pad_begin``) is dropped. A window is clipped to the image; padding never contributes a value.

Average pooling modes (docs/PROGRAM.md):

- ``ort_float``: ORT ``QLinearAveragePool``: each input dequantized ``f32(s_in * f32(x - z_in))``,
  summed in float32 in window order (row-major), ``f32(sum / f32(count))``, then
  ``clamp(RNE(f32(f32(y / s_out) + f32(z_out))))`` (``nearbyintf``, zero point inside the
  rounding). ``count`` is ``kh * kw`` if ``count_include_pad`` else the clipped window size.
  ORT routes a kernel that covers the whole image with zero pads to its *global* average pool
  (integer sum + ``fp32`` requantization): lower that case to ``global_avgpool``.
- ``tflite_raw``: TFLite reference int8 AVERAGE_POOL_2D: ``acc = sum`` of the raw codes over the
  clipped window, ``avg = acc > 0 ? (acc + count/2) / count : (acc - count/2) / count`` (C
  division), i.e. RHA of ``acc / count``, then clamp. ``count`` as above (TFLite never includes
  padding).
- ``fixed``: ``acc = sum(x - z_in)`` (int64), ``avg = round(acc / count, rq_rounding)``, then the
  requantization block on ``avg``.

Average pooling takes no dilations (neither peer supports them for quantized average pooling).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from simulator.errors import KernelInputError
from simulator.kernels.quant import (
    check_int_array,
    check_out_range,
    clamp_add_zp,
    dtype_range,
    rounding_code,
)
from simulator.primitives import (
    RND_HALF_AWAY,
    RND_HALF_EVEN,
    f32_add,
    f32_div,
    f32_mul,
    int_to_f32,
    round_float,
    rounding_divide,
)

POOL_DTYPES = ("int8", "uint8", "int16", "uint16")


def pool_output_size(in_size, kernel, stride, pad_begin, pad_end, dilation, ceil_mode) -> int:
    """ONNX Runtime's ``ComputeOutputSize`` (with the onnx/onnx#5741 ceil-mode rule)."""
    numerator = in_size + pad_begin + pad_end - dilation * (kernel - 1) - 1
    if numerator < 0:
        return 0
    if ceil_mode:
        out = -(-numerator // stride) + 1
        if (out - 1) * stride >= in_size + pad_begin:
            out -= 1
        return out
    return numerator // stride + 1


def _ints(name, value, count, minimum):
    try:
        vals = tuple(int(v) for v in value)
    except TypeError:
        raise KernelInputError(f"{name}: expected {count} ints, got {value!r}") from None
    if len(vals) != count or any(v < minimum for v in vals):
        raise KernelInputError(f"{name}: expected {count} ints >= {minimum}, got {value!r}")
    return vals


def _geometry(x, layout, kernel, strides, pads, dilations, ceil_mode):
    """Validate and return (x as NCHW, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow)."""
    check_int_array("pool input", x, POOL_DTYPES)
    if x.ndim != 4:
        raise KernelInputError(f"pool input: expected 4-D, got shape {list(x.shape)}")
    if layout not in ("NCHW", "NHWC"):
        raise KernelInputError(f"pool layout must be 'NCHW' or 'NHWC', got {layout!r}")
    kh, kw = _ints("kernel", kernel, 2, 1)
    sh, sw = _ints("strides", strides, 2, 1)
    pt, pl, pb, pr = _ints("pads", pads, 4, 0)
    dh, dw = _ints("dilations", dilations, 2, 1)
    xn = x if layout == "NCHW" else np.transpose(x, (0, 3, 1, 2))
    height, width = xn.shape[2], xn.shape[3]
    oh = pool_output_size(height, kh, sh, pt, pb, dh, bool(ceil_mode))
    ow = pool_output_size(width, kw, sw, pl, pr, dw, bool(ceil_mode))
    if oh < 1 or ow < 1:
        raise KernelInputError(
            f"pool: empty output for input {height}x{width}, kernel {kh}x{kw}, pads {pads}"
        )
    return np.ascontiguousarray(xn), kh, kw, sh, sw, pt, pl, dh, dw, oh, ow


def _to_layout(out, layout):
    if layout == "NHWC":
        return np.ascontiguousarray(np.transpose(out, (0, 2, 3, 1)))
    return out


# --------------------------------------------------------------------------------------------
# max pool
# --------------------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _maxpool_kernel(x, kh, kw, sh, sw, pt, pl, dh, dw, empty_value, out):
    n_batch, n_ch, height, width = x.shape
    oh_n, ow_n = out.shape[2], out.shape[3]
    for nc in prange(n_batch * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for oh in range(oh_n):
            for ow in range(ow_n):
                best = np.int64(empty_value)
                found = False
                for i in range(kh):
                    h = oh * sh - pt + i * dh
                    if h < 0 or h >= height:
                        continue
                    for j in range(kw):
                        w = ow * sw - pl + j * dw
                        if w < 0 or w >= width:
                            continue
                        v = np.int64(x[n, c, h, w])
                        if not found or v > best:
                            best = v
                            found = True
                out[n, c, oh, ow] = best


def maxpool(x, *, layout="NCHW", kernel, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
            ceil_mode=0):
    """Max pooling in the input dtype. A window with no valid tap (only possible when the padding
    is at least the kernel extent) yields the dtype minimum, like ORT's ``lowest()`` init."""
    xn, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow = _geometry(x, layout, kernel, strides, pads,
                                                           dilations, ceil_mode)
    out = np.empty((xn.shape[0], xn.shape[1], oh, ow), dtype=np.int64)
    _maxpool_kernel(xn, kh, kw, sh, sw, pt, pl, dh, dw, np.int64(dtype_range(x.dtype)[0]), out)
    return _to_layout(out.astype(x.dtype), layout)


# --------------------------------------------------------------------------------------------
# average pool
# --------------------------------------------------------------------------------------------
AVG_ORT_FLOAT = 0
AVG_TFLITE_RAW = 1
AVG_FIXED = 2
AVG_MODES = {"ort_float": AVG_ORT_FLOAT, "tflite_raw": AVG_TFLITE_RAW, "fixed": AVG_FIXED}


@njit(cache=True, parallel=True)
def _avgpool_kernel(x, kh, kw, sh, sw, pt, pl, include_pad, mode, s_in, z_in, s_out, z_out,
                    rnd, out_min, out_max, out):
    """Average pooling; for ``fixed`` mode ``out`` receives the rounded average (before the
    requantization block) and no clamp is applied. Returns the saturation count."""
    n_batch, n_ch, height, width = x.shape
    oh_n, ow_n = out.shape[2], out.shape[3]
    sat = np.zeros(n_batch * n_ch, dtype=np.int64)
    for nc in prange(n_batch * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        count_sat = 0
        for oh in range(oh_n):
            h0 = oh * sh - pt
            h1 = min(h0 + kh, height)
            h0 = max(h0, 0)
            for ow in range(ow_n):
                w0 = ow * sw - pl
                w1 = min(w0 + kw, width)
                w0 = max(w0, 0)
                if include_pad:
                    count = kh * kw
                else:
                    count = (h1 - h0) * (w1 - w0)
                if mode == AVG_ORT_FLOAT:
                    y = np.float32(0.0)
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            xv = int_to_f32(np.int64(x[n, c, h, w]) - z_in)
                            y = f32_add(y, f32_mul(s_in, xv))
                    y = f32_div(y, int_to_f32(count))
                    f = f32_add(f32_div(y, s_out), int_to_f32(z_out))
                    q, s = clamp_add_zp(round_float(f, RND_HALF_EVEN), np.int64(0), out_min,
                                        out_max)
                    out[n, c, oh, ow] = q
                    if s:
                        count_sat += 1
                else:
                    acc = np.int64(0)
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            acc += np.int64(x[n, c, h, w]) - z_in
                    if mode == AVG_TFLITE_RAW:
                        q, s = clamp_add_zp(rounding_divide(acc, count, RND_HALF_AWAY),
                                            np.int64(0), out_min, out_max)
                        out[n, c, oh, ow] = q
                        if s:
                            count_sat += 1
                    else:
                        out[n, c, oh, ow] = rounding_divide(acc, count, rnd)
        sat[nc] = count_sat
    return sat.sum()


def avgpool(x, *, layout="NCHW", kernel, strides=(1, 1), pads=(0, 0, 0, 0), ceil_mode=0,
            count_include_pad=0, mode, scale_in=1.0, zero_point_in=0, scale_out=1.0,
            zero_point_out=0, rq_rounding="half_even", out_min=None, out_max=None,
            out_dtype=None):
    """Average pooling; returns ``(out, out_saturated)``.

    ``ort_float`` and ``tflite_raw`` return the final codes (``out_dtype``, clamped to
    ``[out_min, out_max]``). ``fixed`` returns the int64 rounded averages ``round(sum(x - z_in) /
    count)`` (``zero_point_in`` is ``z_in``) in the requested layout and 0; the caller applies the
    requantization block.
    """
    if mode not in AVG_MODES:
        raise KernelInputError(f"avgpool mode must be one of {sorted(AVG_MODES)}, got {mode!r}")
    xn, kh, kw, sh, sw, pt, pl, _, _, oh, ow = _geometry(x, layout, kernel, strides, pads,
                                                         (1, 1), ceil_mode)
    include_pad = bool(count_include_pad)
    if not include_pad:
        # every window must hold at least one pixel
        height, width = xn.shape[2], xn.shape[3]
        for o, k, s, p, size in ((oh, kh, sh, pt, height), (ow, kw, sw, pl, width)):
            for i in range(o):
                if min(i * s - p + k, size) - max(i * s - p, 0) <= 0:
                    raise KernelInputError("avgpool: a window lies entirely in the padding")
    code = AVG_MODES[mode]
    if code == AVG_FIXED:
        out_min_i, out_max_i = 0, 0
        dt = np.dtype(np.int64)
        rnd = rounding_code(rq_rounding)
    else:
        dt = np.dtype(x.dtype if out_dtype is None else out_dtype)
        lo, hi = dtype_range(dt) if dt.kind in "iu" else (0, -1)
        out_min_i, out_max_i, dt = check_out_range(lo if out_min is None else out_min,
                                                   hi if out_max is None else out_max, dt)
        rnd = RND_HALF_EVEN
    if code == AVG_ORT_FLOAT:
        s_in, s_out = np.float32(scale_in), np.float32(scale_out)
        if not (s_in > 0 and s_out > 0 and math.isfinite(s_in) and math.isfinite(s_out)):
            raise KernelInputError("avgpool 'ort_float': scales must be positive and finite")
    else:
        s_in, s_out = np.float32(1.0), np.float32(1.0)
    z_in = int(zero_point_in) if code != AVG_TFLITE_RAW else 0
    out = np.empty((xn.shape[0], xn.shape[1], oh, ow), dtype=np.int64)
    n_sat = _avgpool_kernel(xn, kh, kw, sh, sw, pt, pl, include_pad, code, s_in, np.int64(z_in),
                            s_out, np.int64(zero_point_out), rnd, np.int64(out_min_i),
                            np.int64(out_max_i), out)
    return _to_layout(out.astype(dt), layout), int(n_sat)


# --------------------------------------------------------------------------------------------
# global average pool
# --------------------------------------------------------------------------------------------
def global_sum(x, *, layout="NCHW", input_zero_point=0):
    """``acc[n, c] = sum_{h, w} (x - z_in)`` in int64, shaped [N, C, 1, 1] or [N, 1, 1, C]."""
    check_int_array("global_avgpool input", x, POOL_DTYPES)
    if x.ndim != 4:
        raise KernelInputError(f"global_avgpool input: expected 4-D, got shape {list(x.shape)}")
    if layout not in ("NCHW", "NHWC"):
        raise KernelInputError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    x64 = x.astype(np.int64)
    count = x.shape[axes[0]] * x.shape[axes[1]]
    acc = x64.sum(axis=axes, keepdims=True) - np.int64(input_zero_point) * np.int64(count)
    return acc
