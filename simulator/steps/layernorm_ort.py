"""``layernorm_ort``: ONNX LayerNormalization of float32 values, ONNX Runtime's CPU kernel."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels.ort_layernorm import layernorm_ort
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class LayerNormOrtParams(Params):
    """Normalise over ``shape[axis:]``: ``scale`` (and optional ``bias``) hold one float32 value
    per normalised element, ``epsilon`` is float32; the arithmetic (summation order, FMA,
    float64 mean) is ORT 1.32's on x86-64, see simulator/kernels/ort_layernorm.py. Between a
    ``dequantize`` and a ``quantize`` step it is ORT's ``DQ -> LayerNormalization -> Q``."""

    scale: Any
    bias: Any = None
    epsilon: float = 1e-5
    axis: int = -1

    def check(self, where_: str) -> None:
        scale = np.asarray(self.scale)
        if scale.ndim != 1 or scale.size == 0:
            raise ProgramError(f"{where_}: 'scale' must be a non-empty 1-D array")
        if self.bias is not None and np.asarray(self.bias).shape != scale.shape:
            raise ProgramError(f"{where_}: 'bias' must have the shape of 'scale' {list(scale.shape)}")
        if not np.isfinite(self.epsilon) or self.epsilon < 0:
            raise ProgramError(f"{where_}: 'epsilon' must be finite and >= 0, got {self.epsilon}")


def execute_layernorm_ort(step, p, x):
    """LayerNormalization in float32."""
    return (layernorm_ort(x, scale=p.scale, bias=p.bias, epsilon=p.epsilon, axis=p.axis),), stats()


KIND = register("layernorm_ort", LayerNormOrtParams, execute_layernorm_ort)
