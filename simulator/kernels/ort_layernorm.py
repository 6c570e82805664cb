"""Kernel of the ``layernorm_ort`` step: ONNX ``LayerNormalization`` as ONNX Runtime 1.32's CPU
provider computes it in float32 on x86-64, operation by operation (read from the shipped
binary: ``LayerNormImpl::ComputeWithoutContext<float, float>`` and the MLAS kernel it calls).

A row is the ``n = prod(shape[axis:])`` values normalised together. Two algorithms, chosen by
``n`` (ORT calls MLAS's AVX2/FMA kernel for ``n >= 8`` and runs its scalar loop below that):

- ``n >= 8`` (MLAS): the mean is summed in float64 in 4 lanes (lane ``j`` takes elements
  ``4k + j``), the lanes combined as ``(l0 + l2) + (l1 + l3)``, the leftover elements added in
  order, then ``mean = f32(sum / n)``. The variance is summed in float32 in 8 lanes with fused
  multiply-adds ``acc_j = fma(d, d, acc_j)`` of ``d = f32(x - mean)``, combined as
  ``((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))``; of the ``n mod 8`` leftover elements a
  first group of four adds ``f32(d * d)`` one by one, the rest are fused again. Then
  ``var = f32(f32(total / n) + epsilon)``, ``inv = f32(1 / sqrtf(var))`` and
  ``y = fma(f32(d * inv), scale, bias)`` (without bias: ``f32(f32(d * inv) * scale)``).
- ``n < 8`` (scalar): Welford's running mean and sum of squares in float32
  (``delta = x - mean; mean += delta / (i + 1); m2 += (x - mean) * delta``), ``var`` and the
  square root as above, and ``y = f32(f32(f32(d / sqrtf(var)) * scale) + bias)``, no FMA.

Scale and bias hold exactly ``n`` values (ORT takes another, double-precision path when they
broadcast; the importer refuses that case).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from simulator.errors import KernelInputError
from simulator.primitives import f32_add, f32_div, f32_mul, f32_sub, fma_f32, int_to_f32

# below this row length ORT 1.32 does not call the MLAS kernel (``norm_size > 7``)
MLAS_MIN_ROW = 8


@njit(cache=True)
def _sqrtf(v):
    # the float64 root of a float32 rounds to the correctly rounded float32 root
    return np.float32(math.sqrt(np.float64(v)))


@njit(cache=True)
def _row_mlas(x, scale, bias, has_bias, eps, out):
    n = x.size
    l0 = 0.0
    l1 = 0.0
    l2 = 0.0
    l3 = 0.0
    n4 = (n // 4) * 4
    for k in range(0, n4, 4):
        l0 += np.float64(x[k])
        l1 += np.float64(x[k + 1])
        l2 += np.float64(x[k + 2])
        l3 += np.float64(x[k + 3])
    total64 = (l0 + l2) + (l1 + l3)
    for i in range(n4, n):
        total64 += np.float64(x[i])
    mean = np.float32(total64 / np.float64(n))

    acc = np.zeros(8, np.float32)
    n8 = (n // 8) * 8
    for k in range(0, n8, 8):
        for j in range(8):
            d = f32_sub(x[k + j], mean)
            acc[j] = fma_f32(d, d, acc[j])
    w0 = f32_add(f32_add(acc[2], acc[6]), f32_add(acc[0], acc[4]))
    w1 = f32_add(f32_add(acc[3], acc[7]), f32_add(acc[1], acc[5]))
    total = f32_add(w0, w1)
    start = n8
    if n - n8 >= 4:
        for i in range(n8, n8 + 4):
            d = f32_sub(x[i], mean)
            total = f32_add(total, f32_mul(d, d))
        start = n8 + 4
    for i in range(start, n):
        d = f32_sub(x[i], mean)
        total = fma_f32(d, d, total)
    var = f32_add(f32_div(total, int_to_f32(n)), eps)
    inv = f32_div(np.float32(1.0), _sqrtf(var))
    for i in range(n):
        t = f32_mul(f32_sub(x[i], mean), inv)
        out[i] = fma_f32(t, scale[i], bias[i]) if has_bias else f32_mul(t, scale[i])


@njit(cache=True)
def _row_scalar(x, scale, bias, has_bias, eps, out):
    n = x.size
    mean = np.float32(0.0)
    m2 = np.float32(0.0)
    for i in range(n):
        delta = f32_sub(x[i], mean)
        mean = f32_add(mean, f32_div(delta, int_to_f32(i + 1)))
        m2 = f32_add(m2, f32_mul(f32_sub(x[i], mean), delta))
    var = f32_add(f32_div(m2, int_to_f32(n)), eps)
    std = _sqrtf(var)
    for i in range(n):
        y = f32_mul(f32_div(f32_sub(x[i], mean), std), scale[i])
        out[i] = f32_add(y, bias[i]) if has_bias else y


@njit(cache=True)
def _layernorm_rows(x2, scale, bias, has_bias, eps, out2):
    mlas = x2.shape[1] >= MLAS_MIN_ROW
    for r in range(x2.shape[0]):
        if mlas:
            _row_mlas(x2[r], scale, bias, has_bias, eps, out2[r])
        else:
            _row_scalar(x2[r], scale, bias, has_bias, eps, out2[r])


def layernorm_ort(x: np.ndarray, *, scale, bias=None, epsilon: float, axis: int) -> np.ndarray:
    """ONNX Runtime's float32 LayerNormalization of ``x`` over ``shape[axis:]`` (module
    docstring); ``scale``/``bias`` hold ``prod(shape[axis:])`` float32 values (bias optional)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise KernelInputError("layernorm_ort: the input must be a float32 array")
    if not -x.ndim <= axis < x.ndim:
        raise KernelInputError(f"layernorm_ort: axis {axis} for a rank-{x.ndim} input")
    ax = axis % x.ndim
    n = int(np.prod(x.shape[ax:], dtype=np.int64))
    rows = int(np.prod(x.shape[:ax], dtype=np.int64))
    scale = np.ascontiguousarray(scale, np.float32).reshape(-1)
    has_bias = bias is not None
    bias = np.ascontiguousarray(bias if has_bias else np.zeros(n), np.float32).reshape(-1)
    if scale.size != n or bias.size != n:
        raise KernelInputError(f"layernorm_ort: scale and bias need {n} values (the size of "
                               f"shape[{ax}:] of {list(x.shape)}), got {scale.size} and "
                               f"{bias.size if has_bias else 'none'}")
    out = np.empty(x.shape, np.float32)
    if x.size:
        _layernorm_rows(np.ascontiguousarray(x).reshape(rows, n), scale, bias, has_bias,
                        np.float32(epsilon), out.reshape(rows, n))
    return out
