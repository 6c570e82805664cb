"""``float_reduce_minmax``: ONNX ReduceMin / ReduceMax of a float32 tensor over any axes (the
batch axis included), exact in any order. A NaN input is refused: ORT's Eigen reduction returns
NaN or skips it depending on where it lies (measured), which mrq does not model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.errors import KernelInputError, ProgramError
from simulator.steps.base import Params, register, stats, where


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatReduceMinMaxParams(Params):
    """``op``: Min or Max; ``axes``: the reduced axes (non-negative; empty: a copy);
    ``keepdims``: reduced axes stay as size 1."""

    op: str
    axes: tuple
    keepdims: bool = True

    def check(self, where_: str) -> None:
        if self.op not in ("Min", "Max"):
            raise ProgramError(f"{where_}: 'op' must be 'Min' or 'Max', got {self.op!r}")
        if any(int(a) < 0 for a in self.axes):
            raise ProgramError(f"{where_}: axes must be non-negative, got {list(self.axes)}")


def execute_float_reduce_minmax(step, p, x):
    """float32 -> float32."""
    if x.dtype != np.float32:
        raise KernelInputError(f"{where(step)}: expected float32 input, got {x.dtype}")
    axes = tuple(int(a) for a in p.axes)
    if any(a >= x.ndim for a in axes):
        raise KernelInputError(f"{where(step)}: axes {list(axes)} of a rank-{x.ndim} input")
    if x.size == 0 and axes:
        raise KernelInputError(f"{where(step)}: reducing an empty tensor")
    if np.isnan(x).any():
        raise KernelInputError(f"{where(step)}: a NaN input to Reduce{p.op} (ONNX Runtime's result "
                               f"depends on the NaN's position; not simulated)")
    fn = np.min if p.op == "Min" else np.max
    y = fn(x, axis=axes, keepdims=p.keepdims) if axes else x.copy()
    return (np.asarray(y, np.float32),), stats()


KIND = register("float_reduce_minmax", FloatReduceMinMaxParams, execute_float_reduce_minmax)
