"""``float_softmax``: ONNX Runtime's float32 Softmax (``MlasComputeSoftmax``) in a float island
of a mixed graph, with the kernel set of the host class the profile describes."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import ProgramError
from simulator.kernels.ort_eltwise import ORT_ISAS, softmax
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatSoftmaxParams(Params):
    """``axis``: the softmax axis (opset-13 semantics: each position of the other axes is one
    row). ``isa``: MLAS's x86-64 kernel set, ``avx512f`` or ``fma3`` (the profile's
    ``runtime_isa``): their exp and row-sum orders differ."""

    axis: int = -1
    isa: str = "avx512f"

    def check(self, where_: str) -> None:
        if self.isa not in ORT_ISAS:
            raise ProgramError(f"{where_}: 'isa' must be one of {list(ORT_ISAS)}, got {self.isa!r}")


def execute_float_softmax(step, p, x):
    """float32 -> float32."""
    return (softmax(x, int(p.axis), p.isa),), stats()


KIND = register("float_softmax", FloatSoftmaxParams, execute_float_softmax)
