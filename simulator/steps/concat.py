"""``concat``: concatenation of inputs on one grid."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.kernels import movement as mov_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class ConcatParams(Params):
    """Concatenate along ``axis``; the inputs already share dtype and quantization grid
    (lowering inserts ``rescale`` steps before)."""

    axis: int


def execute_concat(step, p, *arrays):
    """Concatenate along ``axis``."""
    return (mov_k.concat(list(arrays), axis=int(p.axis)),), stats()


KIND = register("concat", ConcatParams, execute_concat, n_inputs=None)
