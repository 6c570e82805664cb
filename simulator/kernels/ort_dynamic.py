"""Kernels of ONNX Runtime's dynamic quantization (``onnxruntime.quantization.quantize_dynamic``):
``DynamicQuantizeLinear`` (a uint8 grid computed from each tensor at run time), ``MatMulInteger``
with run-time zero points, and the float tail ``f32(f32(f32(acc) * f32(s_a * s_b)) + bias)``
of ORT's ``MatMulIntegerToFloat`` / ``DynamicQuantizeMatMul`` (MLAS's
``MLAS_QGEMM_SCALE_BIAS_OUTPUT_PROCESSOR``: a multiply, then a separate add, no FMA).

Every float operation here is one IEEE single operation, so the results are exact, not close."""
from __future__ import annotations

import numpy as np
from numba import njit

from simulator.kernels.pair_sums import check_pair_sums, pair_excess
from simulator.kernels.quant import KernelInputError, check_int_array, quantize

_U8_MAX = np.float32(255.0)


@njit(cache=True)
def _min_max(x1):
    """Smallest and largest element (NaNs skipped, as no finite answer depends on them)."""
    lo = np.float32(np.inf)
    hi = np.float32(-np.inf)
    for v in x1:
        lo = min(lo, v)
        hi = max(hi, v)
    return lo, hi


