"""``float_unary``: a float32 activation of a float island as ONNX Runtime's CPU kernel
computes it (Sigmoid and Tanh by MLAS's approximations)."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import ProgramError
from simulator.kernels.ort_eltwise import UNARY_OPS, unary
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatUnaryParams(Params):
    """``op``: one of Sigmoid, Tanh, Relu, Clip (``lo``/``hi``, either unset = unbounded),
    LeakyRelu (``alpha``), HardSigmoid (``alpha``, ``beta``), HardSwish."""

    op: str
    alpha: float = 0.0
    beta: float = 0.0
    lo: float | None = None
    hi: float | None = None

    def check(self, where_: str) -> None:
        if self.op not in UNARY_OPS:
            raise ProgramError(f"{where_}: 'op' must be one of {list(UNARY_OPS)}, got {self.op!r}")


def execute_float_unary(step, p, x):
    """float32 -> float32."""
    return (unary(p.op, x, p.alpha, p.beta, p.lo, p.hi),), stats()


KIND = register("float_unary", FloatUnaryParams, execute_float_unary)
