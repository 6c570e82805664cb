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

import numba
import numpy as np
from numba import njit, prange

from simulator.errors import KernelInputError
from simulator.kernels.quant import (
    PARALLEL_MIN_ELEMENTS,
    check_int_array,
    check_out_range,
    clamp_add_zp,
    dtype_range,
    rounding_code,
)
from simulator.launch import Call, In, Launch, Tmp
from simulator.primitives import (
    ROUNDING_CODES,
    f32_add,
    f32_div,
    f32_mul,
    int_to_f32,
    round_float,
    rounding_divide,
)

POOL_DTYPES = ("int8", "uint8", "int16", "uint16")
# the peers' fixed roundings: ORT's nearbyint (RNE) and TFLite's (sum +- count/2) / count (RHA)
_RNE = ROUNDING_CODES["half_even"]
_RHA = ROUNDING_CODES["half_away"]


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


def _geometry(x, layout, kernel, strides, pads, dilations, ceil_mode, transpose=True):
    """Validate and return (x as NCHW, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow); with
    ``transpose=False`` x stays in its layout (contiguous)."""
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
    if not transpose:
        xn = x
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
@njit(cache=True, inline="always")
def _u(i):
    """Non-negative index as uint64 (no negative-index wrap-around: affine, vectorizable)."""
    return np.uint64(i)


