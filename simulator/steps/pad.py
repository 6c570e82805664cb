"""``pad``: constant padding with an integer code."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.kernels import tflite_ops as tfl_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class PadParams(Params):
    """``pads``: (before, after) per dimension; ``value``: the integer code of the padding."""

    pads: tuple
    value: int


def execute_pad(step, p, x):
    """Constant padding."""
    return (tfl_k.pad(x, pads=p.pads, value=p.value),), stats()


KIND = register("pad", PadParams, execute_pad)
