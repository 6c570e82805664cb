"""``lut``: table lookup of an 8-bit tensor (LOGISTIC and other pointwise functions)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.kernels import tflite_ops as tfl_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class LutParams(Params):
    """8-bit x: ``y = table[x - min(dtype(x))]``, ``table`` [256] of ``out_dtype``."""

    table: Any
    out_dtype: str


def execute_lut(step, p, x):
    """256-entry table lookup."""
    return (tfl_k.lut8(x, table=p.table, out_dtype=p.out_dtype),), stats()


KIND = register("lut", LutParams, execute_lut)
