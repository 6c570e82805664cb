"""``float_math``: a float32 elementwise op of a float island of a mixed graph as ORT computes it
(Eigen's Sqrt, Neg, Abs, Pow by 2 or 3; the FastGelu its optimizer fuses; Round, Min, Max, Clip
and the four arithmetic ops, single IEEE float32 operations whatever the vectorisation)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.errors import KernelInputError, ProgramError
from simulator.kernels.ort_math import MATH_OPS, math
from simulator.steps.base import Params, register, stats, where

# op -> number of inputs (None: two or more); each broadcasts as numpy (ONNX multidirectional)
IEEE_OPS = {"Round": 1, "Identity": 1, "Min": None, "Max": None, "Add": 2, "Sub": 2, "Mul": 2,
            "Div": 2, "Clip": 3}
OPS = (*MATH_OPS, *IEEE_OPS)


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatMathParams(Params):
    """``op``: Sqrt, Neg, Abs, Square (ONNX Pow by 2: ``x * x``), Cube (Pow by 3:
    ``(x * x) * x``) or FastGelu (ORT's fusion of the tanh GELU: its contrib kernel); Round
    (half to even, ``std::nearbyint``), Min/Max (n inputs, NaN propagates), Add/Sub/Mul/Div,
    Clip (x, lo, hi: ``min(max(x, lo), hi)``, NaN propagates) or Identity (a copy, any dtype)."""

    op: str

    def check(self, where_: str) -> None:
        if self.op not in OPS:
            raise ProgramError(f"{where_}: 'op' must be one of {list(OPS)}, got {self.op!r}")


def ieee(op: str, xs) -> np.ndarray:
    """The IEEE float32 ops of :data:`IEEE_OPS` (each result correctly rounded, as ORT's)."""
    if op == "Identity":
        return np.array(xs[0], copy=True)
    xs = [np.asarray(x, np.float32) for x in xs]
    with np.errstate(all="ignore"):
        if op == "Round":
            return np.rint(xs[0])
        if op in ("Min", "Max"):
            fn = np.minimum if op == "Min" else np.maximum
            y = xs[0]
            for x in xs[1:]:
                y = fn(y, x)
            return np.asarray(y, np.float32)
        if op == "Clip":
            return np.minimum(np.maximum(xs[0], xs[1]), xs[2]).astype(np.float32)
        fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op]
        return np.asarray(fn(xs[0], xs[1]), np.float32)


def execute_float_math(step, p, *xs):
    """float32 -> float32 (Identity: any dtype)."""
    want = IEEE_OPS.get(p.op, 1)
    if (want is None and len(xs) < 2) or (want is not None and len(xs) != want):
        raise KernelInputError(f"{where(step)}: {p.op} takes {want or 'two or more'} inputs, "
                               f"got {len(xs)}")
    if p.op in MATH_OPS:
        return (math(p.op, xs[0]),), stats()
    return (ieee(p.op, xs),), stats()


KIND = register("float_math", FloatMathParams, execute_float_math, n_inputs=None)
