"""Kernel of the ``convtranspose_ort`` step: a 2-D ONNX ``ConvTranspose`` with float32 weights as
ONNX Runtime's CPU provider computes it (onnxruntime/core/providers/cpu/nn/conv_transpose.cc,
``ConvTranspose<float>``), for one group.

Per image, ORT first forms ``col = W^T @ X`` with MLAS's SGEMM (``kernel_dim = M * KH * KW``
rows, ``H * W`` columns, ``K = C`` input channels): each element is a chain of fused
multiply-adds over the input channels in order, starting from 0; SGEMM cuts ``K`` into slices of
``stride_k`` and adds each slice's chain to the running value (``C = acc + C``). ``Col2im`` then
scatters the columns into a zeroed output: channel by channel, kernel row and column outer, input
rows and columns inner, each tap a float32 addition (taps outside the output are dropped). The
bias is added last, one float32 addition per element.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from simulator.errors import KernelInputError
from simulator.primitives import f32_add, fma_f32

# MLAS_SGEMM_STRIDEN / MLAS_SGEMM_STRIDEK (onnxruntime/core/mlas/lib/mlasi.h)
_SGEMM_STRIDE_N = 128
_SGEMM_STRIDE_K = 128


def sgemm_stride_k(n: int, k: int) -> int:
    """The K slice of ``MlasSgemmOperation`` for an ``N``-column, ``K``-deep product (untransposed
    A): a small K widens the N slice instead; a small N deepens the K slice."""
    stride_n, stride_k = _SGEMM_STRIDE_N, _SGEMM_STRIDE_K
    if n >= k:
        while stride_k // 2 >= k:
            stride_n *= 2
            stride_k //= 2
    else:
        while stride_n > 16 and stride_n // 2 >= n:
            stride_k *= 2
            stride_n //= 2
    return stride_k


@njit(cache=True)
def _col(x2, wt, stride_k, col):
    """``col[i, j] = sum_k wt[i, k] * x2[k, j]`` as MLAS's SGEMM chains it."""
    rows, depth = wt.shape
    cols = x2.shape[1]
    for i in range(rows):
        for j in range(cols):
            total = np.float32(0.0)
            for k0 in range(0, depth, stride_k):
                acc = np.float32(0.0)
                for k in range(k0, min(depth, k0 + stride_k)):
                    acc = fma_f32(wt[i, k], x2[k, j], acc)
                total = acc if k0 == 0 else f32_add(acc, total)
            col[i, j] = total


@njit(cache=True)
def _col2im(col, m_out, kh, kw, sh, sw, dh, dw, pad_t, pad_l, in_h, in_w, y):
    oh, ow = y.shape[1], y.shape[2]
    for m in range(m_out):
        for ky in range(kh):
            for kx in range(kw):
                row = (m * kh + ky) * kw + kx
                for iy in range(in_h):
                    oy = iy * sh - pad_t + ky * dh
                    if oy < 0 or oy >= oh:
                        continue
                    for ix in range(in_w):
                        ox = ix * sw - pad_l + kx * dw
                        if 0 <= ox < ow:
                            y[m, oy, ox] = f32_add(y[m, oy, ox], col[row, iy * in_w + ix])


@njit(cache=True)
def _add_bias(y, bias):
    for m in range(y.shape[0]):
        for oy in range(y.shape[1]):
            for ox in range(y.shape[2]):
                y[m, oy, ox] = f32_add(y[m, oy, ox], bias[m])


def convtranspose_ort(x: np.ndarray, *, weight, bias=None, strides=(1, 1), pads=(0, 0, 0, 0),
                      dilations=(1, 1), output_size) -> np.ndarray:
    """ORT's float32 ConvTranspose of NCHW ``x`` (module docstring); ``weight`` [C, M, KH, KW]
    (ONNX layout, one group), ``pads`` (top, left, bottom, right), ``output_size`` (OH, OW) with
    any ``output_padding`` included."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        raise KernelInputError("convtranspose_ort: the input must be a 4-D float32 array")
    weight = np.ascontiguousarray(weight, np.float32)
    n, c, in_h, in_w = x.shape
    if weight.ndim != 4 or weight.shape[0] != c:
        raise KernelInputError(f"convtranspose_ort: weight {list(weight.shape)} for {c} input channels")
    m_out, kh, kw = weight.shape[1:]
    oh, ow = (int(v) for v in output_size)
    bias_arr = None if bias is None else np.ascontiguousarray(bias, np.float32).reshape(-1)
    if bias_arr is not None and bias_arr.size != m_out:
        raise KernelInputError(f"convtranspose_ort: {bias_arr.size} bias values for {m_out} channels")
    # W^T: row (m, ky, kx), column k
    wt = np.ascontiguousarray(weight.reshape(c, m_out * kh * kw).T)
    stride_k = sgemm_stride_k(in_h * in_w, c)
    out = np.zeros((n, m_out, oh, ow), np.float32)
    col = np.empty((m_out * kh * kw, in_h * in_w), np.float32)
    for b in range(n):
        _col(np.ascontiguousarray(x[b]).reshape(c, in_h * in_w), wt, stride_k, col)
        _col2im(col, m_out, kh, kw, int(strides[0]), int(strides[1]), int(dilations[0]),
                int(dilations[1]), int(pads[0]), int(pads[1]), in_h, in_w, out[b])
        if bias_arr is not None:
            _add_bias(out[b], bias_arr)
    return out
