"""``avgpool``: average pooling in one of three arithmetics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.errors import ProgramError
from simulator.kernels import pool as pool_k
from simulator.kernels import quant as quant_k
from simulator.steps.base import RequantBlock, check_layout, register, stats, where

_RQ = frozenset({"rq_mode"})


@dataclass(frozen=True, kw_only=True, eq=False)
class AvgpoolParams(RequantBlock):
    """Average pooling (``kernel``, ``strides``, ``pads``, ``ceil_mode``, ``count_include_pad``;
    windows clipped to the image; no dilation). ``mode``: ``ort_float`` (dequantize with
    ``scale_in``/``input_zero_point``, f32 sum in window order, divide by the count,
    ``nearbyint(y / scale_out + out_zero_point)``), ``tflite_raw`` (round half away of the
    raw-code sum / count; input and output grids equal), ``fixed`` (``acc = sum(x -
    input_zero_point)``, ``avg = round_div(acc, count, rq_rounding)``, then the requantization
    block on ``avg``)."""

    kernel: tuple
    mode: str
    layout: str = "NCHW"
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    ceil_mode: int = 0
    count_include_pad: int = 0
    input_zero_point: int = 0
    scale_in: Any = None
    scale_out: Any = None

    MODE_FIELD = "mode"
    MODE_FIELDS = {"ort_float": frozenset({"scale_in", "scale_out"}), "tflite_raw": frozenset(),
                   "fixed": _RQ}
    MODE_OPTIONAL = {"fixed": frozenset({"rq_multiplier", "rq_shift"})}

    def check(self, where_: str) -> None:
        check_layout(self.layout, where_)
        if tuple(self.dilations) != (1, 1):
            raise ProgramError(f"{where_}: dilations are not supported")
        if self.mode == "fixed":
            RequantBlock.check(self, where_)

    def geometry(self) -> dict:
        return dict(layout=self.layout, kernel=self.kernel, strides=self.strides,
                    pads=self.pads, ceil_mode=self.ceil_mode,
                    count_include_pad=self.count_include_pad)

    def codes_kwargs(self, where_: str) -> dict:
        """Keyword arguments of :func:`simulator.kernels.pool.avgpool` for the modes that yield
        the output codes directly (ort_float, tflite_raw)."""
        out_min, out_max, dt = self.out_range(where_)
        extra = {}
        if self.mode == "ort_float":
            extra = dict(scale_in=self.scale_in, zero_point_in=self.input_zero_point,
                         scale_out=self.scale_out, zero_point_out=self.out_zero_point)
        return dict(mode=self.mode, out_min=out_min, out_max=out_max, out_dtype=dt, **extra,
                    **self.geometry())


def execute_avgpool(step, p, x):
    """Average pooling."""
    if p.mode == "fixed":
        rq = p.requant_kwargs(where(step))
        avg, _ = pool_k.avgpool(x, mode="fixed", zero_point_in=p.input_zero_point,
                                rq_rounding=rq["rq_rounding"], **p.geometry())
        out, n_sat = quant_k.requantize(avg, **rq)
        return (out,), stats(0, n_sat)
    out, n_sat = pool_k.avgpool(x, **p.codes_kwargs(where(step)))
    return (out,), stats(0, n_sat)


def launch_avgpool(step, p, x):
    if p.mode == "fixed":
        return None
    return pool_k.avgpool_launch(x, **p.codes_kwargs(where(step)))


KIND = register("avgpool", AvgpoolParams, execute_avgpool, launch_avgpool)
