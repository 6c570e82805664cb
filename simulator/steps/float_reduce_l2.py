"""``float_reduce_l2``: ONNX Runtime's float32 ReduceL2 over the last axis (keepdims) in a
float island of a mixed graph, in ORT's summation order."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.kernels.ort_eltwise import reduce_l2_last
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatReduceL2Params(Params):
    """No parameters: ``sqrt(sum of squares)`` over the last axis, kept as size 1."""


def execute_float_reduce_l2(step, p, x):
    """float32 [..., D] -> float32 [..., 1]."""
    return (reduce_l2_last(x),), stats()


KIND = register("float_reduce_l2", FloatReduceL2Params, execute_float_reduce_l2)
