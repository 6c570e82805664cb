"""ONNX Runtime's CPU float32 kernels for pointwise ops, replicated operation by operation.

ORT runs ``DequantizeLinear -> op -> QuantizeLinear`` as three float kernels when no graph
transform fuses the pattern; its ``QLinearSigmoid`` builds its table with the same float kernel
(``onnxruntime/contrib_ops/cpu/quantization/qlinear_lookup_table.cc``). Where that kernel is a
deterministic float32 algorithm, a table built with these functions equals what ORT computes for
every input code, not just approximately. Each function takes and returns float32 arrays and
names the source it follows; constants are the float32 values of that source (checked against
the bytes of onnxruntime 1.32.0's binary).

The x86-64 MLAS kernels that ORT dispatches to on an FMA3/AVX2 (or AVX-512) host use fused
multiply-adds: :func:`fma` rounds ``a * b + c`` once, as ``vfmadd*ps`` does. The kernels work
element by element (no cross-lane arithmetic), so the value for one input does not depend on
its position in the tensor.
"""
from __future__ import annotations

import numpy as np

from simulator.kernels import ort_eltwise

_F32 = np.float32


def _f32(values) -> np.ndarray:
    return np.asarray(values, dtype=_F32)


# The FMA emulation and MLAS's logistic/tanh kernels are the simulator's (float islands run them
# on whole tensors; here they build tables): one definition of each.
fma = ort_eltwise.fma


def logistic(x) -> np.ndarray:
    """``MlasComputeLogistic`` on x86-64 with FMA3: ``MlasLogisticKernelFma3``
    (onnxruntime/core/mlas/lib/x86_64/LogisticKernelFma3.S): x clamped to [-18, 18],
    ``p / q + 0.5`` floored at 0 (the assembly kernel has no upper clamp)."""
    return ort_eltwise.logistic(_f32(x))


def tanh(x) -> np.ndarray:
    """``MlasComputeTanh<float>`` on x86-64 with FMA3 (``TanhKernelRoutine``): x clamped to
    [-9, 9], ``x * P(x^2) / Q(x^2)``."""
    return ort_eltwise.tanh(_f32(x))


# ----------------------------------------------------------------------------------------- erf
# onnxruntime/core/mlas/lib/erf.cpp (MlasErfConstants): erff of
# https://stackoverflow.com/questions/35148198 (a polynomial below the split, 1 - exp(-poly)
# above it, with MLAS's own expf)
_ERF_UPPER_ABS = _F32(3.925)
_ERF_SPLIT = _F32(0.921875)
_ERF_SMALL = _f32([-5.99104969e-4, 4.99339588e-3, -2.67667342e-2, 1.12818025e-1, -3.76124859e-1,
                   1.28379151e-1])                                   # P0 .. P5 - 1
_ERF_BIG = _f32([1.72948930e-5, -3.83208680e-4, 3.88393435e-3, -2.42545605e-2, 1.06777847e-1,
                 6.34846687e-1, 1.28717512e-1])                      # P0 .. P6 - 1
_EXP_LOWER = _F32(-88.3762626647949)
_EXP_LOG2_RECIPROCAL = _F32(1.44269504088896341)
_EXP_LOG2_HI = _F32(-6.93145752e-1)
_EXP_LOG2_LO = _F32(-1.42860677e-6)
_EXP_POLY = _f32([1.38319808e-3, 8.37550033e-3, 4.16689515e-2, 1.66664466e-1, 4.99999851e-1,
                  1.0, 1.0])                                         # P0 .. P6
_EXP_ROUNDING = _F32(1.25829120e+7)                                  # 1.5 * 2^23


