"""``resize_linear``: bilinear resize of float32 NCHW values (ONNX Runtime's float kernel)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels import shape_ops as shape_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class ResizeLinearParams(Params):
    """Output row ``i`` reads input rows ``y_lo[i]``, ``y_hi[i]`` with float32 weights
    ``wy_lo[i]``, ``wy_hi[i]``; columns likewise (``x_*``). The importer computes them with the
    runtime's own float32 coordinate arithmetic."""

    y_lo: Any
    y_hi: Any
    wy_lo: Any
    wy_hi: Any
    x_lo: Any
    x_hi: Any
    wx_lo: Any
    wx_hi: Any

    def check(self, where_: str) -> None:
        for axis in ("y", "x"):
            parts = [np.asarray(getattr(self, f"{k}{axis}_{e}")) for k, e in
                     (("", "lo"), ("", "hi"), ("w", "lo"), ("w", "hi"))]
            if any(a.ndim != 1 for a in parts) or len({a.size for a in parts}) != 1:
                raise ProgramError(f"{where_}: the {axis} indices and weights must be 1-D of one length")
            if parts[0].dtype.kind not in "iu" or parts[1].dtype.kind not in "iu":
                raise ProgramError(f"{where_}: the {axis} indices must be integers")

    def kernel_kwargs(self) -> dict:
        return {k: np.asarray(getattr(self, k)) for k in
                ("y_lo", "y_hi", "wy_lo", "wy_hi", "x_lo", "x_hi", "wx_lo", "wx_hi")}


def execute_resize_linear(step, p, x):
    """Bilinear resize in float32."""
    return (shape_k.resize_linear_f32(x, **p.kernel_kwargs()),), stats()


KIND = register("resize_linear", ResizeLinearParams, execute_resize_linear)
