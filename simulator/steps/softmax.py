"""``softmax``: float softmax between dequantization and quantization (host arithmetic)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.kernels import softmax as soft_k
from simulator.steps.base import OutBlock, register, stats, where


@dataclass(frozen=True, kw_only=True, eq=False)
class SoftmaxParams(OutBlock):
    """``mode='float'``: ``x_f = f32(f32(x - input_zero_point) * scale_in)``, ``y = exp(x_f -
    max) / sum(exp(...))`` along ``axis`` in float64, ``q = clamp(round(f32(f32(y) /
    scale_out), rounding) + out_zero_point)``."""

    axis: int
    scale_in: Any
    scale_out: Any
    mode: str = "float"
    input_zero_point: int = 0
    out_zero_point: int = 0
    rounding: str = "half_even"

    MODE_FIELD = "mode"
    MODE_FIELDS = {"float": frozenset()}


def execute_softmax(step, p, x):
    """Softmax in float64 between dequantization and quantization."""
    out_min, out_max, dt = p.out_range(where(step))
    out, n_sat = soft_k.softmax_float(
        x, axis=int(p.axis), scale_in=p.scale_in, zero_point_in=p.input_zero_point,
        scale_out=p.scale_out, zero_point_out=p.out_zero_point, rounding=p.rounding,
        out_min=out_min, out_max=out_max, out_dtype=dt)
    return (out,), stats(0, n_sat)


KIND = register("softmax", SoftmaxParams, execute_softmax)
