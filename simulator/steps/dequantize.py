"""``dequantize``: integer x -> float32."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.kernels import quant as quant_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class DequantizeParams(Params):
    """``y = f32(f32(x - zero_point) * scale)`` (``x - zp`` exact in int64), per-axis along
    ``axis`` when the parameters have more than one element."""

    scale: Any
    zero_point: Any = 0
    axis: int = 1

    def kernel_kwargs(self) -> dict:
        return dict(scale=self.scale, zero_point=self.zero_point, axis=int(self.axis))


def execute_dequantize(step, p, x):
    """integer x -> float32."""
    return (quant_k.dequantize(x, **p.kernel_kwargs()),), stats()


def launch_dequantize(step, p, x):
    return quant_k.dequantize_launch(x, **p.kernel_kwargs())


KIND = register("dequantize", DequantizeParams, execute_dequantize, launch_dequantize)
