"""``softmax_ort``: ONNX Runtime's QLinearSoftmax on 8-bit codes (table, float32 row sums)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels.ort_softmax import qlinear_softmax
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class SoftmaxOrtParams(Params):
    """``table``: 256 float32 ``exp`` values indexed by the shifted code; ``y_scale``: the
    float32 factor ``floor(1 / output scale)``; ``out_zero_point``; ``axis`` the softmax axis."""

    table: Any
    y_scale: float
    out_zero_point: int = 0
    axis: int = -1

    def check(self, where_: str) -> None:
        if np.asarray(self.table).shape != (256,):
            raise ProgramError(f"{where_}: 'table' must hold 256 values")


def execute_softmax_ort(step, p, x):
    """QLinearSoftmax rows."""
    return (qlinear_softmax(x, table=p.table, y_scale=p.y_scale, out_zero_point=p.out_zero_point,
                            axis=p.axis),), stats()


KIND = register("softmax_ort", SoftmaxOrtParams, execute_softmax_ort)