def dynamic_qparams(x: np.ndarray) -> tuple:
    """``(scale float32, zero_point int)`` of ORT's ``GetQuantizationParameter<uint8_t>``
    (core/util/qmath.h), one operation at a time in float32:
    ``min = min(min(x), 0)``, ``max = max(max(x), 0)``, ``scale = max == min ? 1 : (max - min) /
    255``, ``zp = RoundHalfToEven(clamp(0 - min / scale, 0, 255))``."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise KernelInputError(f"dynamic quantize: expected a float32 array, got "
                               f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.size == 0:
        lo = hi = np.float32(0.0)
    else:
        lo, hi = _min_max(np.ascontiguousarray(x).reshape(-1))
        lo, hi = np.float32(lo), np.float32(hi)
    zero = np.float32(0.0)
    lo = min(zero, lo)      # std::min(min, 0.0f) keeps min when equal
    hi = max(zero, hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise KernelInputError("dynamic quantize: the input holds an infinity, which gives no "
                               "finite grid")
    with np.errstate(over="ignore"):
        scale = np.float32(1.0) if hi == lo else np.float32(np.float32(hi - lo) / _U8_MAX)
    if not np.isfinite(scale) or scale == 0:
        raise KernelInputError(f"dynamic quantize: the input range [{lo}, {hi}] gives the "
                               f"scale {scale}")
    initial = np.float32(zero - np.float32(lo / scale))
    initial = min(max(initial, zero), _U8_MAX)
    return scale, int(np.rint(np.float32(initial)))


def dynamic_quantize(x: np.ndarray) -> tuple:
    """ORT's ``DynamicQuantizeLinear``: ``(codes uint8 like x, scale float32 0-d,
    zero_point uint8 0-d, saturated count)``; the codes are MLAS ``QuantizeLinear``
    (``x / scale`` in float32, clamped, rounded half to even, plus the zero point)."""
    scale, zp = dynamic_qparams(x)
    codes, n_sat = quantize(np.ascontiguousarray(x), scale=np.array([scale], np.float32),
                            zero_point=np.array([zp], np.int64), rounding="half_even",
                            method="divide", out_min=0, out_max=255, out_dtype="uint8")
    return codes, np.array(scale, np.float32), np.array(zp, np.uint8), n_sat


@njit(cache=True)
def _matmul_int_2d(a, b, za, zb, out):
    """``out[m, n] = sum_k (a[m, k] - za) * (b[k, n] - zb[n])`` in int64 (exact)."""
    m_rows, depth = a.shape
    n_cols = b.shape[1]
    for m in range(m_rows):
        for n in range(n_cols):
            acc = np.int64(0)
            zbn = np.int64(zb[n])
            for k in range(depth):
                acc += (np.int64(a[m, k]) - za) * (np.int64(b[k, n]) - zbn)
            out[m, n] = acc


def matmul_integer(a: np.ndarray, b: np.ndarray, zero_point_a, zero_point_b,
                   pair_sums: str = "exact") -> np.ndarray:
    """ONNX ``MatMulInteger`` as ORT computes it: numpy matmul broadcasting of the leading
    dimensions (a 1-D operand promoted as numpy does), ``zero_point_a`` a scalar,
    ``zero_point_b`` a scalar or one per column of ``b``; the int32 result wraps as MLAS's
    int32 accumulator does. ``pair_sums`` ``saturate_int16`` (uint8 ``a``, int8 ``b``): plus
    :func:`simulator.kernels.pair_sums.pair_excess` of each 2-D product (MLAS without VNNI)."""
    check_int_array("matmul_integer input a", a, ("int8", "uint8"))
    check_int_array("matmul_integer input b", b, ("int8", "uint8"))
    za = np.asarray(zero_point_a).reshape(-1)
    zb = np.asarray(zero_point_b).reshape(-1)
    if za.size != 1:
        raise KernelInputError(f"matmul_integer: a's zero point must be a scalar, got {za.size} values")
    a2 = a[np.newaxis, :] if a.ndim == 1 else a
    b2 = b[:, np.newaxis] if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise KernelInputError(f"matmul_integer: {list(a.shape)} @ {list(b.shape)}: inner "
                               f"dimensions differ")
    n_cols = b2.shape[-1]
    if zb.size not in (1, n_cols):
        raise KernelInputError(f"matmul_integer: b's zero point has {zb.size} values for "
                               f"{n_cols} columns")
    try:
        lead = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise KernelInputError(f"matmul_integer: leading dimensions of {list(a.shape)} and "
                               f"{list(b.shape)} do not broadcast") from None
    zb_cols = np.ascontiguousarray(np.broadcast_to(zb.astype(np.int64), (n_cols,)))
    a_b = np.broadcast_to(a2, lead + a2.shape[-2:])
    b_b = np.broadcast_to(b2, lead + b2.shape[-2:])
    out = np.empty(lead + (a2.shape[-2], n_cols), np.int64)
    paired = check_pair_sums(pair_sums) != "exact"
    for idx in np.ndindex(*lead):
        a_i, b_i = np.ascontiguousarray(a_b[idx]), np.ascontiguousarray(b_b[idx])
        _matmul_int_2d(a_i, b_i, np.int64(za[0]), zb_cols, out[idx])
        if paired:
            out[idx] += pair_excess(a_i, b_i)
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return out.astype(np.int32)   # two's-complement wrap, as MLAS's int32 sums


@njit(cache=True)
def _scale_bias(acc2, mult, bias, has_bias, lo, hi, out2):
    for r in range(acc2.shape[0]):
        for c in range(acc2.shape[1]):
            v = np.float32(acc2[r, c]) * mult[c]
            if has_bias:
                v = np.float32(v + bias[c])
            v = max(v, lo)
            v = min(v, hi)
            out2[r, c] = v


def scale_bias(acc: np.ndarray, multiplier: np.ndarray, bias=None, lo=None, hi=None) -> np.ndarray:
    """``y = f32(f32(f32(acc) * multiplier[n]) + bias[n])`` along the last axis (``multiplier``
    and ``bias`` one value or one per column), then ``max(y, lo)``, ``min(y, hi)`` (a float
    Relu/Clip after it: exact, so it may be fused)."""
    check_int_array("scale_bias input", acc, ("int32",))
    n_cols = acc.shape[-1] if acc.ndim else 1
    mult = np.ascontiguousarray(np.broadcast_to(np.asarray(multiplier, np.float32).reshape(-1), (n_cols,)))
    has_bias = bias is not None
    b = (np.ascontiguousarray(np.broadcast_to(np.asarray(bias, np.float32).reshape(-1), (n_cols,)))
         if has_bias else np.zeros(n_cols, np.float32))
    acc2 = np.ascontiguousarray(acc).reshape(-1, n_cols)
    out = np.empty(acc2.shape, np.float32)
    _scale_bias(acc2, mult, b, has_bias, np.float32(-np.inf if lo is None else lo),
                np.float32(np.inf if hi is None else hi), out)
    return out.reshape(acc.shape)
