"""``transpose``: permute axes."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.kernels import movement as mov_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class TransposeParams(Params):
    """Permute axes by ``perm``."""

    perm: tuple


def execute_transpose(step, p, x):
    """Permute axes."""
    return (mov_k.transpose(x, perm=p.perm),), stats()


def launch_transpose(step, p, x):
    return mov_k.transpose_launch(x, perm=p.perm)


KIND = register("transpose", TransposeParams, execute_transpose, launch_transpose)