@njit(cache=True, inline="always")
def _tap_range(o_n, stride, pad, offset, size):
    """Output positions ``o`` in ``[0, o_n)`` whose input ``o * stride - pad + offset`` lies in
    ``[0, size)``: returns ``(o_lo, o_hi)`` (half-open, possibly empty)."""
    num = pad - offset
    o_lo = 0 if num <= 0 else (num + stride - 1) // stride
    top = size - 1 + pad - offset
    o_hi = 0 if top < 0 else min(o_n, top // stride + 1)
    return o_lo, max(o_hi, o_lo)


@njit(cache=True)
def _maxpool_nchw(x1, n_planes, height, width, kh, kw, sh, sw, pt, pl, dh, dw, oh_n, ow_n, low,
                  out1, q0, q1):
    """Planes ``[q0, q1)`` of a flat NCHW tensor; for every kernel tap only the output columns
    whose input column is inside the image are visited (no per-element branch)."""
    for q in range(q0, q1):
        xb = q * height * width
        ob = q * oh_n * ow_n
        for oh in range(oh_n):
            o = ob + oh * ow_n
            for ow in range(ow_n):
                out1[_u(o + ow)] = low
            for i in range(kh):
                h = oh * sh - pt + i * dh
                if h < 0 or h >= height:
                    continue
                xr = xb + h * width
                for j in range(kw):
                    lo_, hi_ = _tap_range(ow_n, sw, pl, j * dw, width)
                    xo = xr - pl + j * dw
                    for ow in range(lo_, hi_):
                        out1[_u(o + ow)] = max(out1[_u(o + ow)], x1[_u(xo + ow * sw)])


@njit(cache=True)
def _maxpool_nhwc(x1, height, width, n_ch, kh, kw, sh, sw, pt, pl, dh, dw, oh_n, ow_n, low,
                  out1, r0, r1):
    """Output rows ``[r0, r1)`` (image-major) of a flat NHWC tensor, vectorized over channels."""
    for r in range(r0, r1):
        n = r // oh_n
        oh = r - n * oh_n
        for ow in range(ow_n):
            o = ((n * oh_n + oh) * ow_n + ow) * n_ch
            for c in range(n_ch):
                out1[_u(o + c)] = low
            for i in range(kh):
                h = oh * sh - pt + i * dh
                if h < 0 or h >= height:
                    continue
                for j in range(kw):
                    w = ow * sw - pl + j * dw
                    if w < 0 or w >= width:
                        continue
                    xo = ((n * height + h) * width + w) * n_ch
                    for c in range(n_ch):
                        out1[_u(o + c)] = max(out1[_u(o + c)], x1[_u(xo + c)])


@njit(cache=True, parallel=True)
def _maxpool_par(x1, nchw, n_items, height, width, n_ch, kh, kw, sh, sw, pt, pl, dh, dw, oh_n,
                 ow_n, low, out1, n_chunks):
    for ch in prange(n_chunks):
        i0 = ch * n_items // n_chunks
        i1 = (ch + 1) * n_items // n_chunks
        if nchw:
            _maxpool_nchw(x1, n_items, height, width, kh, kw, sh, sw, pt, pl, dh, dw, oh_n, ow_n,
                          low, out1, i0, i1)
        else:
            _maxpool_nhwc(x1, height, width, n_ch, kh, kw, sh, sw, pt, pl, dh, dw, oh_n, ow_n,
                          low, out1, i0, i1)


def maxpool(x, **params):
    """Max pooling in the input dtype. A window with no valid tap (only possible when the padding
    is at least the kernel extent) yields the dtype minimum, like ORT's ``lowest()`` init.
    Parameters: see :func:`maxpool_launch`."""
    outs, _ = maxpool_launch(x, **params).execute((np.ascontiguousarray(x),))
    return outs[0]


def maxpool_launch(x, *, layout="NCHW", kernel, strides=(1, 1), pads=(0, 0, 0, 0),
                   dilations=(1, 1), ceil_mode=0):
    """The :class:`simulator.launch.Launch` of :func:`maxpool` for inputs of ``x``'s shape and
    dtype (values not read)."""
    xn, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow = _geometry(x, layout, kernel, strides, pads,
                                                           dilations, ceil_mode, transpose=False)
    nchw = layout == "NCHW"
    if nchw:
        n_img, n_ch, height, width = (int(d) for d in xn.shape)
        out_shape = (n_img, n_ch, oh, ow)
        n_items = n_img * n_ch
    else:
        n_img, height, width, n_ch = (int(d) for d in xn.shape)
        out_shape = (n_img, oh, ow, n_ch)
        n_items = n_img * oh
    low = x.dtype.type(dtype_range(x.dtype)[0])
    x1 = In(0, (int(x.size),))
    out1 = Tmp(0, (n_img * n_ch * oh * ow,))
    threads = numba.get_num_threads()
    if threads > 1 and x.size >= PARALLEL_MIN_ELEMENTS and n_items > 1:
        call = Call(_maxpool_par, (x1, nchw, n_items, height, width, n_ch, kh, kw, sh, sw, pt,
                                   pl, dh, dw, oh, ow, low, out1, min(n_items, 4 * threads)))
    elif nchw:
        call = Call(_maxpool_nchw, (x1, n_items, height, width, kh, kw, sh, sw, pt, pl, dh, dw,
                                    oh, ow, low, out1, 0, n_items))
    else:
        call = Call(_maxpool_nhwc, (x1, height, width, n_ch, kh, kw, sh, sw, pt, pl, dh, dw, oh,
                                    ow, low, out1, 0, n_items))
    return Launch(((out_shape, x.dtype.name),), (call,), (Tmp(0),))


# --------------------------------------------------------------------------------------------
# average pool
# --------------------------------------------------------------------------------------------
AVG_ORT_FLOAT = 0
AVG_TFLITE_RAW = 1
AVG_FIXED = 2
AVG_MODES = {"ort_float": AVG_ORT_FLOAT, "tflite_raw": AVG_TFLITE_RAW, "fixed": AVG_FIXED}


@njit(cache=True)
def _avgpool_nhwc_rows(x, kh, kw, sh, sw, pt, pl, include_pad, mode, s_in, z_in, s_out, z_out,
                       rnd, out_min, out_max, out, r0, r1):
    """Average pooling of NHWC ``x`` for output rows ``[r0, r1)`` (image-major); returns the
    saturation count. The window sums are vectorized over channels, each channel summed in
    window order (``ort_float``: its float sum, in that order). ``fixed`` stores the rounded
    average (before the requantization block), unclamped; the other modes the clamped code.
    NCHW inputs run it on a transposed copy (:func:`_avgpool`)."""
    _, height, width, n_ch = x.shape
    oh_n, ow_n = out.shape[1], out.shape[2]
    acc = np.zeros(n_ch, dtype=np.int64)
    acc32 = np.zeros(n_ch, dtype=np.int32)
    small = x.itemsize <= 2 and kh * kw < 2**15
    yf = np.zeros(n_ch, dtype=np.float32)
    count_sat = 0
    for r in range(r0, r1):
        n = r // oh_n
        oh = r - n * oh_n
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
                for c in range(n_ch):
                    yf[c] = 0.0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        xr = x[n, h, w]
                        for c in range(n_ch):
                            yf[c] = f32_add(yf[c], f32_mul(s_in, int_to_f32(np.int64(xr[c])
                                                                            - z_in)))
                cf = int_to_f32(count)
                for c in range(n_ch):
                    y = f32_div(yf[c], cf)
                    f = f32_add(f32_div(y, s_out), int_to_f32(z_out))
                    q, s = clamp_add_zp(round_float(f, _RNE), np.int64(0), out_min,
                                        out_max)
                    out[n, oh, ow, c] = q
                    count_sat += s
            elif small:
                # int32 sums (16 lanes per vector op): exact, fewer than 2**15 values of at
                # most 16 bits sum to less than 2**31
                for c in range(n_ch):
                    acc32[c] = 0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        xr = x[n, h, w]
                        for c in range(n_ch):
                            acc32[c] += np.int32(xr[c])
                for c in range(n_ch):
                    acc[c] = acc32[c]
            else:
                for c in range(n_ch):
                    acc[c] = 0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        xr = x[n, h, w]
                        for c in range(n_ch):
                            acc[c] += np.int64(xr[c])
            if mode != AVG_ORT_FLOAT:
                bias = z_in * ((h1 - h0) * (w1 - w0))   # the taps summed (not the padded count)
                for c in range(n_ch):
                    a = acc[c] - bias
                    if mode == AVG_TFLITE_RAW:
                        q, s = clamp_add_zp(rounding_divide(a, count, _RHA),
                                            np.int64(0), out_min, out_max)
                        out[n, oh, ow, c] = q
                        count_sat += s
                    else:
                        out[n, oh, ow, c] = rounding_divide(a, count, rnd)
    return count_sat


@njit(cache=True, parallel=True)
def _avgpool_nhwc_par(x, kh, kw, sh, sw, pt, pl, include_pad, mode, s_in, z_in, s_out, z_out,
                      rnd, out_min, out_max, out, n_chunks):
    n_rows = out.shape[0] * out.shape[1]
    sat = np.zeros(n_chunks, dtype=np.int64)
    for ch in prange(n_chunks):
        sat[ch] = _avgpool_nhwc_rows(x, kh, kw, sh, sw, pt, pl, include_pad, mode, s_in, z_in,
                                     s_out, z_out, rnd, out_min, out_max, out,
                                     ch * n_rows // n_chunks, (ch + 1) * n_rows // n_chunks)
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
    res = _avgpool(x, layout, kernel, strides, pads, ceil_mode, count_include_pad, mode,
                   scale_in, zero_point_in, scale_out, zero_point_out, rq_rounding, out_min,
                   out_max, out_dtype, launch_only=False)
    if isinstance(res, Launch):
        outs, n_sat = res.execute((np.ascontiguousarray(x),))
        return outs[0], n_sat
    return res


def avgpool_launch(x, *, layout="NCHW", kernel, strides=(1, 1), pads=(0, 0, 0, 0), ceil_mode=0,
                   count_include_pad=0, mode, scale_in=1.0, zero_point_in=0, scale_out=1.0,
                   zero_point_out=0, rq_rounding="half_even", out_min=None, out_max=None,
                   out_dtype=None):
    """The :class:`simulator.launch.Launch` of :func:`avgpool` for inputs of ``x``'s shape and
    dtype (its values are not read), or ``None`` (NCHW). Raises what :func:`avgpool` raises."""
    res = _avgpool(x, layout, kernel, strides, pads, ceil_mode, count_include_pad, mode,
                   scale_in, zero_point_in, scale_out, zero_point_out, rq_rounding, out_min,
                   out_max, out_dtype, launch_only=True)
    return res if isinstance(res, Launch) else None


def _avgpool(x, layout, kernel, strides, pads, ceil_mode, count_include_pad, mode, scale_in,
             zero_point_in, scale_out, zero_point_out, rq_rounding, out_min, out_max, out_dtype,
             launch_only):
    if mode not in AVG_MODES:
        raise KernelInputError(f"avgpool mode must be one of {sorted(AVG_MODES)}, got {mode!r}")
    xn, kh, kw, sh, sw, pt, pl, _, _, oh, ow = _geometry(x, layout, kernel, strides, pads,
                                                         (1, 1), ceil_mode,
                                                         transpose=layout == "NCHW")
    include_pad = bool(count_include_pad)
    if not include_pad:
        # every window must hold at least one pixel
        height, width = (x.shape[2], x.shape[3]) if layout == "NCHW" else (x.shape[1], x.shape[2])
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
        rnd = _RNE
    if code == AVG_ORT_FLOAT:
        s_in, s_out = np.float32(scale_in), np.float32(scale_out)
        if not (s_in > 0 and s_out > 0 and math.isfinite(s_in) and math.isfinite(s_out)):
            raise KernelInputError("avgpool 'ort_float': scales must be positive and finite")
    else:
        s_in, s_out = np.float32(1.0), np.float32(1.0)
    z_in = int(zero_point_in) if code != AVG_TFLITE_RAW else 0
    if layout == "NCHW" and launch_only:
        return None
    # NCHW runs the NHWC kernel on a transposed copy, so the per-window arithmetic and its
    # launch are written once (a parallel NCHW kernel of its own cost ~6 s of compilation per
    # dtype pair)
    n_ch = x.shape[3] if layout == "NHWC" else x.shape[1]
    out_shape = (int(x.shape[0]), oh, ow, int(n_ch))
    args = (In(0), kh, kw, sh, sw, pt, pl, include_pad, code, s_in, np.int64(z_in), s_out,
            np.int64(zero_point_out), rnd, np.int64(out_min_i), np.int64(out_max_i), Tmp(0))
    n_rows = out_shape[0] * oh
    threads = numba.get_num_threads()
    if threads > 1 and x.size >= PARALLEL_MIN_ELEMENTS and n_rows > 1:
        call = Call(_avgpool_nhwc_par, args + (min(n_rows, 4 * threads),), counted=True)
    else:
        call = Call(_avgpool_nhwc_rows, args + (0, n_rows), counted=True)
    # the kernel stores each code in the output's dtype itself (every mode's values lie in
    # its range: clamped codes, or the int64 averages of 'fixed'); no int64 copy to cast
    launch = Launch(((out_shape, dt.name),), (call,), (Tmp(0),))
    if layout == "NHWC":
        return launch
    (out,), n_sat = launch.execute((np.ascontiguousarray(xn.transpose(0, 2, 3, 1)),))
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)), int(n_sat)


