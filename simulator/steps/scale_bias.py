"""``scale_bias``: int32 accumulator -> float32, the float tail of ONNX Runtime's dynamically
quantized MatMul (``MatMulIntegerToFloat`` / ``DynamicQuantizeMatMul``, or the unfused
``Cast -> Mul -> Add`` with the same roundings)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels.ort_dynamic import scale_bias
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class ScaleBiasParams(Params):
    """Inputs ``(acc, scale_a, scale_b)`` (buffers: run-time scales of ``dynamic_quantize`` or
    constants; ``scale_b`` one value or one per column): ``m = f32(scale_a * scale_b[n])``, ``y =
    f32(f32(f32(acc) * m) + bias[n])`` (``bias`` float32, one value or one per column; unset: no
    add), then clamped to ``[out_min, out_max]`` (floats; unset: unbounded; a fused float
    Relu/Clip). The columns are along ``channel_axis`` (-1: a MatMul's last axis; 1: NCHW conv
    channels)."""

    bias: Any = None
    channel_axis: int = -1
    out_min: float | None = None
    out_max: float | None = None

    def check(self, where_: str) -> None:
        if self.bias is not None and (not isinstance(self.bias, np.ndarray)
                                      or self.bias.dtype != np.float32):
            raise ProgramError(f"{where_}: 'bias' must be a float32 numpy array")
        if self.out_min is not None and self.out_max is not None and self.out_min > self.out_max:
            raise ProgramError(f"{where_}: out_min {self.out_min} > out_max {self.out_max}")


def execute_scale_bias(step, p, acc, scale_a, scale_b):
    """int32 acc -> float32."""
    mult = (np.asarray(scale_a, np.float32).reshape(-1)[0]
            * np.asarray(scale_b, np.float32).reshape(-1)).astype(np.float32)
    axis = p.channel_axis % max(acc.ndim, 1)
    last = np.moveaxis(acc, axis, -1)
    out = scale_bias(np.ascontiguousarray(last), mult, p.bias, p.out_min, p.out_max)
    return (np.ascontiguousarray(np.moveaxis(out, -1, axis)),), stats()


KIND = register("scale_bias", ScaleBiasParams, execute_scale_bias, n_inputs=3)
