"""``clamp``: clamp codes in place of a Relu/Clip on an unchanged grid."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.kernels import eltwise as elt_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class ClampParams(Params):
    """Clamp to ``[out_min, out_max]`` in the input dtype."""

    out_min: int
    out_max: int


def execute_clamp(step, p, x):
    """Clamp to ``[out_min, out_max]``."""
    out, n_sat = elt_k.clamp(x, out_min=p.out_min, out_max=p.out_max)
    return (out,), stats(0, n_sat)


KIND = register("clamp", ClampParams, execute_clamp)
