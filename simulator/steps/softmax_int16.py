"""``softmax_int16``: LiteRT's int16 SOFTMAX (exp and reciprocal tables of 513 entries)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.errors import ProgramError
from simulator.kernels import int16_ops as i16_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class SoftmaxInt16Params(Params):
    """int16 x, int16 output on scale 1/32768 along the last axis (``reference_ops::
    SoftmaxInt16``): ``exp_lut`` and ``one_over_one_plus_x_lut`` (int16[513], interpolated
    ``LUTLookup``), ``input_multiplier`` / ``input_shift`` (Q31, TFLite shift sign) mapping
    ``x - max`` in [-65535, 0] to [-10, 0]."""

    exp_lut: Any
    one_over_one_plus_x_lut: Any
    input_multiplier: int
    input_shift: int
    axis: int = -1

    def check(self, where_: str) -> None:
        if self.axis != -1:
            raise ProgramError(f"{where_}: softmax_int16 runs along the last axis (axis -1), got "
                               f"{self.axis}")


def execute_softmax_int16(step, p, x):
    """int16 softmax along the last axis."""
    return (i16_k.softmax_int16(x, exp_lut=p.exp_lut,
                                one_over_one_plus_x_lut=p.one_over_one_plus_x_lut,
                                input_multiplier=p.input_multiplier,
                                input_shift=p.input_shift),), stats()


KIND = register("softmax_int16", SoftmaxInt16Params, execute_softmax_int16)