# --------------------------------------------------------------------------------------------
# global average pool
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _plane_sums(x2, offset, out):
    """``out[i] = sum(x2[i]) - offset`` in int64 for the rows of a 2-D integer array (int32
    partial sums of at most 2**23 elements, exact for 8/16-bit inputs). The offset is taken
    off here rather than by a kernel of its own: one compilation fewer."""
    width = x2.shape[1]
    for i in range(x2.shape[0]):
        row = x2[i]
        total = np.int64(0)
        for j0 in range(0, width, 1 << 15):
            part = np.int32(0)
            for j in range(j0, min(width, j0 + (1 << 15))):
                part += np.int32(row[j])
            total += part
        out[i] = total - offset


@njit(cache=True)
def _pixel_sums(x3, offset, out):
    """``out[n, c] = sum_p x3[n, p, c] - offset`` in int64 (channel-last), vectorized over
    channels."""
    n_img, n_pix, n_ch = x3.shape
    part = np.zeros(n_ch, dtype=np.int32)
    for n in range(n_img):
        for c in range(n_ch):
            out[n, c] = 0
        for p0 in range(0, n_pix, 1 << 15):
            for c in range(n_ch):
                part[c] = 0
            for p in range(p0, min(n_pix, p0 + (1 << 15))):
                for c in range(n_ch):
                    part[c] += np.int32(x3[n, p, c])
            for c in range(n_ch):
                out[n, c] += part[c]
        for c in range(n_ch):
            out[n, c] -= offset


