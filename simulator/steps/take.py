"""``take``: each output element copies one input element of its batch item (slices, splits,
tiles, gathers with constant indices, depth/space rearrangements, nearest-neighbour resize)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels import shape_ops as shape_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class TakeParams(Params):
    """``out[n].reshape(-1)[i] = x[n].reshape(-1)[index[i]]``; ``index`` int64 [prod(shape)],
    ``shape`` the output shape without the batch dimension."""

    index: Any
    shape: tuple

    def check(self, where_: str) -> None:
        index = np.asarray(self.index)
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise ProgramError(f"{where_}: 'index' must be a 1-D integer array")
        if int(np.prod(self.shape, dtype=np.int64)) != index.size:
            raise ProgramError(f"{where_}: {index.size} indices for shape {list(self.shape)}")


def execute_take(step, p, x):
    """Gather within each batch item."""
    return (shape_k.take(x, index=p.index, shape=p.shape),), stats()


KIND = register("take", TakeParams, execute_take)
