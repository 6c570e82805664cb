"""``rescale``: integer codes onto another grid."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels import eltwise as elt_k
from simulator.kernels import quant as quant_k
from simulator.steps.base import RequantBlock, register, stats, where


@dataclass(frozen=True, kw_only=True, eq=False)
class RescaleParams(RequantBlock):
    """``acc = x - input_zero_point`` then the requantization block; or ``rq_mode =
    'float_dq_q'`` (ORT float region): ``q = clamp(round(f32(f32(f32(x - zin) * scale_in) /
    scale_out), rq_rounding) + out_zero_point)``."""

    input_zero_point: int = 0
    scale_in: Any = None
    scale_out: Any = None

    RQ_MODES: ClassVar[tuple] = RequantBlock.RQ_MODES + ("float_dq_q",)

    def check(self, where_: str) -> None:
        if self.rq_mode == "float_dq_q":
            for name in ("scale_in", "scale_out"):
                if getattr(self, name) is None:
                    raise ProgramError(f"{where_}: missing parameter {name!r} "
                                       f"(rq_mode 'float_dq_q')")
            for name in ("rq_multiplier", "rq_shift"):
                if getattr(self, name) is not None:
                    raise ProgramError(f"{where_}: parameter {name!r} does not apply to "
                                       f"rq_mode 'float_dq_q'")
            return
        for name in ("scale_in", "scale_out"):
            if getattr(self, name) is not None:
                raise ProgramError(f"{where_}: parameter {name!r} applies only to rq_mode "
                                   f"'float_dq_q'")
        RequantBlock.check(self, where_)


def execute_rescale(step, p, x):
    """Re-grid integer codes."""
    if p.rq_mode == "float_dq_q":
        out_min, out_max, dt = p.out_range(where(step))
        out, n_sat = elt_k.rescale_float(
            x, input_zero_point=p.input_zero_point, scale_in=p.scale_in, scale_out=p.scale_out,
            out_zero_point=p.out_zero_point, rq_rounding=p.rq_rounding, out_min=out_min,
            out_max=out_max, out_dtype=dt)
        return (out,), stats(0, n_sat)
    quant_k.check_int_array("rescale input", x)
    acc = x.astype(np.int64) - np.int64(p.input_zero_point)
    out, n_sat = quant_k.requantize(acc, **p.requant_kwargs(where(step)))
    return (out,), stats(0, n_sat)


KIND = register("rescale", RescaleParams, execute_rescale)
