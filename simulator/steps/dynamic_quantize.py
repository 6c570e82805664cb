"""``dynamic_quantize``: float32 x -> uint8 codes on a grid computed from x itself (ONNX
``DynamicQuantizeLinear`` as ONNX Runtime's CPU kernel computes it)."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import ProgramError
from simulator.kernels.ort_dynamic import dynamic_quantize
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class DynamicQuantizeParams(Params):
    """Outputs ``(codes, scale, zero_point)``: the range ``[min(min(x), 0), max(max(x), 0)]`` of
    the whole array (every sample of the batch together, as ORT given that array), ``scale =
    (max - min) / 255`` (1 when the range is empty) and ``zero_point = RoundHalfToEven(clamp(-min /
    scale, 0, 255))`` in float32, then ``codes = clamp(round(x / scale) + zero_point, 0, 255)``
    (MLAS QuantizeLinear). ``scale`` is a float32 and ``zero_point`` a uint8 0-d array. An
    infinity in ``x`` is an error (no finite grid)."""

    out_dtype: str = "uint8"

    def check(self, where_: str) -> None:
        if self.out_dtype != "uint8":
            raise ProgramError(f"{where_}: out_dtype must be 'uint8' (ONNX DynamicQuantizeLinear "
                               f"has no other), got {self.out_dtype!r}")


def execute_dynamic_quantize(step, p, x):
    """float32 x -> (uint8 codes, float32 scale, uint8 zero point)."""
    codes, scale, zero_point, n_sat = dynamic_quantize(x)
    return (codes, scale, zero_point), stats(0, n_sat)


KIND = register("dynamic_quantize", DynamicQuantizeParams, execute_dynamic_quantize)
