"""``add_sub_tflite``: TFLite's quantized ADD/SUB in the variants of its two builds."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import ProgramError
from simulator.kernels import int16_ops as i16_k
from simulator.steps.base import OutBlock, register, stats, where


@dataclass(frozen=True, kw_only=True, eq=False)
class AddSubTfliteParams(OutBlock):
    """``x = (q - zero_point) << left_shift`` per input, each scaled by its Q31 multiplier
    (``multiplier_a/b``, ``shift_a/b`` in TFLite's sign convention), summed in int32 (``b``
    negated when ``subtract``: SUB's Prepare negates ``multiplier_b``), then the output
    multiplier (gemmlowp ``MultiplyByQuantizedMultiplier``, ``rq_rounding`` half_away, or ruy's
    half_up), ``+ out_zero_point``, clamp. ``input_rounding``: ``double`` (the inputs' multiply
    is the gemmlowp one too) or ``single`` (``(x * M + 2**(t-1)) >> t``, ``t = 31 - shift``: the
    optimized int16 kernel). Numpy broadcasting."""

    subtract: bool
    left_shift: int
    multiplier_a: int
    shift_a: int
    multiplier_b: int
    shift_b: int
    multiplier_out: int
    shift_out: int
    zero_point_a: int = 0
    zero_point_b: int = 0
    out_zero_point: int = 0
    input_rounding: str = "double"
    rq_rounding: str = "half_away"

    def check(self, where_: str) -> None:
        if self.input_rounding not in ("double", "single"):
            raise ProgramError(f"{where_}: input_rounding must be 'double' or 'single', got "
                               f"{self.input_rounding!r}")


def execute_add_sub_tflite(step, p, a, b):
    """TFLite quantized ``a + b`` or ``a - b`` with numpy broadcasting."""
    out_min, out_max, dt = p.out_range(where(step))
    out, n_sat = i16_k.add_sub_tflite(
        a, b, subtract=p.subtract, left_shift=p.left_shift, multiplier_a=p.multiplier_a,
        shift_a=p.shift_a, multiplier_b=p.multiplier_b, shift_b=p.shift_b,
        multiplier_out=p.multiplier_out, shift_out=p.shift_out, zero_point_a=p.zero_point_a,
        zero_point_b=p.zero_point_b, zero_point_out=p.out_zero_point, out_min=out_min,
        out_max=out_max, out_dtype=dt, input_rounding=p.input_rounding,
        rq_rounding=p.rq_rounding)
    return (out,), stats(0, n_sat)


KIND = register("add_sub_tflite", AddSubTfliteParams, execute_add_sub_tflite, n_inputs=2)