def _erf_exp(v) -> np.ndarray:
    """The expf inside MLAS's erf: ``2^r * poly(v - r * ln2)`` with r = round(v / ln2) by the
    1.5 * 2^23 trick, the power of two built in the exponent field."""
    v = np.maximum(_EXP_LOWER, v)
    r = fma(v, _EXP_LOG2_RECIPROCAL, _EXP_ROUNDING) - _EXP_ROUNDING
    f = fma(r, _EXP_LOG2_HI, v)
    f = fma(r, _EXP_LOG2_LO, f)
    y = np.full_like(f, _EXP_POLY[0])
    for coef in _EXP_POLY[1:]:
        y = fma(f, y, coef)
    scale = ((r.astype(np.int32) + 127) << 23).view(_F32)      # vcvttps2dq truncates
    return y * scale


def erf(x) -> np.ndarray:
    """``MlasComputeErf`` on x86-64 with FMA3: ``MlasErfKernelFma3``
    (onnxruntime/core/mlas/lib/x86_64/ErfKernelFma3.S). |x| clamped to 3.925; the exp branch
    takes |x| >= 0.921875 (``vcmpleps``), the sign is OR-ed back onto the result."""
    x = _f32(x)
    sign = x.view(np.uint32) & np.uint32(0x80000000)
    a = np.minimum(np.abs(x), _ERF_UPPER_ABS)
    a2 = a * a
    small = np.full_like(a, _ERF_SMALL[0])
    for coef in _ERF_SMALL[1:]:
        small = fma(a2, small, coef)
    small = fma(a, small, a)
    big_lane = _ERF_SPLIT <= a
    a_big = np.where(big_lane, a, _F32(0.0))
    big = np.full_like(a, _ERF_BIG[0])
    for coef in _ERF_BIG[1:]:
        big = fma(a_big, big, coef)
    big = fma(a_big, big, a_big)
    big = _F32(1.0) - _erf_exp(-big)
    result = np.where(big_lane, big, small)
    return (result.view(np.uint32) | sign).view(_F32)


# ------------------------------------------------------------------ compositions of the above
_INV_SQRT2 = _F32(0.70710678118654752440)          # M_SQRT1_2
_GELU_TANH_B = _F32(0.7978845608028654)             # sqrt(2 / pi)
_GELU_TANH_C = _F32(0.035677408136300125)           # 0.044715 * sqrt(2 / pi)


def gelu(x, approximate: str = "none") -> np.ndarray:
    """ONNX ``Gelu`` (opset 20) on ORT's CPU provider, onnxruntime/core/providers/cpu/tensor/
    gelu.cc: ``none``: ``u = x * M_SQRT1_2``, :func:`erf` (``MlasComputeErf``), then
    ``0.5f * x * (erf(u) + 1.0f)``; ``tanh``: ``x * (C * x * x + B)`` (plain float32 products, left
    to right), :func:`tanh` (``MlasComputeTanh``), then the same ``0.5f * x * (t + 1.0f)``."""
    x = _f32(x)
    if approximate == "tanh":
        inner = tanh(x * (_GELU_TANH_C * x * x + _GELU_TANH_B))
    else:
        inner = erf(x * _INV_SQRT2)
    return (_F32(0.5) * x) * (inner + _F32(1.0))


def hard_sigmoid(x, alpha: float, beta: float) -> np.ndarray:
    """ORT's CPU ``HardSigmoid`` functor (onnxruntime/core/providers/cpu/activation/
    activations.h, Eigen on the baseline ISA): ``max(0, min(1, alpha * x + beta))``, product and
    sum rounded separately (no FMA)."""
    x = _f32(x)
    return np.maximum(_F32(0.0), np.minimum(_F32(1.0), _F32(alpha) * x + _F32(beta)))


def hard_swish(x) -> np.ndarray:
    """ONNX ``HardSwish`` on ORT: it has no CPU kernel, so the graph holds the op's function body,
    ``Mul(X, HardSigmoid<alpha=1/6, beta=0.5>(X))`` (the float32 attribute 1/6)."""
    x = _f32(x)
    return x * hard_sigmoid(x, 1.0 / 6.0, 0.5)


__all__ = ["erf", "fma", "gelu", "hard_sigmoid", "hard_swish", "logistic", "tanh"]
