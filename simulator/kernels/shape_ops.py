"""Kernels of the shape, movement and selection steps: ``take``, ``arg_reduce``,
``reduce_select``, ``select2`` (elementwise max/min) and ``resize_bilinear``.

Pure functions of integer arrays with explicit dtypes. They are vectorised numpy (exact integer
arithmetic, or float32 operation by operation where the runtime computes in float32), not
``@njit``: each is one gather or one reduction, which numpy already runs at memory speed, and a
JIT compilation would cost more than any model spends in them. tests/simulator/ and
tests/tflite/test_tflite_shape_ops.py check them against element-by-element loops.
"""
from __future__ import annotations

import numpy as np

from simulator.kernels.quant import KernelInputError, check_int_array

_CODES = ("int8", "uint8", "int16", "uint16", "int32", "int64")


# --------------------------------------------------------------------------------------------
# take: out[n].flat[i] = x[n].flat[index[i]]
# --------------------------------------------------------------------------------------------
def take(x: np.ndarray, *, index: np.ndarray, shape: tuple) -> np.ndarray:
    """Gather of one batch item's elements: ``out[n].reshape(-1)[i] = x[n].reshape(-1)[index[i]]``,
    ``out`` of shape ``(N,) + shape``."""
    check_int_array("take input", x, _CODES + ("float32",))
    if x.ndim < 1:
        raise KernelInputError("take: the input needs a leading (batch) dimension")
    n = x.shape[0]
    item = x.reshape(n, -1)
    index = np.asarray(index, np.int64)
    if index.size and (index.min() < 0 or index.max() >= item.shape[1]):
        raise KernelInputError(f"take: index outside [0, {item.shape[1]}) for input {list(x.shape)}")
    if int(np.prod(shape, dtype=np.int64)) != index.size:
        raise KernelInputError(f"take: {index.size} indices for output shape {list(shape)}")
    return np.ascontiguousarray(item[:, index]).reshape((n,) + tuple(int(d) for d in shape))


# --------------------------------------------------------------------------------------------
# arg_reduce, reduce_select, select2
# --------------------------------------------------------------------------------------------
def arg_reduce(x: np.ndarray, *, axis: int, select: str, out_dtype: str) -> np.ndarray:
    """Index of the first maximum (``select='max'``) or minimum along ``axis`` (TFLite ARG_MAX /
    ARG_MIN compare with a strict ``>``/``<``, so the first of equal codes wins)."""
    check_int_array("arg_reduce input", x, _CODES)
    fn = np.argmax if select == "max" else np.argmin
    return fn(x, axis=axis).astype(np.dtype(out_dtype))


def reduce_select(x: np.ndarray, *, axes: tuple, keep_dims: bool, select: str) -> np.ndarray:
    """Maximum or minimum code over ``axes`` (REDUCE_MAX/MIN keep the grid)."""
    check_int_array("reduce_select input", x, _CODES)
    fn = np.max if select == "max" else np.min
    return fn(x, axis=tuple(int(a) for a in axes), keepdims=bool(keep_dims))


def select2(a: np.ndarray, b: np.ndarray, *, select: str) -> np.ndarray:
    """Elementwise maximum or minimum of two code arrays (numpy broadcasting)."""
    check_int_array("select2 input a", a, _CODES)
    check_int_array("select2 input b", b, _CODES)
    if a.dtype != b.dtype:
        raise KernelInputError(f"select2: inputs are {a.dtype} and {b.dtype}")
    return (np.maximum if select == "max" else np.minimum)(a, b)


# --------------------------------------------------------------------------------------------
# resize_bilinear (NHWC)
# --------------------------------------------------------------------------------------------
def _c_div(a: np.ndarray, b: int) -> np.ndarray:
    """C integer division (truncation toward zero)."""
    q = np.abs(a) // b
    return np.where(a < 0, -q, q)


