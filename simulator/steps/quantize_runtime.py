"""``quantize_runtime``: float32 x -> integer codes with a scale and zero point computed at run
time (inputs 2 and 3, one element each): ONNX QuantizeLinear fed by float ops, as the expanded
DynamicQuantizeLinear function is."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.errors import KernelInputError, ProgramError
from simulator.kernels import quant as quant_k
from simulator.rounding import round_array
from simulator.steps.base import OutBlock, register, stats, where
from simulator.steps.quantize import METHODS


@dataclass(frozen=True, kw_only=True, eq=False)
class QuantizeRuntimeParams(OutBlock):
    """``quantize``'s arithmetic (``clamp(round(f32(x / scale)) + zero_point)`` for
    ``method='divide'``) with a run-time per-tensor scale and zero point. A scale that is not
    positive and finite (0 when the range was empty) divides as IEEE does; the clamp in float
    before rounding sends NaN to ``out_min`` and +-inf to the bounds (ORT's MLAS kernel)."""

    rounding: str = "half_even"
    method: str = "divide"

    def check(self, where_: str) -> None:
        if self.method not in METHODS:
            raise ProgramError(f"{where_}: method must be 'divide' or 'multiply', got "
                               f"{self.method!r}")


def execute_quantize_runtime(step, p, x, scale, zero_point):
    """float32 x, float32 scale, integer zero point (one element each) -> integer codes."""
    if x.dtype != np.float32 or np.asarray(scale).dtype != np.float32:
        raise KernelInputError(f"{where(step)}: x and scale must be float32, got {x.dtype} and "
                               f"{np.asarray(scale).dtype}")
    if np.size(scale) != 1 or np.size(zero_point) != 1 or np.asarray(zero_point).dtype.kind not in "iu":
        raise KernelInputError(f"{where(step)}: scale and zero point must be one number each "
                               f"(an integer zero point)")
    s = np.float32(np.asarray(scale).reshape(-1)[0])
    z = int(np.asarray(zero_point).reshape(-1)[0])
    out_min, out_max, dt = p.out_range(where(step))
    if s > 0 and np.isfinite(s):
        out, n_sat = quant_k.quantize(x, scale=s, zero_point=z, rounding=p.rounding,
                                      method=p.method, out_min=out_min, out_max=out_max,
                                      out_dtype=dt)
        return (out,), stats(0, n_sat)
    with np.errstate(all="ignore"):
        v = x / s if p.method == "divide" else x * np.float32(np.float32(1) / s)
    lo, hi = np.float32(out_min - z), np.float32(out_max - z)
    outside = ~((v >= lo) & (v <= hi))   # NaN included
    v = np.where(np.isnan(v), lo, np.minimum(np.maximum(v, lo), hi)).astype(np.float32)
    q = round_array(v, p.rounding).astype(np.int64) + z
    return (np.clip(q, out_min, out_max).astype(dt),), stats(0, int(np.sum(outside)))


KIND = register("quantize_runtime", QuantizeRuntimeParams, execute_quantize_runtime, n_inputs=3)
