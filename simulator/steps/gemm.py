"""``gemm``: ``a[..., K] @ weight[K, N]``, accumulator, requantization."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.kernels import gemm as gemm_k
from simulator.kernels import pair_sums as pair_k
from simulator.kernels import quant as quant_k
from simulator.steps.base import (
    AccBlock,
    PairSumsBlock,
    RequantBlock,
    prepared,
    register,
    stats,
    where,
)
from simulator.steps.conv import fast_launch


@dataclass(frozen=True, kw_only=True, eq=False)
class GemmParams(AccBlock, PairSumsBlock, RequantBlock):
    """``acc = bias + sum_k (a - input_zero_point) * (weight[k, n] - weight_zero_point[n])``
    (int ``weight`` [K, N]) in the accumulator block's width (``pair_sums``: see the pair-sums
    block), then the requantization block along the last axis."""

    weight: Any
    weight_zero_point: Any = 0
    bias: Any = None
    input_zero_point: int = 0

    def operands(self) -> dict:
        return dict(weight_zero_point=self.weight_zero_point, bias=self.bias,
                    input_zero_point=self.input_zero_point, **self.acc_kwargs())

    def check(self, where_: str) -> None:
        self.check_pair_sums(where_)
        RequantBlock.check(self, where_)


def _build(step, p):
    if p.pair_sums != "exact":
        return None   # the fast kernels sum exactly: the plain kernel runs this step
    rq = p.requant_kwargs(where(step))
    axis = rq.pop("channel_axis")
    return gemm_k.prepare_gemm(p.weight, requant=rq, channel_axis=axis, **p.operands())


def execute_gemm(step, p, a):
    """``a[..., K] @ weight[K, N]``, accumulator then requant along the last axis."""
    fast = prepared(step, _build)
    if fast is not None:
        res = fast.run(a)
        if res is not None:
            return (res[0],), stats(0, res[1])
    accumulate = gemm_k.gemm_acc if p.pair_sums == "exact" else pair_k.gemm_acc_pairs
    acc, n_ovf = accumulate(a, p.weight, **p.operands())
    out, n_sat = quant_k.requantize(acc, **p.requant_kwargs(where(step)))
    return (out,), stats(n_ovf, n_sat)


def launch_gemm(step, p, a):
    return fast_launch(prepared(step, _build), a)


KIND = register("gemm", GemmParams, execute_gemm, launch_gemm)
