"""``mul``: quantized elementwise product."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.kernels import eltwise as elt_k
from simulator.kernels import quant as quant_k
from simulator.steps.base import RequantBlock, register, stats, where


@dataclass(frozen=True, kw_only=True, eq=False)
class MulParams(RequantBlock):
    """``acc = (a - zero_point_a) * (b - zero_point_b)`` exact (numpy broadcasting), then the
    requantization block (ORT: ``fp32_zp_in``; TFLite: ``double_q31``), ``channel_axis``
    default -1."""

    zero_point_a: int = 0
    zero_point_b: int = 0


def execute_mul(step, p, a, b):
    """Elementwise product, then requantization."""
    acc = elt_k.mul_acc(a, b, zero_point_a=p.zero_point_a, zero_point_b=p.zero_point_b)
    out, n_sat = quant_k.requantize(acc, **p.requant_kwargs(where(step)))
    return (out,), stats(0, n_sat)


KIND = register("mul", MulParams, execute_mul, n_inputs=2)
