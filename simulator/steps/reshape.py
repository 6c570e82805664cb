"""``reshape``: ONNX Reshape semantics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels import movement as mov_k
from simulator.launch import In, Launch
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class ReshapeParams(Params):
    """``shape``: ``0`` copies the input dimension at that position, ``-1`` infers."""

    shape: Any

    def check(self, where_: str) -> None:
        if not isinstance(self.shape, (tuple, list, np.ndarray)):
            raise ProgramError(f"{where_}: 'shape' must be a tuple, got {self.shape!r}")


def execute_reshape(step, p, x):
    """Reshape (a view where possible)."""
    return (mov_k.reshape(x, shape=p.shape),), stats()


def launch_reshape(step, p, x):
    return Launch((), (), (In(0, mov_k.reshape_target(x.shape, p.shape)),))


KIND = register("reshape", ReshapeParams, execute_reshape, launch_reshape)
