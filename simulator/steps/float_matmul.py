"""``float_matmul``: ONNX Runtime's float32 MatMul of two tensors (``MatMul<float>``, and the
``FusedMatMul`` its optimizer makes of a MatMul with transposed inputs and a scalar scale) in a
float island of a mixed graph: MLAS SGEMM per output matrix."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels.ort_matmul import matmul_ort
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatMatmulParams(Params):
    """Inputs ``(a, b)``, float32, ``numpy.matmul`` shapes (leading axes broadcast).
    ``trans_a``/``trans_b``: the operand given is the transpose (last two axes) of the one
    multiplied, as ORT's ``FusedMatMul`` reads it; ``alpha``: the float32 scale ORT fuses into
    the SGEMM; ``packed_b``: ``b`` is a constant 2-D weight ORT packs ahead. The summation order
    is ORT 1.32's on x86-64 with one thread (simulator/kernels/ort_matmul.py)."""

    trans_a: bool = False
    trans_b: bool = False
    alpha: float = 1.0
    packed_b: bool = False

    def check(self, where_: str) -> None:
        if not np.isfinite(np.float32(self.alpha)):
            raise ProgramError(f"{where_}: 'alpha' must be a finite float32, got {self.alpha!r}")


def execute_float_matmul(step, p, a, b):
    """float32 ``alpha * op(a) @ op(b)``."""
    return (matmul_ort(a, b, trans_a=bool(p.trans_a), trans_b=bool(p.trans_b),
                       alpha=float(p.alpha), packed_b=bool(p.packed_b)),), stats()


KIND = register("float_matmul", FloatMatmulParams, execute_float_matmul, n_inputs=2)
