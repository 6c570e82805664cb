"""``lut16``: table lookup of a 16-bit tensor (LiteRT's int16 LEAKY_RELU and similar)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.kernels import int16_ops as i16_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class Lut16Params(Params):
    """16-bit x: ``y = table[x - min(dtype(x))]``, ``table`` [65536] of ``out_dtype``."""

    table: Any
    out_dtype: str


def execute_lut16(step, p, x):
    """65536-entry table lookup."""
    return (i16_k.lut16(x, table=p.table, out_dtype=p.out_dtype),), stats()


KIND = register("lut16", Lut16Params, execute_lut16)
