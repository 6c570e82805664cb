"""``reduce_select``: maximum or minimum code over axes (the grid is unchanged)."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import ProgramError
from simulator.kernels import shape_ops as shape_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class ReduceSelectParams(Params):
    """Maximum (``select='max'``) or minimum code over ``axes`` (``keep_dims``)."""

    axes: tuple
    select: str
    keep_dims: bool = False

    def check(self, where_: str) -> None:
        if self.select not in ("max", "min"):
            raise ProgramError(f"{where_}: select must be 'max' or 'min', got {self.select!r}")


def execute_reduce_select(step, p, x):
    """Reduce max / min."""
    return (shape_k.reduce_select(x, axes=p.axes, keep_dims=p.keep_dims, select=p.select),), stats()


KIND = register("reduce_select", ReduceSelectParams, execute_reduce_select)
