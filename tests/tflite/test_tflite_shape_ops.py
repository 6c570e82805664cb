"""TFLite shape, movement, selection and table operators (mrq/tflite_import_shape.py): single-op
models written with tflite_builder, run by mrq on both TFLite profiles and compared with

* a plain numpy reference of the op, written here independently of mrq's index machinery;
* LiteRT (``tflite-int8`` vs ``BUILTIN_REF``, ``litert-default`` vs the default interpreter),
  every tensor LiteRT keeps (outputs and intermediates).

Inputs: uniform random codes, the dtype's extreme codes, and (where the op compares or rounds)
few distinct codes so that ties occur. Expected: 0 mismatching elements.
"""
from __future__ import annotations

import math
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from tflite_builder import ModelBuilder
from tflite_helpers import compare_rows, litert, litert_run, mrq_run

PROFILES = ("tflite-int8", "litert-default")
BATCH = 4
I8 = {"scale": 0.05, "zero_point": -3}
I16 = {"scale": 0.001, "zero_point": 0}


def _q(dtype):
    return {"int8": I8, "int16": I16, "uint8": {"scale": 0.04, "zero_point": 120}}[dtype]


def _codes(shape, dtype, seed, narrow=False):
    """BATCH inputs: uniform codes, with the first row's first elements set to the extremes;
    ``narrow``: only three codes (ties)."""
    r = np.random.default_rng(seed)
    info = np.iinfo(np.dtype(dtype))
    if narrow:
        x = r.integers(-1, 2, size=(BATCH,) + tuple(shape[1:])) + (0 if info.min < 0 else 128)
    else:
        x = r.integers(int(info.min), int(info.max) + 1, size=(BATCH,) + tuple(shape[1:]))
        flat = x.reshape(BATCH, -1)
        flat[0, :2] = (info.min, info.max)
    return x.astype(dtype)


def _const(b, name, values, dtype="int32"):
    arr = np.asarray(values)
    return b.tensor(name, list(arr.shape), dtype, data=arr)


# ------------------------------------------------------------------------------------- models
def unary(op, in_shape, out_shape, dtype="int8", consts=(), options=None, out_dtype=None,
          out_q=None, out_shapes=None, in_q=None):
    """One op: x (+ constant operands) -> y (or several outputs)."""
    b = ModelBuilder()
    x = b.tensor("x", in_shape, dtype, **(in_q or _q(dtype)))
    extra = [_const(b, f"c{i}", v) for i, v in enumerate(consts)]
    od = out_dtype or dtype
    q = out_q if out_q is not None else (_q(od) if od in ("int8", "int16", "uint8") else {})
    outs = [b.tensor(f"y{i}", s, od, **q) for i, s in enumerate(out_shapes or [out_shape])]
    b.op(op, [x] + extra, outs, options=options)
    return b.finish([x], outs)


def strided_slice(dtype, begin, end, strides, masks, in_shape, out_shape):
    opts = ("StridedSliceOptions", {"begin_mask": masks[0], "end_mask": masks[1], "shrink_axis_mask": masks[2]})
    return unary("STRIDED_SLICE", in_shape, out_shape, dtype, [begin, end, strides], opts)


def split(dtype):
    b = ModelBuilder()
    axis = _const(b, "axis", np.array(3, np.int32).reshape(()))
    x = b.tensor("x", [1, 2, 3, 6], dtype, **_q(dtype))
    ys = [b.tensor(f"y{i}", [1, 2, 3, 2], dtype, **_q(dtype)) for i in range(3)]
    b.op("SPLIT", [axis, x], ys, options=("SplitOptions", {"num_splits": 3}))
    return b.finish([x], ys)


def split_v():
    b = ModelBuilder()
    x = b.tensor("x", [1, 7, 4], "int8", **I8)
    sizes = _const(b, "sizes", [2, -1, 1])
    axis = _const(b, "axis", np.array(1, np.int32).reshape(()))
    ys = [b.tensor(f"y{i}", [1, n, 4], "int8", **I8) for i, n in enumerate((2, 4, 1))]
    b.op("SPLIT_V", [x, sizes, axis], ys, options=("SplitVOptions", {"num_splits": 3}))
    return b.finish([x], ys)


