"""``select2``: elementwise maximum or minimum of two inputs on one grid (broadcasting)."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import ProgramError
from simulator.kernels import shape_ops as shape_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class Select2Params(Params):
    """``max(a, b)`` (``select='max'``) or ``min(a, b)`` of the codes, numpy broadcasting; the
    inputs already share dtype and grid."""

    select: str

    def check(self, where_: str) -> None:
        if self.select not in ("max", "min"):
            raise ProgramError(f"{where_}: select must be 'max' or 'min', got {self.select!r}")


def execute_select2(step, p, a, b):
    """Elementwise max / min."""
    return (shape_k.select2(a, b, select=p.select),), stats()


KIND = register("select2", Select2Params, execute_select2, n_inputs=2)
