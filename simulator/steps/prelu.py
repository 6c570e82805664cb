"""``prelu``: parametric ReLU with a constant slope tensor (TFLite PRELU)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels import shape_ops as shape_k
from simulator.steps.base import OutBlock, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class PreluParams(OutBlock):
    """``v = x - input_zero_point``; ``v >= 0``: ``requant(v, multiplier_pos, shift_pos)``, else
    ``requant(v * (alpha - alpha_zero_point), multiplier_neg, shift_neg)``; plus
    ``out_zero_point``, clamped. ``alpha``: integer codes broadcast against one batch item
    (leading dimension 1). ``rq_mode``/``rq_rounding`` as in the requantization block (shift
    convention of ``rq_shift``)."""

    alpha: Any
    input_zero_point: int = 0
    alpha_zero_point: int = 0
    out_zero_point: int = 0
    rq_mode: str
    rq_rounding: str = "half_away"
    multiplier_pos: int
    shift_pos: int
    multiplier_neg: int
    shift_neg: int

    def check(self, where_: str) -> None:
        if self.rq_mode not in ("double_q31", "fixed", "shift"):
            raise ProgramError(f"{where_}: rq_mode must be double_q31, fixed or shift, got {self.rq_mode!r}")
        if np.asarray(self.alpha).dtype.kind not in "iu":
            raise ProgramError(f"{where_}: 'alpha' must be an integer array")


def execute_prelu(step, p, x):
    """Parametric ReLU."""
    lo, hi, dt = p.out_range(step.name)
    common = {"rq_mode": p.rq_mode, "rq_rounding": p.rq_rounding, "out_zero_point": p.out_zero_point,
                  "out_min": lo, "out_max": hi, "out_dtype": dt.name}
    out, n_sat = shape_k.prelu(
        x, alpha=p.alpha, input_zero_point=p.input_zero_point, alpha_zero_point=p.alpha_zero_point,
        requant_pos=dict(common, rq_multiplier=np.array([p.multiplier_pos], np.int64),
                         rq_shift=np.array([p.shift_pos], np.int64)),
        requant_neg=dict(common, rq_multiplier=np.array([p.multiplier_neg], np.int64),
                         rq_shift=np.array([p.shift_neg], np.int64)))
    return (out,), stats(0, n_sat)


KIND = register("prelu", PreluParams, execute_prelu)
