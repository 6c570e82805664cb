"""Quantized softmax. Only ``mode='float'`` exists for now.

``float``: ``x_f = f32(f32(x - z_in) * s_in)``; in float64 ``e = exp(x_f - max(x_f))``,
``y = e / sum(e)`` along ``axis`` (numpy's exp and pairwise sum); ``y32 = f32(y)``; then quantize by
division: ``q = clamp(round(f32(y32 / s_out)) + z_out)``. This is a reference-style softmax, not a
model of a particular runtime: exp is not correctly rounded anywhere, so a peer can differ by one
code near rounding boundaries.
"""
from __future__ import annotations

import numpy as np

from simulator.errors import KernelInputError
from simulator.kernels.quant import check_int_array, check_out_range, quantize


def softmax_float(x, *, axis, scale_in, zero_point_in, scale_out, zero_point_out,
                  rounding="half_even", out_min, out_max, out_dtype):
    """Float softmax of an integer tensor; returns ``(out, out_saturated)``."""
    check_int_array("softmax input", x, ("int8", "uint8", "int16", "uint16"))
    if not -x.ndim <= axis < x.ndim:
        raise KernelInputError(f"softmax: axis {axis} out of range for rank {x.ndim}")
    out_min, out_max, dt = check_out_range(out_min, out_max, out_dtype)
    xf = ((x.astype(np.int64) - int(zero_point_in)).astype(np.float32)
          * np.float32(scale_in)).astype(np.float32)
    x64 = xf.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=axis, keepdims=True))
    y = (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
    return quantize(np.ascontiguousarray(y), scale=np.array([scale_out], dtype=np.float32),
                    zero_point=np.array([zero_point_out], dtype=np.int64), axis=0,
                    rounding=rounding, method="divide", out_min=out_min, out_max=out_max,
                    out_dtype=dt)
