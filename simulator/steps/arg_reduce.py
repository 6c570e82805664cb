"""``arg_reduce``: index of the first maximum or minimum code along an axis."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import ProgramError
from simulator.kernels import shape_ops as shape_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class ArgReduceParams(Params):
    """Index along ``axis`` of the first maximum (``select='max'``) or minimum code, as
    ``out_dtype`` (int32 | int64); the axis is removed."""

    axis: int
    select: str
    out_dtype: str

    def check(self, where_: str) -> None:
        if self.select not in ("max", "min"):
            raise ProgramError(f"{where_}: select must be 'max' or 'min', got {self.select!r}")
        if self.out_dtype not in ("int32", "int64"):
            raise ProgramError(f"{where_}: out_dtype must be int32 or int64, got {self.out_dtype!r}")


def execute_arg_reduce(step, p, x):
    """Arg max / arg min."""
    return (shape_k.arg_reduce(x, axis=p.axis, select=p.select, out_dtype=p.out_dtype),), stats()


KIND = register("arg_reduce", ArgReduceParams, execute_arg_reduce)
