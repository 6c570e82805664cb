"""Slow references of ONNX Runtime's dynamic quantization arithmetic (core/util/qmath.h
``GetQuantizationParameter<uint8_t>``, MLAS ``QuantizeLinear``, ``MatMulInteger``, the
``MLAS_QGEMM_SCALE_BIAS_OUTPUT_PROCESSOR``), one float32 operation per line and Python ints."""
from __future__ import annotations

import numpy as np

F32 = np.float32


def dynamic_quantize(x):
    """``(codes uint8, scale float32, zero point int)`` of float32 ``x``."""
    values = [F32(v) for v in np.asarray(x, np.float32).ravel()]
    lo = min(values + [F32(0)])
    hi = max(values + [F32(0)])
    scale = F32(1) if hi == lo else F32(F32(hi - lo) / F32(255))
    initial = F32(F32(0) - F32(lo / scale))
    zero_point = int(np.rint(F32(min(max(initial, F32(0)), F32(255)))))
    codes = [min(max(int(np.rint(F32(v / scale))) + zero_point, 0), 255) for v in values]
    return np.array(codes, np.uint8).reshape(np.shape(x)), scale, zero_point


def matmul_integer(a, b, zero_point_a, zero_point_b):
    """2-D ``sum_k (a[m, k] - za) * (b[k, n] - zb[n])`` wrapped to int32."""
    zb = np.broadcast_to(np.asarray(zero_point_b).reshape(-1), (b.shape[1],))
    out = np.zeros((a.shape[0], b.shape[1]), np.int64)
    for m in range(a.shape[0]):
        for n in range(b.shape[1]):
            acc = sum((int(a[m, k]) - int(zero_point_a)) * (int(b[k, n]) - int(zb[n]))
                      for k in range(a.shape[1]))
            out[m, n] = (acc + 2**31) % 2**32 - 2**31
    return out.astype(np.int32)


def scale_bias(acc, scale_a, scale_b, bias=None):
    """``f32(f32(f32(acc) * f32(scale_a * scale_b[n])) + bias[n])`` element by element."""
    acc = np.asarray(acc)
    n_cols = acc.shape[-1]
    sb = np.broadcast_to(np.asarray(scale_b, np.float32).reshape(-1), (n_cols,))
    out = np.empty(acc.shape, np.float32)
    for idx in np.ndindex(*acc.shape):
        m = F32(F32(scale_a) * sb[idx[-1]])
        v = F32(F32(int(acc[idx])) * m)
        if bias is not None:
            v = F32(v + F32(np.asarray(bias, np.float32).reshape(-1)[idx[-1] % np.size(bias)]))
        out[idx] = v
    return out
