"""``float_softmax``: ONNX Runtime's float32 Softmax (``MlasComputeSoftmax``, AVX-512F kernels)
in a float island of a mixed graph."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.kernels.ort_eltwise import softmax
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatSoftmaxParams(Params):
    """``axis``: the softmax axis (opset-13 semantics: each position of the other axes is one
    row)."""

    axis: int = -1


def execute_float_softmax(step, p, x):
    """float32 -> float32."""
    return (softmax(x, int(p.axis)),), stats()


KIND = register("float_softmax", FloatSoftmaxParams, execute_float_softmax)
