"""ONNX Runtime's CPU float32 math kernels that Eigen computes (its elementwise Sqrt, Neg, Abs,
Pow by 2 or 3, and ReduceMean/ReduceSum over the innermost axis), bit for bit.

ORT's Eigen is built for SSE2 (4-float packets; measured against onnxruntime 1.32 on an AVX-512
host: the 8- and 16-lane orders differ). ``sum().`` of one row is Eigen's
``redux_impl<LinearVectorizedTraversal>``: the elements before the first 16-byte aligned one
are left for the end; two packet accumulators take alternate 4-float packets, are added, take
one more packet if one is left, are reduced as ``(l0 + l2) + (l1 + l3)``; then the leading
unaligned elements and the tail are added one by one. Rows of a tensor whose 64-byte aligned
buffer ORT allocates start at element ``row * n``, so a row's alignment is ``(row * n) % 4``.
"""
from __future__ import annotations

import numpy as np

from simulator.errors import KernelInputError

_F32 = np.float32
_PACKET = 4
MATH_OPS = ("Sqrt", "Neg", "Abs", "Square", "Cube", "FastGelu")


def math(op: str, x) -> np.ndarray:
    """``Sqrt`` (IEEE), ``Neg``, ``Abs``, ``Square`` (Pow by 2: ``x * x``) and ``Cube`` (Pow by
    3: ``x * x * x``), as ORT's element_wise_ops compute them."""
    x = np.asarray(x, _F32)
    with np.errstate(all="ignore"):
        if op == "Sqrt":
            y = np.sqrt(x)
        elif op == "Neg":
            y = -x
        elif op == "Abs":
            y = np.abs(x)
        elif op == "Square":
            y = x * x
        elif op == "Cube":
            y = (x * x) * x
        elif op == "FastGelu":
            y = fast_gelu(x)
        else:
            raise KernelInputError(f"float math op {op!r} is not one of {list(MATH_OPS)}")
    return np.ascontiguousarray(y, dtype=_F32)


def _row_sum(row: np.ndarray, start: int) -> np.float32:
    n = row.size
    if n - start < _PACKET:   # no whole packet: in order
        s = row[0] if n else _F32(0.0)
        for v in row[1:]:
            s = _F32(s + v)
        return _F32(s)
    size2 = ((n - start) // (2 * _PACKET)) * (2 * _PACKET)
    size1 = ((n - start) // _PACKET) * _PACKET
    end2, end1 = start + size2, start + size1
    p0 = row[start:start + _PACKET].copy()
    if size1 > _PACKET:
        p1 = row[start + _PACKET:start + 2 * _PACKET].copy()
        for i in range(start + 2 * _PACKET, end2, 2 * _PACKET):
            p0 = p0 + row[i:i + _PACKET]
            p1 = p1 + row[i + _PACKET:i + 2 * _PACKET]
        p0 = p0 + p1
        if end1 > end2:
            p0 = p0 + row[end2:end2 + _PACKET]
    s = _F32((p0[0] + p0[2]) + (p0[1] + p0[3]))
    for v in row[:start]:
        s = _F32(s + v)
    for v in row[end1:]:
        s = _F32(s + v)
    return s


def sum_last(x) -> np.ndarray:
    """Eigen's ``sum()`` of every innermost row of float32 ``x`` (module docstring)."""
    x = np.ascontiguousarray(x, _F32)
    rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    n = rows.shape[1]
    with np.errstate(all="ignore"):
        out = np.array([_row_sum(r, (-(k * n)) % _PACKET) for k, r in enumerate(rows)], _F32)
    return out.reshape(x.shape[:-1])


def reduce_mean_last(x, keepdims: bool) -> np.ndarray:
    """ORT's ReduceMean over the innermost axis (``FastReduceKR``): the row sums, each divided
    by the row length in float32."""
    x = np.asarray(x, _F32)
    with np.errstate(all="ignore"):
        y = (sum_last(x) / _F32(x.shape[-1])).astype(_F32)
    return np.ascontiguousarray(y[..., None] if keepdims else y)


# FastGelu (contrib_ops/cpu/bert/bias_gelu.cc): the float32 constants ORT writes
_GELU_B = _F32(0.7978845608028654)     # sqrt(2 / pi)
_GELU_C = _F32(0.035677408136300125)   # 0.044715 * sqrt(2 / pi)
# rows at least this long go to MLAS's kernel in SimplifiedLayerNormalization (measured, 1.32)
RMS_MLAS_MIN_ROW = 16


def fast_gelu(x) -> np.ndarray:
    """ORT's FastGelu without bias: ``t = x * (C * x * x + B)`` (no FMA), MLAS's tanh of ``t``
    (simulator/kernels/ort_eltwise.py), then ``(0.5 * x) * (tanh + 1)``."""
    from simulator.kernels.ort_eltwise import tanh
    x = np.asarray(x, _F32)
    with np.errstate(all="ignore"):
        t = (x * ((_GELU_C * x * x).astype(_F32) + _GELU_B)).astype(_F32)
        return np.ascontiguousarray(((_F32(0.5) * x).astype(_F32) * (tanh(t) + _F32(1.0))).astype(_F32))


def rms_norm_last(x, scale, epsilon: float) -> np.ndarray:
    """ORT 1.32's SimplifiedLayerNormalization over the innermost axis (the fused form of T5's
    RMSNorm), measured against it: rows of ``n >= 16`` sum their squares in 8 float32 lanes by
    FMA (``acc_j = fma(x, x, acc_j)`` over elements ``8k + j``), combine them as
    ``((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`` and fuse the leftover squares in order;
    ``den = sqrtf(sum / n + eps)``, ``y = f32(f32(x * f32(1 / den)) * scale)``. Shorter rows sum
    ``f32(x * x)`` in order and compute ``y = f32(f32(x / den) * scale)``."""
    from simulator.kernels.ort_eltwise import fma
    x = np.asarray(x, _F32)
    scale = np.asarray(scale, _F32)
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    eps = _F32(epsilon)
    with np.errstate(all="ignore"):
        if n >= RMS_MLAS_MIN_ROW:
            acc = np.zeros((rows.shape[0], 8), _F32)
            n8 = (n // 8) * 8
            for k in range(0, n8, 8):
                acc = fma(rows[:, k:k + 8], rows[:, k:k + 8], acc)
            total = (((acc[:, 0] + acc[:, 4]) + (acc[:, 2] + acc[:, 6]))
                     + ((acc[:, 1] + acc[:, 5]) + (acc[:, 3] + acc[:, 7]))).astype(_F32)
            for k in range(n8, n):
                total = fma(rows[:, k], rows[:, k], total)
        else:
            total = np.zeros(rows.shape[0], _F32)
            for k in range(n):
                total = (total + (rows[:, k] * rows[:, k]).astype(_F32)).astype(_F32)
        den = np.sqrt(((total / _F32(n)).astype(_F32) + eps).astype(_F32))[:, None]
        if n >= RMS_MLAS_MIN_ROW:
            y = ((rows * (_F32(1.0) / den).astype(_F32)).astype(_F32) * scale).astype(_F32)
        else:
            y = ((rows / den).astype(_F32) * scale).astype(_F32)
    return np.ascontiguousarray(y.reshape(x.shape))
