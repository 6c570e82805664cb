"""``matmul``: ``a[..., M, K] @ b[..., K, N]`` of two integer activations, accumulator,
requantization."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import ProgramError
from simulator.kernels import quant as quant_k
from simulator.kernels.matmul import matmul_acc
from simulator.steps.base import (
    AccBlock,
    PairSumsBlock,
    RequantBlock,
    register,
    stats,
    where,
)


@dataclass(frozen=True, kw_only=True, eq=False)
class MatMulParams(AccBlock, PairSumsBlock, RequantBlock):
    """``acc = sum_k (a[..., m, k] - zero_point_a) * (b[..., k, n] - zero_point_b)`` in the
    accumulator block's width (leading dimensions broadcast; ``pair_sums``: see the pair-sums
    block, ``b`` in the weight's place), then the requantization block
    (per tensor). ``paired_batch`` k > 0: ``b`` holds one matrix per sample (a constant with
    a leading dimension k), so ``a``'s batch must be exactly k: a batch split into other sizes
    would pair samples with the wrong matrices."""

    zero_point_a: int = 0
    zero_point_b: int = 0
    paired_batch: int = 0

    def check(self, where_: str) -> None:
        self.check_pair_sums(where_)
        RequantBlock.check(self, where_)


def execute_matmul(step, p, a, b):
    """Product of two activations, accumulator then requant."""
    if p.paired_batch and a.shape[0] != p.paired_batch:
        raise ProgramError(f"{where(step)}: its constant B holds one matrix for each of "
                           f"{p.paired_batch} samples; got a batch of {a.shape[0]} (run the "
                           f"whole batch of {p.paired_batch} at once)")
    acc, n_ovf = matmul_acc(a, b, zero_point_a=p.zero_point_a, zero_point_b=p.zero_point_b,
                            pair_sums=p.pair_sums, **p.acc_kwargs())
    out, n_sat = quant_k.requantize(acc, **p.requant_kwargs(where(step)))
    return (out,), stats(n_ovf, n_sat)


KIND = register("matmul", MatMulParams, execute_matmul, n_inputs=2)