def global_sum(x, *, layout="NCHW", input_zero_point=0):
    """``acc[n, c] = sum_{h, w} (x - z_in)`` in int64, shaped [N, C, 1, 1] or [N, 1, 1, C]."""
    outs, _ = global_sum_launch(x, layout=layout, input_zero_point=input_zero_point).execute(
        (np.ascontiguousarray(x),))
    return outs[0]


def global_sum_launch(x, *, layout="NCHW", input_zero_point=0):
    """The :class:`simulator.launch.Launch` of :func:`global_sum` for inputs of ``x``'s shape and
    dtype (values not read)."""
    check_int_array("global_avgpool input", x, POOL_DTYPES)
    if x.ndim != 4:
        raise KernelInputError(f"global_avgpool input: expected 4-D, got shape {list(x.shape)}")
    if layout not in ("NCHW", "NHWC"):
        raise KernelInputError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if layout == "NCHW":
        n_img, n_ch, height, width = (int(d) for d in x.shape)
        sums, view, out_view, shape = (_plane_sums, (n_img * n_ch, height * width),
                                       (n_img * n_ch,), (n_img, n_ch, 1, 1))
    else:
        n_img, height, width, n_ch = (int(d) for d in x.shape)
        sums, view, out_view, shape = (_pixel_sums, (n_img, height * width, n_ch),
                                       (n_img, n_ch), (n_img, 1, 1, n_ch))
    offset = np.int64(input_zero_point) * np.int64(height * width)
    call = Call(sums, (In(0, view), offset, Tmp(0, out_view)))
    return Launch(((shape, "int64"),), (call,), (Tmp(0),))
