"""``quantize``: float32 x -> integer codes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels import quant as quant_k
from simulator.steps.base import OutBlock, register, stats, where

METHODS = ("divide", "multiply")


@dataclass(frozen=True, kw_only=True, eq=False)
class QuantizeParams(OutBlock):
    """``q = clamp(round(f32(x / scale)) + zero_point)`` (``method='divide'``, ORT/TFLite) or
    ``f32(x * f32(1 / scale))`` (``'multiply'``), clamped to ``[out_min - zp, out_max - zp]``
    in float before rounding with ``rounding``; per-axis along ``axis`` when ``scale`` /
    ``zero_point`` have more than one element. NaN maps to ``out_min``."""

    scale: Any
    zero_point: Any
    axis: int = 1
    rounding: str = "half_even"
    method: str = "divide"

    def check(self, where_: str) -> None:
        if self.method not in METHODS:
            raise ProgramError(f"{where_}: method must be 'divide' or 'multiply', got "
                               f"{self.method!r}")

    def kernel_kwargs(self, where_: str) -> dict:
        out_min, out_max, dt = self.out_range(where_)
        return dict(scale=self.scale, zero_point=self.zero_point, axis=int(self.axis),
                    rounding=self.rounding, method=self.method, out_min=out_min,
                    out_max=out_max, out_dtype=dt)


def execute_quantize(step, p, x):
    """float32 x -> integer codes."""
    out, n_sat = quant_k.quantize(x, **p.kernel_kwargs(where(step)))
    return (out,), stats(0, n_sat)


def launch_quantize(step, p, x):
    if x.dtype != np.float32:
        return None
    return quant_k.quantize_launch(x, **p.kernel_kwargs(where(step)))


KIND = register("quantize", QuantizeParams, execute_quantize, launch_quantize)
