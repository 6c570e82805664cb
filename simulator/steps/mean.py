"""``mean``: quantized mean over axes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from simulator.kernels import quant as quant_k
from simulator.kernels import tflite_ops as tfl_k
from simulator.steps.base import RequantBlock, register, stats, where


@dataclass(frozen=True, kw_only=True, eq=False)
class MeanParams(RequantBlock):
    """Mean over ``axes`` (``keep_dims``). ``mode='tflite'``: ``input_zero_point``,
    ``multiplier``, ``shift`` (TFLite sign, includes 1/n), ``out_zero_point``;
    ``mode='xnnpack'``: ``scale`` and ``zero_point`` (float32, see
    :func:`simulator.kernels.tflite_ops.mean_xnnpack`); ``mode='requant'``: the requantization
    block on ``sum(x - input_zero_point)`` (``channel_axis`` -1)."""

    axes: tuple
    keep_dims: bool
    mode: str
    input_zero_point: int = 0
    multiplier: Optional[int] = None
    shift: Optional[int] = None
    scale: Any = None
    zero_point: Any = None

    MODE_FIELD = "mode"
    MODE_FIELDS = {"tflite": frozenset({"multiplier", "shift"}),
                   "xnnpack": frozenset({"scale", "zero_point"}),
                   "requant": frozenset({"rq_mode"})}
    MODE_OPTIONAL = {"requant": frozenset({"rq_multiplier", "rq_shift"})}

    def check(self, where_: str) -> None:
        if self.mode == "requant":
            RequantBlock.check(self, where_)


def execute_mean(step, p, x):
    """Quantized mean over ``axes``."""
    keep = bool(p.keep_dims)
    if p.mode == "tflite":
        out_min, out_max, dt = p.out_range(where(step))
        out, n_sat = tfl_k.mean_tflite(
            x, axes=p.axes, keep_dims=keep, input_zero_point=p.input_zero_point,
            multiplier=p.multiplier, shift=p.shift, out_zero_point=p.out_zero_point,
            out_min=out_min, out_max=out_max, out_dtype=dt)
    elif p.mode == "xnnpack":
        out_min, out_max, dt = p.out_range(where(step))
        out, n_sat = tfl_k.mean_xnnpack(x, axes=p.axes, keep_dims=keep, scale=p.scale,
                                        zero_point=p.zero_point, out_min=out_min,
                                        out_max=out_max, out_dtype=dt)
    else:
        sums, _ = tfl_k.reduce_sum(x, axes=p.axes, keep_dims=keep,
                                   input_zero_point=p.input_zero_point)
        out, n_sat = quant_k.requantize(np.ascontiguousarray(sums),
                                        **p.requant_kwargs(where(step)))
    return (out,), stats(0, n_sat)


KIND = register("mean", MeanParams, execute_mean)