def pack_chain():
    """SHAPE -> STRIDED_SLICE -> PACK feeding a RESHAPE (folded at import), then PACK of two
    activations along axis 1."""
    b = ModelBuilder()
    x = b.tensor("x", [1, 4, 6, 2], "int8", **I8)
    shp = b.tensor("shape", [4], "int32")
    b.op("SHAPE", [x], [shp], options=("ShapeOptions", {"out_type": 2}))
    n = b.tensor("n", [], "int32")
    b.op("STRIDED_SLICE", [shp, _const(b, "b", [0]), _const(b, "e", [1]), _const(b, "s", [1])], [n],
         options=("StridedSliceOptions", {"shrink_axis_mask": 1}))
    target = b.tensor("target", [3], "int32")
    b.op("PACK", [n, _const(b, "d1", np.array(24, np.int32).reshape(())),
                  _const(b, "d2", np.array(2, np.int32).reshape(()))], [target],
         options=("PackOptions", {"values_count": 3, "axis": 0}))
    r = b.tensor("r", [1, 24, 2], "int8", **I8)
    b.op("RESHAPE", [x, target], [r])
    y = b.tensor("y", [1, 2, 24, 2], "int8", **I8)
    b.op("PACK", [r, r], [y], options=("PackOptions", {"values_count": 2, "axis": 1}))
    return b.finish([x], [y])


def resize(op, dtype, in_hw, out_hw, align=False, half=False, c=3):
    opts_kind = "ResizeBilinearOptions" if op == "RESIZE_BILINEAR" else "ResizeNearestNeighborOptions"
    return unary(op, [1, *in_hw, c], [1, *out_hw, c], dtype, [list(out_hw)],
                 (opts_kind, {"align_corners": align, "half_pixel_centers": half}))


def binary_select(op, shape_b):
    b = ModelBuilder()
    x = b.tensor("x", [1, 3, 4, 5], "int8", **I8)
    x2 = b.tensor("x2", shape_b, "int8", **I8)
    y = b.tensor("y", [1, 3, 4, 5], "int8", **I8)
    b.op(op, [x, x2], [y])
    return b.finish([x, x2], [y])


def arg_max(op, dtype, out_type):
    kind = "ArgMaxOptions" if op == "ARG_MAX" else "ArgMinOptions"
    code = {"int32": 2, "int64": 4}[out_type]
    return unary(op, [1, 5, 6, 7], [1, 5, 6], dtype, [np.array([3], np.int32)],
                 (kind, {"output_type": code}), out_dtype=out_type)


def prelu(dtype, alpha_shape, alpha_q):
    r = np.random.default_rng(11)
    b = ModelBuilder()
    x = b.tensor("x", [1, 3, 4, 5], dtype, **_q(dtype))
    info = np.iinfo(np.dtype(dtype))
    alpha = b.tensor("alpha", alpha_shape, dtype, data=r.integers(info.min, info.max + 1, alpha_shape), **alpha_q)
    y = b.tensor("y", [1, 3, 4, 5], dtype, scale=0.06, zero_point=(-10 if info.min < 0 else 100))
    b.op("PRELU", [x, alpha], [y])
    return b.finish([x], [y])


def _qm(real):
    """TFLite QuantizeMultiplier: (Q31 mantissa, exponent)."""
    q, e = math.frexp(real)
    m = int(math.copysign(math.floor(abs(q * 2 ** 31) + 0.5), q))
    if m == 2 ** 31:
        m, e = m // 2, e + 1
    return m, e


def _mbqm(v, m, e):
    """gemmlowp MultiplyByQuantizedMultiplier (two roundings, half away from zero)."""
    v = v * (1 << max(e, 0))
    n = v * m + ((1 << 30) if v * m >= 0 else 1 - (1 << 30))
    high = -((-n) >> 31) if n < 0 else n >> 31
    right = max(-e, 0)
    mask = (1 << right) - 1
    return (high >> right) + (1 if (high & mask) > (mask >> 1) + (1 if high < 0 else 0) else 0)


def _roundf(v):
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def _prelu_ref(a, model_alpha, zi, za, zo, s_in, s_a, s_out, lo, hi):
    """PRELU element by element."""
    f32 = np.float32
    m1 = _qm(float(f32(f32(s_in) / f32(s_out))))
    m2 = _qm(float(f32(f32(f32(s_in) * f32(s_a)) / f32(s_out))))
    alpha = np.broadcast_to(model_alpha, a.shape[1:])
    out = np.empty(a.shape, a.dtype)
    for idx in np.ndindex(a.shape):
        v = int(a[idx]) - zi
        r = _mbqm(v, *m1) if v >= 0 else _mbqm(v * (int(alpha[idx[1:]]) - za), *m2)
        out[idx] = min(max(r + zo, lo), hi)
    return [out]


