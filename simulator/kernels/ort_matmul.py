"""Kernel of the ``float_matmul`` step: ONNX ``MatMul`` of two float32 tensors (and ORT's
``com.microsoft::FusedMatMul``, which its optimizer makes of a MatMul with a Transpose of the last
two axes on an input and a Mul/Div by a scalar constant) as ONNX Runtime 1.32's CPU provider
computes it with one intra-op thread on x86-64 (``MatMul<float>::Compute``,
onnxruntime/core/providers/cpu/math/matmul.cc).

ORT's ``MatMulComputeHelper`` shapes the product like ``numpy.matmul``: a 1-D left operand is one
row, a 1-D right one is one column; leading (batch) axes broadcast, and each output matrix is one
MLAS SGEMM (``MlasGemmBatch``: per matrix ``MlasSgemmOperation``) of its two operand matrices.
One case is a single SGEMM instead: an untransposed left operand of rank >= the right one's and
a right operand whose leading axes are all 1 (a weight matrix) fold the left's leading axes into
M. The arithmetic of each SGEMM is :func:`simulator.kernels.ort_conv.sgemm`'s (one definition):
``trans_a`` / ``trans_b`` select its kernels and K slice, ``alpha`` is applied inside it. A
constant 2-D right operand is packed by ORT ahead of time (``MatMul<float>::PrePack``): its SGEMM
is MLAS's packed one (fixed K slices of 256, no one-row kernels).
"""
from __future__ import annotations

import numpy as np

from simulator.errors import KernelInputError
from simulator.kernels.ort_conv import sgemm


def _check(a, b) -> None:
    for what, x in (("left", a), ("right", b)):
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 1:
            raise KernelInputError(f"matmul_ort: the {what} operand must be a float32 array of "
                                   f"rank >= 1")


def matmul_ort(a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False,
               alpha: float = 1.0, packed_b: bool = False) -> np.ndarray:
    """ORT's float32 ``alpha * op(a) @ op(b)`` (``op`` transposes the last two axes when asked;
    as in ORT a 1-D operand is never transposed). ``packed_b``: ``b`` is a constant 2-D weight,
    which ORT packs ahead and multiplies with MLAS's packed SGEMM."""
    _check(a, b)
    if packed_b and b.ndim != 2:
        raise KernelInputError(f"matmul_ort: a packed weight is 2-D, got {list(b.shape)}")
    trans_a = bool(trans_a) and a.ndim != 1
    trans_b = bool(trans_b) and b.ndim != 1
    if not trans_a and a.ndim >= 2 and b.ndim >= 2 and a.ndim >= b.ndim and \
            int(np.prod(b.shape[:-2], dtype=np.int64)) == 1:
        weight = b.reshape(b.shape[-2:])
        weight = weight.T if trans_b else weight
        k = a.shape[-1]
        if weight.shape[0] != k:
            raise KernelInputError(f"matmul_ort: {list(a.shape)} @ {list(b.shape)} "
                                   f"(trans_b={trans_b}): inner dimensions differ")
        rows = np.ascontiguousarray(a).reshape(-1, k)
        out = np.zeros((rows.shape[0], weight.shape[1]), np.float32)
        sgemm(rows, weight, out, accumulate=False, trans_b=trans_b, alpha=alpha, packed_b=packed_b)
        return out.reshape(a.shape[:-1] + (weight.shape[1],))
    if b.ndim == 1 and trans_a:
        raise KernelInputError("matmul_ort: a transposed left operand times a vector (ORT reads "
                               "the left operand's memory untransposed there)")
    left = a.reshape(1, -1) if a.ndim == 1 else a
    if b.ndim == 1 and a.ndim >= 2:
        # ORT makes each row of the left operand a one-row matrix of its own (M = 1 per SGEMM)
        left = a.reshape(a.shape[:-1] + (1, a.shape[-1]))
    right = b.reshape(-1, 1) if b.ndim == 1 else b
    left = np.swapaxes(left, -1, -2) if trans_a else left
    right = np.swapaxes(right, -1, -2) if trans_b else right
    m, k = left.shape[-2:]
    n = right.shape[-1]
    if right.shape[-2] != k:
        raise KernelInputError(f"matmul_ort: {list(a.shape)} @ {list(b.shape)} (trans_a={trans_a}, "
                               f"trans_b={trans_b}): inner dimensions differ")
    try:
        batch = np.broadcast_shapes(left.shape[:-2], right.shape[:-2])
    except ValueError:
        raise KernelInputError(f"matmul_ort: batch axes of {list(a.shape)} and {list(b.shape)} "
                               f"do not broadcast") from None
    left = np.broadcast_to(left, batch + (m, k))
    right = np.broadcast_to(right, batch + (k, n))
    out = np.zeros(batch + (m, n), np.float32)
    for idx in np.ndindex(*batch):
        sgemm(left[idx], right[idx], out[idx], accumulate=False, trans_a=trans_a,
              trans_b=trans_b, alpha=alpha, packed_b=packed_b)
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0, 0] if a.ndim >= 2 else out[..., 0]
    return out
