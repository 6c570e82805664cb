"""``float_reduce_mean``: ORT's float ReduceMean over the innermost axis (Eigen's SSE2 summation
order, simulator/kernels/ort_math.py)."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.kernels.ort_math import reduce_mean_last
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatReduceMeanParams(Params):
    """The mean of each innermost row of a float32 tensor; ``keepdims`` keeps the axis as size 1."""

    keepdims: bool = True


def execute_float_reduce_mean(step, p, x):
    return (reduce_mean_last(x, bool(p.keepdims)),), stats()


KIND = register("float_reduce_mean", FloatReduceMeanParams, execute_float_reduce_mean)