def _relu_ref(a, act_lo, act_hi, s_in, zi, s_out, zo):
    """QuantizedReluX: requantize by Q31(f32(s_in / s_out)), clamp to the activation's codes."""
    info = np.iinfo(a.dtype)
    f32 = np.float32
    lo = max(int(info.min), zo + _roundf(float(f32(f32(act_lo) / f32(s_out)))))
    hi = int(info.max) if act_hi is None else min(int(info.max), zo + _roundf(float(f32(f32(act_hi) / f32(s_out)))))
    m = _qm(float(f32(f32(s_in) / f32(s_out))))
    return [np.vectorize(lambda v: min(max(zo + _mbqm(int(v) - zi, *m), lo), hi))(a).astype(a.dtype)]


def _hard_swish_ref(a, s_in, zi, s_out, zo):
    """reference_ops::HardSwish, vectorised over int64 arrays with int16 wrap/saturation."""
    f32 = np.float32

    def wrap16(x):
        return ((x + 32768) & 0xFFFF) - 32768

    def sat16(x):
        return np.clip(x, -32768, 32767)

    def srdhm(x, m):
        ab = x * m
        n = ab + np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
        q = np.where(n < 0, -((-n) >> 15), n >> 15)
        return np.where((x == -32768) & (m == -32768), 32767, wrap16(q))

    def rdbpot(x, e):
        mask = (1 << e) - 1
        return (x >> e) + ((x & mask) > (mask >> 1) + (x < 0)).astype(np.int64)

    def to16(m32):
        return 32767 if m32 >= 2 ** 31 - 1 - 2 ** 15 else (m32 + 2 ** 15) >> 16
    hires_scale = f32(f32(1 / 128) * f32(s_in))
    om, oe = _qm(float(f32(hires_scale / f32(s_out))))
    rm, re_ = _qm(float(f32(hires_scale / f32(3 / 32768))))
    om, rm = to16(om), to16(rm)
    v = wrap16(a.astype(np.int64) - zi)
    hires = wrap16(v * 128)
    pre = srdhm(hires, om)
    r = hires
    if re_ > 0:
        r = srdhm(sat16(r * (1 << (re_ - 1))), rm)
        r = sat16(r * 2)
    else:
        r = srdhm(r, rm)
        if re_ < 0:
            r = rdbpot(r, -re_)
    r = wrap16((r + 32768) >> 1)
    prod = r * pre
    out = np.where((r == -32768) & (pre == -32768), 32767, np.where(prod < 0, -((-prod) >> 15), prod >> 15))
    out = wrap16(rdbpot(out, -oe) + zo)
    info = np.iinfo(a.dtype)
    return [np.clip(out, info.min, info.max).astype(a.dtype)]


def _tanh_ref(a, s_in, zi, s_out, zo):
    """LUTPopulate: round_half_away(f32(f32(tanh(f32(s_in * (v - zi)))) * f32(1 / s_out))) + zo."""
    f32 = np.float32
    x = (f32(s_in) * (a.astype(np.int64) - zi).astype(np.float32)).astype(np.float32)
    t = np.tanh(x.astype(np.float64)).astype(np.float32)
    r = (t * f32(f32(1.0) / f32(s_out))).astype(np.float32).astype(np.float64)
    q = np.sign(r) * np.floor(np.abs(r) + 0.5) + zo
    info = np.iinfo(a.dtype)
    return [np.clip(q, info.min, info.max).astype(a.dtype)]


def _bilinear_float_ref(a, out_hw, align, half):
    """LiteRT's reference template (uint8), element by element in float32 scalars."""
    f32 = np.float32

    def axis(n_in, n_out):
        scale = f32(n_in - 1) / f32(n_out - 1) if align and n_out > 1 else f32(n_in) / f32(n_out)
        res = []
        for i in range(n_out):
            pos = f32(f32(f32(i) + f32(0.5)) * scale - f32(0.5)) if half else f32(f32(i) * scale)
            lo = max(math.floor(pos), 0)
            res.append((lo, min(math.ceil(pos), n_in - 1), f32(pos - f32(lo))))
        return res
    out = np.empty((a.shape[0], *out_hw, a.shape[3]), a.dtype)
    for yi, (y0, y1, dy) in enumerate(axis(a.shape[1], out_hw[0])):
        for xi, (x0, x1, dx) in enumerate(axis(a.shape[2], out_hw[1])):
            for idx in np.ndindex(a.shape[0], a.shape[3]):
                n, c = idx
                v = [f32(a[n, y0, x0, c]), f32(a[n, y1, x0, c]), f32(a[n, y0, x1, c]), f32(a[n, y1, x1, c])]
                t = f32(f32(v[0] * f32(f32(1) - dy)) * f32(f32(1) - dx))
                t = f32(t + f32(f32(v[1] * dy) * f32(f32(1) - dx)))
                t = f32(t + f32(f32(v[2] * f32(f32(1) - dy)) * dx))
                t = f32(t + f32(f32(v[3] * dy) * dx))
                out[n, yi, xi, c] = _roundf(float(t))
    return [out]


