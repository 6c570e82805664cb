"""``softmax_tflite``: LiteRT's int8/uint8 softmax along the last axis."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from simulator.errors import ProgramError
from simulator.kernels import tflite_ops as tfl_k
from simulator.steps.base import OutBlock, register, stats, where


@dataclass(frozen=True, kw_only=True, eq=False)
class SoftmaxTfliteParams(OutBlock):
    """``mode='gemmlowp'`` (LiteRT reference kernel): ``input_multiplier``,
    ``input_left_shift``, ``diff_min`` (the output offset is the dtype's lowest code).
    ``mode='lut'`` (LiteRT optimized kernel): ``table`` float32[256], ``scale_out``,
    ``out_zero_point``, ``rounding`` ('half_away' (default), or 'add_half_truncate' =
    ``int(f32(p + 0.5f))``). ``axis`` must be the last axis."""

    mode: str
    axis: int = -1
    input_multiplier: Optional[int] = None
    input_left_shift: Optional[int] = None
    diff_min: Optional[int] = None
    table: Any = None
    scale_out: Any = None
    out_zero_point: Optional[int] = None
    rounding: Optional[str] = None

    MODE_FIELD = "mode"
    MODE_FIELDS = {"gemmlowp": frozenset({"input_multiplier", "input_left_shift", "diff_min"}),
                   "lut": frozenset({"table", "scale_out", "out_zero_point"})}
    MODE_OPTIONAL = {"lut": frozenset({"rounding"})}

    def call(self, where_: str, ndim: int, launch: bool = False):
        """``(kernel function, keyword arguments)`` for a rank-``ndim`` input; with
        ``launch=True`` the function returns the :class:`simulator.launch.Launch`."""
        if int(self.axis) not in (-1, ndim - 1):
            raise ProgramError(f"{where_}: only the last axis is supported, got {self.axis}")
        out_min, out_max, dt = self.out_range(where_)
        if self.mode == "gemmlowp":
            fn = tfl_k.softmax_gemmlowp_launch if launch else tfl_k.softmax_gemmlowp
            return fn, dict(input_multiplier=self.input_multiplier,
                            input_left_shift=self.input_left_shift, diff_min=self.diff_min,
                            out_dtype=dt, out_min=out_min, out_max=out_max)
        fn = tfl_k.softmax_lut_launch if launch else tfl_k.softmax_lut
        return fn, dict(table=self.table, scale_out=self.scale_out,
                        zero_point_out=self.out_zero_point, out_min=out_min, out_max=out_max,
                        out_dtype=dt, rounding=self.rounding or "half_away")


def execute_softmax_tflite(step, p, x):
    """TFLite int8/uint8 softmax along the last axis."""
    fn, kwargs = p.call(where(step), x.ndim)
    out, n_sat = fn(x, **kwargs)
    return (out,), stats(0, n_sat)


def launch_softmax_tflite(step, p, x):
    fn, kwargs = p.call(where(step), x.ndim, launch=True)
    return fn(x, **kwargs)


KIND = register("softmax_tflite", SoftmaxTfliteParams, execute_softmax_tflite,
                launch_softmax_tflite)
