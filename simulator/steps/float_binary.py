"""``float_binary``: a float32 Add/Sub/Mul/Div of two tensors of a float island, as ONNX
Runtime's CPU kernels compute it (one rounding per element, numpy broadcasting)."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import ProgramError
from simulator.kernels.ort_eltwise import BINARY_OPS, binary
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatBinaryParams(Params):
    """Inputs ``(a, b)``, float32, broadcast against each other (a constant operand is a
    ``constant`` step). ``op``: Add, Sub, Mul or Div."""

    op: str

    def check(self, where_: str) -> None:
        if self.op not in BINARY_OPS:
            raise ProgramError(f"{where_}: 'op' must be one of {sorted(BINARY_OPS)}, got {self.op!r}")


def execute_float_binary(step, p, a, b):
    """float32 a op b."""
    return (binary(p.op, a, b),), stats()


KIND = register("float_binary", FloatBinaryParams, execute_float_binary, n_inputs=2)