_ALPHA = np.random.default_rng(11).integers(-128, 128, [1, 1, 5])
_ALPHA_U8 = np.random.default_rng(11).integers(0, 256, [3, 4, 5])


# case -> (model factory, numpy reference of the outputs from the input codes, narrow codes)
def _ss_ref(a):
    return [a[:, 1:6:2, ::-1, 1]]


def _d2s(a, bs=2):
    n, h, w, c = a.shape
    out = np.empty((n, h * bs, w * bs, c // (bs * bs)), a.dtype)
    for i in range(h * bs):
        for j in range(w * bs):
            out[:, i, j] = a[:, i // bs, j // bs, ((i % bs) * bs + j % bs) * (c // (bs * bs)):][:, :c // (bs * bs)]
    return out


def _s2d(a, bs=2):
    n, h, w, c = a.shape
    out = np.empty((n, h // bs, w // bs, c * bs * bs), a.dtype)
    for i in range(h):
        for j in range(w):
            k = ((i % bs) * bs + j % bs) * c
            out[:, i // bs, j // bs, k:k + c] = a[:, i, j]
    return out


def _nn_ref(a, out_hw, align, half):
    def src(i, n_in, n_out):
        scale = (n_in - 1) / (n_out - 1) if align and n_out > 1 else n_in / n_out
        v = (i + (0.5 if half else 0.0)) * scale
        j = math.floor(v + 0.5) if align else math.floor(v)
        return max(min(j, n_in - 1), 0)
    rows = [src(i, a.shape[1], out_hw[0]) for i in range(out_hw[0])]
    cols = [src(j, a.shape[2], out_hw[1]) for j in range(out_hw[1])]
    return [a[:, rows][:, :, cols]]


def _bilinear_int10_ref(a, out_hw, align, half):
    """LiteRT's int8/int16 reference resize, element by element (10-bit positions)."""
    def axis(n_in, n_out):
        if align and n_out > 1:
            scale = ((1 << 10) * (n_in - 1) + (n_out - 1) // 2) // (n_out - 1)
        else:
            scale = ((1 << 10) * n_in + n_out // 2) // n_out
        res = []
        for i in range(n_out):
            pos = i * scale + (scale // 2 - 512 if half else 0)
            lo = max(int(pos / 1024), 0)
            hi = min(int((pos + 1023) / 1024), n_in - 1)
            res.append((lo, hi, pos - 1024 * lo))
        return res
    out = np.empty((a.shape[0], *out_hw, a.shape[3]), a.dtype)
    for yi, (y0, y1, fy) in enumerate(axis(a.shape[1], out_hw[0])):
        for xi, (x0, x1, fx) in enumerate(axis(a.shape[2], out_hw[1])):
            for n in range(a.shape[0]):
                for c in range(a.shape[3]):
                    acc = (int(a[n, y0, x0, c]) * (1024 - fy) * (1024 - fx) + int(a[n, y1, x0, c]) * fy * (1024 - fx)
                           + int(a[n, y0, x1, c]) * (1024 - fy) * fx + int(a[n, y1, x1, c]) * fy * fx)
                    r = acc + (1 << 19 if acc > 0 else -(1 << 19))
                    out[n, yi, xi, c] = int(r / (1 << 20)) if abs(r) < 2 ** 52 else 0
    return [out]


CASES = {
    "strided_slice_i8": (lambda: strided_slice("int8", [0, 1, 0, 1], [1, 6, 5, 2], [1, 2, -1, 1], (5, 4, 0b1000),
                                               [1, 7, 5, 3], [1, 3, 5]), _ss_ref, False),
    "strided_slice_i16": (lambda: strided_slice("int16", [0, 1, 0, 1], [1, 6, 5, 2], [1, 2, -1, 1], (5, 4, 0b1000),
                                                [1, 7, 5, 3], [1, 3, 5]), _ss_ref, False),
    "strided_slice_neg_begin_i16": (lambda: strided_slice("int16", [0, -6, 0, 0], [0, 0, 0, 2], [1, 1, 1, 1],
                                                          (13, 15, 0), [1, 8, 5, 2], [1, 6, 5, 2]),
                                    lambda a: [a[:, 2:]], False),
    "slice_u8": (lambda: unary("SLICE", [1, 5, 6, 3], [1, 2, 4, 3], "uint8", [[0, 1, 2, 0], [-1, 2, -1, 3]]),
                 lambda a: [a[:, 1:3, 2:]], False),
    "split_i16": (lambda: split("int16"), lambda a: [a[..., 0:2], a[..., 2:4], a[..., 4:6]], False),
    "split_v": (split_v, lambda a: [a[:, :2], a[:, 2:6], a[:, 6:]], False),
    "unpack": (lambda: unary("UNPACK", [1, 3, 4], None, "int8", (), ("UnpackOptions", {"num": 3, "axis": 1}),
                             out_shapes=[[1, 4]] * 3), lambda a: [a[:, 0], a[:, 1], a[:, 2]], False),
    "transpose_i16": (lambda: unary("TRANSPOSE", [1, 3, 4, 5], [1, 5, 3, 4], "int16", [[0, 3, 1, 2]]),
                      lambda a: [a.transpose(0, 3, 1, 2)], False),
    "transpose_moves_unit_batch": (lambda: unary("TRANSPOSE", [1, 1, 4, 5], [1, 1, 5, 4], "int8", [[1, 0, 3, 2]]),
                                   lambda a: [a.transpose(0, 1, 3, 2)], False),
    "tile": (lambda: unary("TILE", [1, 2, 3], [1, 4, 6], "int8", [[1, 2, 2]]),
             lambda a: [np.tile(a, (1, 2, 2))], False),
    "gather_axis2": (lambda: unary("GATHER", [1, 3, 5], [1, 3, 2, 2], "int8", [[[4, 0], [1, 1]]],
                                   ("GatherOptions", {"axis": 2})),
                     lambda a: [a[:, :, [[4, 0], [1, 1]]]], False),
    "squeeze": (lambda: unary("SQUEEZE", [1, 3, 1, 4], [1, 3, 4], "int8", (),
                              ("SqueezeOptions", {"squeeze_dims": [2]})), lambda a: [a[:, :, 0]], False),
    "expand_dims_i16": (lambda: unary("EXPAND_DIMS", [1, 3, 4], [1, 3, 1, 4], "int16",
                                      [np.array([-2], np.int32)]), lambda a: [a[:, :, None]], False),
    "depth_to_space": (lambda: unary("DEPTH_TO_SPACE", [1, 2, 3, 8], [1, 4, 6, 2], "int8", (),
                                     ("DepthToSpaceOptions", {"block_size": 2})), lambda a: [_d2s(a)], False),
    "space_to_depth_u8": (lambda: unary("SPACE_TO_DEPTH", [1, 4, 6, 2], [1, 2, 3, 8], "uint8", (),
                                        ("SpaceToDepthOptions", {"block_size": 2})), lambda a: [_s2d(a)], False),
    "pack_chain": (pack_chain, lambda a: [np.stack([a.reshape(-1, 24, 2)] * 2, axis=1)], False),
    "resize_nn": (lambda: resize("RESIZE_NEAREST_NEIGHBOR", "int8", (3, 5), (7, 8)),
                  lambda a: _nn_ref(a, (7, 8), False, False), False),
    "resize_nn_half_pixel": (lambda: resize("RESIZE_NEAREST_NEIGHBOR", "int8", (3, 5), (6, 9), half=True),
                             lambda a: _nn_ref(a, (6, 9), False, True), False),
    "resize_nn_align_i16": (lambda: resize("RESIZE_NEAREST_NEIGHBOR", "int16", (3, 5), (7, 8), align=True),
                            lambda a: _nn_ref(a, (7, 8), True, False), False),
    "resize_bilinear_half_pixel": (lambda: resize("RESIZE_BILINEAR", "int8", (3, 4), (6, 8), half=True),
                                   lambda a: _bilinear_int10_ref(a, (6, 8), False, True), False),
    "resize_bilinear_align": (lambda: resize("RESIZE_BILINEAR", "int8", (3, 4), (7, 5), align=True),
                              lambda a: _bilinear_int10_ref(a, (7, 5), True, False), False),
    "resize_bilinear_legacy": (lambda: resize("RESIZE_BILINEAR", "int8", (4, 5), (9, 7)),
                               lambda a: _bilinear_int10_ref(a, (9, 7), False, False), False),
    "resize_bilinear_u8": (lambda: resize("RESIZE_BILINEAR", "uint8", (4, 5), (8, 10)),
                           lambda a: _bilinear_float_ref(a, (8, 10), False, False), False),
    "resize_bilinear_u8_half_pixel": (lambda: resize("RESIZE_BILINEAR", "uint8", (4, 5), (8, 10), half=True),
                                      lambda a: _bilinear_float_ref(a, (8, 10), False, True), False),
    "resize_bilinear_i16_half_pixel": (lambda: resize("RESIZE_BILINEAR", "int16", (3, 4), (6, 8), half=True),
                                       lambda a: _bilinear_int10_ref(a, (6, 8), False, True), False),
    "resize_bilinear_i16_align": (lambda: resize("RESIZE_BILINEAR", "int16", (5, 3), (7, 11), align=True),
                                  lambda a: _bilinear_int10_ref(a, (7, 11), True, False), False),
    "resize_bilinear_u8_align": (lambda: resize("RESIZE_BILINEAR", "uint8", (3, 4), (7, 5), align=True),
                                 lambda a: _bilinear_float_ref(a, (7, 5), True, False), True),
    "arg_max_i32": (lambda: arg_max("ARG_MAX", "int8", "int32"), lambda a: [a.argmax(axis=3).astype(np.int32)], True),
    "arg_min_u8_i64": (lambda: arg_max("ARG_MIN", "uint8", "int64"), lambda a: [a.argmin(axis=3)], True),
    "reduce_max": (lambda: unary("REDUCE_MAX", [1, 4, 5, 6], [1, 1, 1, 6], "int8", [[1, 2]],
                                 ("ReducerOptions", {"keep_dims": True})),
                   lambda a: [a.max(axis=(1, 2), keepdims=True)], False),
    "reduce_min_u8": (lambda: unary("REDUCE_MIN", [1, 4, 5, 6], [1, 6], "uint8", [[-2, 1]],
                                    ("ReducerOptions", {"keep_dims": False})),
                      lambda a: [a.min(axis=(1, 2))], True),
    "maximum_broadcast": (lambda: binary_select("MAXIMUM", [1, 1, 4, 1]), lambda a, b: [np.maximum(a, b)], True),
    "minimum": (lambda: binary_select("MINIMUM", [1, 3, 4, 5]), lambda a, b: [np.minimum(a, b)], True),
    "prelu_per_channel": (lambda: prelu("int8", [1, 1, 5], {"scale": 0.01, "zero_point": 3}),
                          lambda a: _prelu_ref(a, _ALPHA, -3, 3, -10, 0.05, 0.01, 0.06, -128, 127), False),
    "prelu_u8_full_alpha": (lambda: prelu("uint8", [3, 4, 5], {"scale": 0.02, "zero_point": 128}),
                            lambda a: _prelu_ref(a, _ALPHA_U8, 120, 128, 100, 0.04, 0.02, 0.06, 0, 255), False),
    "relu": (lambda: unary("RELU", [1, 4, 9], [1, 4, 9], "int8"),
             lambda a: _relu_ref(a, 0.0, None, 0.05, -3, 0.05, -3), False),
    "relu6_rescaled": (lambda: unary("RELU6", [1, 4, 9], [1, 4, 9], "int8", out_q={"scale": 0.03, "zero_point": -128}),
                       lambda a: _relu_ref(a, 0.0, 6.0, 0.05, -3, 0.03, -128), False),
    "relu_n1_to_1_u8": (lambda: unary("RELU_N1_TO_1", [1, 4, 9], [1, 4, 9], "uint8"),
                        lambda a: _relu_ref(a, -1.0, 1.0, 0.04, 120, 0.04, 120), False),
    "hard_swish": (lambda: unary("HARD_SWISH", [1, 16, 16], [1, 16, 16], "int8",
                                 out_q={"scale": 0.031, "zero_point": -100}),
                   lambda a: _hard_swish_ref(a, 0.05, -3, 0.031, -100), False),
    "hard_swish_u8_wide": (lambda: unary("HARD_SWISH", [1, 16, 16], [1, 16, 16], "uint8",
                                         out_q={"scale": 0.2, "zero_point": 20}),
                           lambda a: _hard_swish_ref(a, 0.04, 120, 0.2, 20), False),
    "hard_swish_fine_input": (lambda: unary("HARD_SWISH", [1, 16, 16], [1, 16, 16], "int8",
                                            in_q={"scale": 0.004, "zero_point": 5},
                                            out_q={"scale": 0.003, "zero_point": -120}),
                              lambda a: _hard_swish_ref(a, 0.004, 5, 0.003, -120), False),
    "tanh": (lambda: unary("TANH", [1, 16, 16], [1, 16, 16], "int8",
                           out_q={"scale": 1 / 128, "zero_point": 0}),
             lambda a: _tanh_ref(a, 0.05, -3, 1 / 128, 0), False),
    "cast_i8_i32": (lambda: unary("CAST", [1, 16, 16], [1, 16, 16], "int8", (), None, out_dtype="int32"),
                    lambda a: [a.astype(np.int32)], False),
}


@pytest.fixture(scope="module")
def built():
    return {}


def _model(built, case):
    if case not in built:
        built[case] = CASES[case][0]()
    return built[case]


def _feeds(model, case):
    from mrq.tflite_import import import_tflite_bytes
    graph = import_tflite_bytes(model)
    seed = sum(map(ord, case))
    return {n: _codes((1,) + tuple(graph.tensors[n].shape[1:]), graph.tensors[n].dtype, seed + k,
                      narrow=CASES[case][2]) for k, n in enumerate(graph.inputs)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_vs_numpy_reference(built, case):
    ref = CASES[case][1]
    model = _model(built, case)
    feeds = _feeds(model, case)
    graph, outputs, _ = mrq_run(model, "tflite-int8", feeds)
    expected = ref(*feeds.values())
    for name, exp in zip(graph.outputs, expected):
        got = outputs[name]
        assert got.dtype == exp.dtype and got.shape == exp.shape, (got.dtype, got.shape, exp.dtype, exp.shape)
        assert np.array_equal(got, exp), f"{name}: {np.count_nonzero(got != exp)} mismatches"


@pytest.mark.skipif(litert() is None, reason="ai_edge_litert is not installed")
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_op_vs_litert(built, case, profile):
    model = _model(built, case)
    feeds = _feeds(model, case)
    graph, outputs, trace = mrq_run(model, profile, feeds)
    rows = litert_run(model, feeds, profile, preserve_all=True)
    counts = compare_rows(trace, rows)
    assert set(graph.outputs) <= set(counts), f"outputs not compared: {set(graph.outputs) - set(counts)}"
    bad = {k: v for k, v in counts.items() if v[0]}
    assert not bad, f"mismatching elements (tensor: [mismatches, elements]): {bad}"
    for name, arr in outputs.items():
        assert arr.dtype == rows[0][name].dtype and arr.shape[1:] == rows[0][name].shape[1:]


def test_float_reference_follows_the_integer_model(built):
    """Per-layer fidelity needs the float semantics of every new IR op: the float reference of a
    resize/hard-swish chain stays within a few LSB of the integer simulation."""
    from mrq.api import simulate
    for case in ("resize_bilinear_half_pixel", "hard_swish", "gather_axis2", "reduce_max"):
        model = _model(built, case)
        from mrq.tflite_import import import_tflite_bytes
        graph = import_tflite_bytes(model)
        sim = simulate(graph, "tflite-int8", _feeds(model, case), fidelity=True)
        assert sim.layers and all(row.max_err_lsb <= 2 for row in sim.layers), (case, sim.layers)


# ------------------------------------------------------------------------------------- errors, stop
def _custom_model():
    """CONV-free chain: x -> RESHAPE -> CUSTOM(MyPostProcess) -> z."""
    b = ModelBuilder()
    x = b.tensor("x", [1, 2, 6], "int8", **I8)
    r = b.tensor("r", [1, 12], "int8", **I8)
    b.op("RESHAPE", [x, _const(b, "shape", [1, 12])], [r])
    z = b.tensor("z", [1, 12], "int8", **I8)
    b.op("CUSTOM", [r], [z], custom_code="MyPostProcess")
    return b.finish([x], [z])


def test_custom_op_error_and_stop_before(tmp_path):
    from mrq.errors import UnsupportedOpError
    from mrq.tflite_import import import_tflite
    path = tmp_path / "custom.tflite"
    path.write_bytes(_custom_model())
    with pytest.raises(UnsupportedOpError, match=r"operator 1.*custom op 'MyPostProcess'.*--stop-before 1"):
        import_tflite(str(path))
    graph = import_tflite(str(path), stop_before=1)
    assert graph.outputs == ["r"] and [n.op for n in graph.nodes] == ["Reshape"]


def test_cli_stop_before_end_to_end(tmp_path, capfd):
    from mrq.cli import main
    path = tmp_path / "custom.tflite"
    path.write_bytes(_custom_model())
    x = _codes([1, 2, 6], "int8", 5)
    np.savez(tmp_path / "in.npz", x=x)
    base = ["sim", str(path), "--profile", "tflite-int8", "--inputs", str(tmp_path / "in.npz"),
            "-o", str(tmp_path / "out.npz"), "--no-fidelity", "-q"]
    capfd.readouterr()
    assert main(base) == 2
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "custom op 'MyPostProcess'" in err, err
    assert main([*base, "--stop-before", "1"]) == 0
    with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
        assert list(out.files) == ["r"] and np.array_equal(out["r"], x.reshape(BATCH, 12))
    capfd.readouterr()
    assert main([*base, "--stop-before", "7"]) == 2
    assert "operators 0..1" in capfd.readouterr().err


def _bad_split():
    b = ModelBuilder()
    axis = _const(b, "axis", np.array(2, np.int32).reshape(()))
    x = b.tensor("x", [1, 2, 5], "int8", **I8)
    ys = [b.tensor(f"y{i}", [1, 2, 2], "int8", **I8) for i in range(2)]
    b.op("SPLIT", [axis, x], ys, options=("SplitOptions", {"num_splits": 2}))
    return b.finish([x], ys)


def _dynamic_begin():
    b = ModelBuilder()
    x = b.tensor("x", [1, 4, 4], "int8", **I8)
    begin = b.tensor("begin", [3], "int32")
    y = b.tensor("y", [1, 2, 4], "int8", **I8)
    b.op("STRIDED_SLICE", [x, begin, _const(b, "e", [1, 2, 4]), _const(b, "s", [1, 1, 1])], [y])
    return b.finish([x, begin], [y])


@pytest.mark.parametrize(("factory", "error", "message"), [
    (_bad_split, "ModelError", r"operator 0 \(SPLIT\): 5 elements do not split into 2"),
    (_dynamic_begin, "UnsupportedOpError", r"operator 0.*the begin must be a constant"),
    (lambda: unary("TRANSPOSE", [2, 3], [3, 2], "int8", [[1, 0]]), "UnsupportedOpError",
     r"leading \(batch\) dimension must be 1"),
    (lambda: unary("GATHER", [1, 5], [1, 2], "int8", [[7, 0]], ("GatherOptions", {"axis": 1})),
     "ModelError", r"indices outside \[0, 5\)"),
    (lambda: unary("REDUCE_MAX", [1, 4, 5, 6], [1, 6], "int8", [[-3, 1]]), "ModelError",
     r"output 'y0' has shape \[1, 6\], the op gives \[1, 5, 6\]"),
])
def test_bad_models_are_one_line_errors(factory, error, message):
    from mrq import errors
    from mrq.tflite_import import import_tflite_bytes
    with pytest.raises(getattr(errors, error), match=message) as info:
        import_tflite_bytes(factory())
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------- kernels
def _q11_ref(a, out_hw, align, half):
    """XNNPACK's bilinear resize, element by element: float32 source positions, 11-bit weights,
    horizontal then vertical interpolation in int32, ``(acc + 2**21) >> 22``."""
    f32 = np.float32

    def axis(n_in, n_out):
        adjust = 1 if align and n_out != 1 else 0
        scale = f32(f32(n_in - adjust) / f32(n_out - adjust))
        res = []
        for i in range(n_out):
            pos = f32(f32(i) * scale)
            if half and not align:
                pos = min(max(f32(pos + f32(f32(f32(0.5) * scale) - f32(0.5))), f32(0)), f32(n_in - 1))
            lo = int(pos)
            res.append((lo, min(lo + 1, n_in - 1), int(np.rint(f32(f32(pos - f32(lo)) * f32(2048))))))
        return res
    out = np.empty((a.shape[0], *out_hw, a.shape[3]), a.dtype)
    for yi, (y0, y1, wy) in enumerate(axis(a.shape[1], out_hw[0])):
        for xi, (x0, x1, wx) in enumerate(axis(a.shape[2], out_hw[1])):
            for n, c in np.ndindex(a.shape[0], a.shape[3]):
                tl, tr, bl, br = (int(a[n, y0, x0, c]), int(a[n, y0, x1, c]), int(a[n, y1, x0, c]),
                                  int(a[n, y1, x1, c]))
                top = (tl << 11) + (tr - tl) * wx
                bottom = (bl << 11) + (br - bl) * wx
                out[n, yi, xi, c] = ((top << 11) + (bottom - top) * wy + (1 << 21)) >> 22
    return out


@pytest.mark.parametrize(("dtype", "align", "half"), [("int8", False, False), ("uint8", False, True),
                                                      ("int8", True, False)])
def test_resize_bilinear_q11_kernel_vs_loop(dtype, align, half):
    from simulator.kernels.shape_ops import resize_bilinear
    x = _codes([1, 5, 3, 2], dtype, 21)
    got = resize_bilinear(x, size=(9, 7), mode="q11", align_corners=align, half_pixel_centers=half)
    assert np.array_equal(got, _q11_ref(x, (9, 7), align, half))


def test_take_kernel_checks_its_indices():
    from simulator.kernels.quant import KernelInputError
    from simulator.kernels.shape_ops import take
    x = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    assert np.array_equal(take(x, index=np.array([11, 0]), shape=(2,)), [[11, 0], [23, 12]])
    with pytest.raises(KernelInputError, match="outside"):
        take(x, index=np.array([12]), shape=(1,))
