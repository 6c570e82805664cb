"""``global_avgpool``: sum over the plane, then requantization (1/N in the multiplier)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.kernels import pool as pool_k
from simulator.kernels import quant as quant_k
from simulator.steps.base import RequantBlock, check_layout, register, stats, where


@dataclass(frozen=True, kw_only=True, eq=False)
class GlobalAvgpoolParams(RequantBlock):
    """``acc = sum(x - input_zero_point)`` over H*W (int64), then the requantization block
    (the multiplier folds 1/N); output [N, C, 1, 1] (NCHW) or [N, 1, 1, C] (NHWC)."""

    layout: str = "NCHW"
    input_zero_point: int = 0

    def check(self, where_: str) -> None:
        check_layout(self.layout, where_)
        RequantBlock.check(self, where_)


def execute_global_avgpool(step, p, x):
    """Plane sums, then requantization."""
    acc = pool_k.global_sum(x, layout=p.layout, input_zero_point=p.input_zero_point)
    out, n_sat = quant_k.requantize(acc, **p.requant_kwargs(where(step)))
    return (out,), stats(0, n_sat)


def launch_global_avgpool(step, p, x):
    """The sums, then the requantization; the interpreter picks the requantization kernel from
    the sums' values, the launch from their bound ``H * W * max|x - z_in|`` (both exact)."""
    zin = int(p.input_zero_point)
    sums = pool_k.global_sum_launch(x, layout=p.layout, input_zero_point=zin)
    rq = p.requant_kwargs(where(step))
    if rq["rq_mode"] == "none":
        return None
    shape = sums.output_specs([x])[0][0]
    outer, n_ch, inner, _ = quant_k.split_axis(shape, rq.pop("channel_axis"))
    params = quant_k.requant_params(**rq, n_ch=n_ch)
    lo, hi = quant_k.dtype_range(x.dtype)
    count = int(np.prod(x.shape[1:3] if p.layout == "NHWC" else x.shape[2:4], dtype=np.int64))
    bound = count * max(abs(lo - zin), abs(hi - zin))
    requant = quant_k.requantize_launch(shape, bound, params, outer, n_ch, inner)
    return None if requant is None else sums.then(requant)


KIND = register("global_avgpool", GlobalAvgpoolParams, execute_global_avgpool,
                launch_global_avgpool)
