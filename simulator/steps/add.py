"""``add``: quantized addition with numpy broadcasting, in one of four arithmetics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels import eltwise as elt_k
from simulator.kernels import quant as quant_k
from simulator.steps.base import OutBlock, prepared, register, stats, where

_FLOAT = frozenset({"scale_a", "scale_b", "scale_out"})
_TFLITE = frozenset({"left_shift", "multiplier_a", "shift_a", "multiplier_b", "shift_b",
                     "multiplier_out", "shift_out"})
_FIXED = frozenset({"multiplier_a", "multiplier_b", "rq_mode", "rq_shift", "rq_rounding"})


@dataclass(frozen=True, kw_only=True, eq=False)
class AddParams(OutBlock):
    """``mode`` selects the arithmetic (docs/PROGRAM.md): ``ort_fma`` (ONNX Runtime's FMA
    form with ``scale_a/b/out``), ``float`` (``dq(a) + dq(b)`` in f32, quantized by division
    with ``rounding``, default half_even), ``tflite`` (``left_shift`` and three Q31
    multipliers/shifts in TFLite's sign convention, ``rq_rounding`` half_away (gemmlowp,
    default) or half_up (ruy)), ``fixed`` (``acc = (a - za) * multiplier_a + (b - zb) *
    multiplier_b`` exact, then the requantization block with ``rq_mode`` fixed | shift,
    ``rq_multiplier`` default [1]; a negative ``multiplier_b`` is a subtraction — how NNA
    profiles run Sub in the add datapath). All modes: ``zero_point_a``, ``zero_point_b``,
    ``out_zero_point`` and the output block."""

    mode: str
    zero_point_a: int = 0
    zero_point_b: int = 0
    out_zero_point: int = 0
    scale_a: Any = None
    scale_b: Any = None
    scale_out: Any = None
    rounding: Optional[str] = None
    left_shift: Optional[int] = None
    multiplier_a: Any = None
    shift_a: Optional[int] = None
    multiplier_b: Any = None
    shift_b: Optional[int] = None
    multiplier_out: Any = None
    shift_out: Optional[int] = None
    rq_mode: Optional[str] = None
    rq_multiplier: Any = None
    rq_shift: Any = None
    rq_rounding: Optional[str] = None

    MODE_FIELD = "mode"
    MODE_FIELDS = {"ort_fma": _FLOAT, "float": _FLOAT, "tflite": _TFLITE, "fixed": _FIXED}
    MODE_OPTIONAL = {"float": frozenset({"rounding"}),
                     "tflite": frozenset({"rq_rounding"}),
                     "fixed": frozenset({"rq_multiplier"})}

    def check(self, where_: str) -> None:
        if self.mode == "fixed" and self.rq_mode not in ("fixed", "shift"):
            raise ProgramError(f"{where_}: add mode 'fixed' needs rq_mode 'fixed' or 'shift', "
                               f"got {self.rq_mode!r}")

    def common(self, where_: str) -> dict:
        out_min, out_max, dt = self.out_range(where_)
        return {"out_min": out_min, "out_max": out_max, "out_dtype": dt}

    def float_kwargs(self) -> dict:
        return dict(scale_a=self.scale_a, scale_b=self.scale_b, scale_out=self.scale_out,
                    zero_point_a=self.zero_point_a, zero_point_b=self.zero_point_b,
                    zero_point_out=self.out_zero_point)

    def tflite_kwargs(self) -> dict:
        return dict(left_shift=self.left_shift, multiplier_a=self.multiplier_a,
                    shift_a=self.shift_a, multiplier_b=self.multiplier_b, shift_b=self.shift_b,
                    multiplier_out=self.multiplier_out, shift_out=self.shift_out,
                    zero_point_a=self.zero_point_a, zero_point_b=self.zero_point_b,
                    zero_point_out=self.out_zero_point,
                    rq_rounding=self.rq_rounding or "half_away")

    def fixed_kwargs(self) -> dict:
        mult = (np.array([1], dtype=np.int64) if self.rq_multiplier is None
                else self.rq_multiplier)
        return dict(zero_point_a=self.zero_point_a, zero_point_b=self.zero_point_b,
                    multiplier_a=self.multiplier_a, multiplier_b=self.multiplier_b,
                    rq_mode=self.rq_mode, rq_multiplier=mult, rq_shift=self.rq_shift,
                    rq_rounding=self.rq_rounding, out_zero_point=self.out_zero_point)


def _build_fixed(step, p):
    return elt_k.AddFixed(**p.fixed_kwargs(), **p.common(where(step)))


def execute_add(step, p, a, b):
    """Quantized addition with numpy broadcasting."""
    common = p.common(where(step))
    if p.mode == "ort_fma":
        out, n_sat = elt_k.add_ort_fma(a, b, **p.float_kwargs(), **common)
    elif p.mode == "tflite":
        out, n_sat = elt_k.add_tflite(a, b, **p.tflite_kwargs(), **common)
    elif p.mode == "fixed":
        fast = prepared(step, _build_fixed)
        if fast is not None:
            for name, arr in (("add input a", a), ("add input b", b)):
                quant_k.check_int_array(name, arr, elt_k.ELTWISE_DTYPES)
            out, n_sat = fast.run(a, b)
            return (out,), stats(0, n_sat)
        out, n_sat = elt_k.add_fixed(a, b, **p.fixed_kwargs(), **common)
    else:  # float
        out, n_sat = elt_k.add_float(a, b, **p.float_kwargs(),
                                     rounding=p.rounding or "half_even", **common)
    return (out,), stats(0, n_sat)


def launch_add(step, p, a, b):
    if a.shape != b.shape:
        return None
    if p.mode == "fixed":
        fast = prepared(step, _build_fixed)
        if fast is None or a.dtype.name not in elt_k.ELTWISE_DTYPES \
                or b.dtype.name not in elt_k.ELTWISE_DTYPES:
            return None
        return fast.launch(a.shape, a.dtype, b.dtype)
    if p.mode == "ort_fma":
        return elt_k.add_ort_fma_launch(a, b, **p.float_kwargs(), **p.common(where(step)))
    if p.mode == "tflite":
        return elt_k.add_tflite_launch(a, b, **p.tflite_kwargs(), **p.common(where(step)))
    return None


KIND = register("add", AddParams, execute_add, launch_add, n_inputs=2)
