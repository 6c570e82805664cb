"""``float_maxpool``: max pooling of a float32 tensor (a float island of a mixed graph): each
output is exactly one of the input values, as ORT's float MaxPool returns."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.kernels.ort_eltwise import maxpool
from simulator.steps.base import register, stats
from simulator.steps.maxpool import MaxpoolParams


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatMaxpoolParams(MaxpoolParams):
    """As ``maxpool`` (ONNX geometry); the input is float32."""


def execute_float_maxpool(step, p, x):
    """float32 -> float32."""
    return (maxpool(x, **p.kernel_kwargs()),), stats()


KIND = register("float_maxpool", FloatMaxpoolParams, execute_float_maxpool)