def _axis_int10(in_size: int, out_size: int, align: bool, half: bool):
    """TFLite int8 reference: 10-bit positions (``ComputeInterpolationValues`` int32 overload)."""
    if align and out_size > 1:
        scale = ((1 << 10) * (in_size - 1) + (out_size - 1) // 2) // (out_size - 1)
    else:
        scale = ((1 << 10) * in_size + out_size // 2) // out_size
    i = np.arange(out_size, dtype=np.int64)
    pos = i * scale + (scale // 2 - (1 << 9) if half else 0)
    lo = np.maximum(_c_div(pos, 1 << 10), 0)
    hi = np.minimum(_c_div(pos + (1 << 10) - 1, 1 << 10), in_size - 1)
    frac = pos - (1 << 10) * lo
    return lo, hi, frac


def _axis_float(in_size: int, out_size: int, align: bool, half: bool):
    """TFLite reference template (float32): position, floor/ceil bounds, fractional part."""
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    if align and out_size > 1:
        scale = f32(in_size - 1) / f32(out_size - 1)
    i = np.arange(out_size).astype(np.float32)
    pos = ((i + f32(0.5)) * scale - f32(0.5)) if half else i * scale
    pos = pos.astype(np.float32)
    lo = np.maximum(np.floor(pos).astype(np.int64), 0)
    hi = np.minimum(np.ceil(pos).astype(np.int64), in_size - 1)
    frac = (pos - lo.astype(np.float32)).astype(np.float32)
    return lo, hi, frac


def _axis_q11(in_size: int, out_size: int, align: bool, half: bool):
    """XNNPACK ``xnn_indirection_init_resize_bilinear2d_hwc_q11``: float32 positions, 11-bit
    weights ``lrintf(alpha * 2048)``."""
    f32 = np.float32
    adjust = 1 if (align and out_size != 1) else 0
    scale = f32(f32(in_size - adjust) / f32(out_size - adjust))
    i = np.arange(out_size).astype(np.float32)
    top = in_size - 1
    if align or not half:
        pos = (i * scale).astype(np.float32)
    else:
        offset = f32(f32(f32(0.5) * scale) - f32(0.5))
        pos = ((i * scale).astype(np.float32) + offset).astype(np.float32)
        pos = np.minimum(np.maximum(pos, f32(0.0)), f32(top)).astype(np.float32)
    lo = pos.astype(np.int64)             # (int32_t) truncation; pos >= 0 here
    hi = np.minimum(lo + 1, top)
    alpha = (pos - lo.astype(np.float32)).astype(np.float32)
    weight = np.rint((alpha * f32(2048.0)).astype(np.float32)).astype(np.int64)
    return lo, hi, weight


def resize_bilinear(x: np.ndarray, *, size: tuple, mode: str, align_corners: bool,
                    half_pixel_centers: bool) -> np.ndarray:
    """Bilinear resize of NHWC codes to ``size`` (H, W).

    ``mode``: ``int10`` (TFLite's int8/int16 reference: 10-bit positions, ``sum v * wy * wx`` in int64,
    rounded half away from zero at 2**20), ``float`` (TFLite's reference template for uint8:
    float32 weights, ``v00*(1-dy)*(1-dx) + v10*dy*(1-dx) + v01*(1-dy)*dx + v11*dy*dx`` left to
    right, rounded half away from zero), ``q11`` (XNNPACK: 11-bit weights, horizontal then vertical
    interpolation in int32, ``(acc + 2**21) >> 22``)."""
    check_int_array("resize_bilinear input", x, ("int8", "uint8", "int16"))
    if x.ndim != 4:
        raise KernelInputError(f"resize_bilinear: input must be NHWC, got {list(x.shape)}")
    h, w = x.shape[1], x.shape[2]
    oh, ow = (int(s) for s in size)
    axis_fn = {"int10": _axis_int10, "float": _axis_float, "q11": _axis_q11}.get(mode)
    if axis_fn is None:
        raise KernelInputError(f"resize_bilinear: unknown mode {mode!r}")
    y0, y1, fy = axis_fn(h, oh, align_corners, half_pixel_centers)
    x0, x1, fx = axis_fn(w, ow, align_corners, half_pixel_centers)
    rows0, rows1 = x[:, y0], x[:, y1]                   # N, OH, W, C
    v00, v01 = rows0[:, :, x0], rows0[:, :, x1]          # N, OH, OW, C
    v10, v11 = rows1[:, :, x0], rows1[:, :, x1]
    fy4 = fy.reshape(1, oh, 1, 1)
    fx4 = fx.reshape(1, 1, ow, 1)
    if mode == "int10":
        one = 1 << 10
        acc = (v00.astype(np.int64) * (one - fy4) * (one - fx4) + v10.astype(np.int64) * fy4 * (one - fx4)
               + v01.astype(np.int64) * (one - fy4) * fx4 + v11.astype(np.int64) * fy4 * fx4)
        rounding = np.where(acc > 0, 1 << 19, -(1 << 19))
        out = _c_div(acc + rounding, 1 << 20)
    elif mode == "float":
        f32 = np.float32
        dy, dx = fy4.astype(np.float32), fx4.astype(np.float32)
        ny, nx = (f32(1) - dy).astype(np.float32), (f32(1) - dx).astype(np.float32)
        t00 = (v00.astype(np.float32) * ny).astype(np.float32) * nx
        t10 = (v10.astype(np.float32) * dy).astype(np.float32) * nx
        t01 = (v01.astype(np.float32) * ny).astype(np.float32) * dx
        t11 = (v11.astype(np.float32) * dy).astype(np.float32) * dx
        total = ((t00 + t10).astype(np.float32) + t01).astype(np.float32) + t11
        total = total.astype(np.float32)
        out = (np.sign(total) * np.floor(np.abs(total) + np.float32(0.5))).astype(np.int64)
    else:
        top = (v00.astype(np.int64) << 11) + (v01.astype(np.int64) - v00) * fx4
        bottom = (v10.astype(np.int64) << 11) + (v11.astype(np.int64) - v10) * fx4
        acc = (top << 11) + (bottom - top) * fy4
        out = (acc + (1 << 21)) >> 22
    info = np.iinfo(x.dtype)
    return np.clip(out, info.min, info.max).astype(x.dtype)


def resize_linear_f32(x: np.ndarray, *, y_lo: np.ndarray, y_hi: np.ndarray, wy_lo: np.ndarray,
                      wy_hi: np.ndarray, x_lo: np.ndarray, x_hi: np.ndarray, wx_lo: np.ndarray,
                      wx_hi: np.ndarray) -> np.ndarray:
    """Bilinear resize of NCHW values with given source rows/columns and float32 weights, ONNX
    Runtime's ``UpsampleBilinear``: ``wx_lo*wy_lo*v00 + wx_hi*wy_lo*v01 + wx_lo*wy_hi*v10 +
    wx_hi*wy_hi*v11``, each product and sum a float32 operation, left to right. Integer codes
    are interpolated as float32 and truncated toward zero (its ``static_cast<T>``)."""
    check_int_array("resize_linear input", x, ("float32", "int8", "uint8"))
    if x.ndim != 4:
        raise KernelInputError(f"resize_linear: input must be NCHW, got {list(x.shape)}")
    for name, idx, n in (("y", y_lo, x.shape[2]), ("y", y_hi, x.shape[2]), ("x", x_lo, x.shape[3]),
                         ("x", x_hi, x.shape[3])):
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise KernelInputError(f"resize_linear: {name} index outside [0, {n})")
    f32 = np.float32
    wyl, wyh = wy_lo.astype(f32).reshape(1, 1, -1, 1), wy_hi.astype(f32).reshape(1, 1, -1, 1)
    wxl, wxh = wx_lo.astype(f32).reshape(1, 1, 1, -1), wx_hi.astype(f32).reshape(1, 1, 1, -1)
    r0, r1 = x[:, :, y_lo].astype(f32), x[:, :, y_hi].astype(f32)
    v00, v01, v10, v11 = r0[:, :, :, x_lo], r0[:, :, :, x_hi], r1[:, :, :, x_lo], r1[:, :, :, x_hi]
    t = ((wxl * wyl).astype(f32) * v00).astype(f32)
    t = (t + ((wxh * wyl).astype(f32) * v01).astype(f32)).astype(f32)
    t = (t + ((wxl * wyh).astype(f32) * v10).astype(f32)).astype(f32)
    t = (t + ((wxh * wyh).astype(f32) * v11).astype(f32)).astype(f32)
    if x.dtype != np.float32:
        info = np.iinfo(x.dtype)
        return np.ascontiguousarray(np.clip(np.trunc(t), info.min, info.max).astype(x.dtype))
    return np.ascontiguousarray(t)


# --------------------------------------------------------------------------------------------
# prelu
# --------------------------------------------------------------------------------------------
def prelu(x: np.ndarray, *, alpha: np.ndarray, input_zero_point: int, alpha_zero_point: int,
          requant_pos: dict, requant_neg: dict) -> tuple[np.ndarray, int]:
    """TFLite PRELU: ``v = x - z_in``; ``v >= 0``: ``rq_pos(v)``, else ``rq_neg(v * (alpha -
    z_alpha))`` (``alpha`` broadcast against one batch item, leading 1). ``requant_*``: keyword
    arguments of :func:`simulator.kernels.quant.requantize`. Returns ``(out, out_saturated)``."""
    from simulator.kernels.quant import requantize
    check_int_array("prelu input", x, ("int8", "uint8", "int16"))
    v = x.astype(np.int64) - int(input_zero_point)
    a = np.asarray(alpha).astype(np.int64) - int(alpha_zero_point)
    try:
        product = v * a
    except ValueError:
        raise KernelInputError(f"prelu: alpha {list(a.shape)} does not broadcast to {list(x.shape)}") from None
    negative = np.broadcast_to(v < 0, product.shape)
    v_full = np.broadcast_to(v, product.shape)
    # per-tensor multipliers: each branch requantizes only its own elements (flat)
    pos, sat_pos = requantize(np.ascontiguousarray(v_full[~negative]), **requant_pos)
    neg, sat_neg = requantize(np.ascontiguousarray(product[negative]), **requant_neg)
    out = np.empty(product.shape, pos.dtype)
    out[~negative] = pos
    out[negative] = neg
    return out, int(sat_pos) + int(sat_neg)
