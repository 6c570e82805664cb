"""``convtranspose_ort``: 2-D ConvTranspose of float32 NCHW values with float32 weights, ONNX
Runtime's CPU kernel (SGEMM + col2im + bias)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels.ort_convtranspose import convtranspose_ort
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class ConvTransposeOrtParams(Params):
    """``weight`` float32 [C, M, KH, KW] (ONNX layout, one group), optional ``bias`` [M];
    ``pads`` (top, left, bottom, right); ``output_size`` (OH, OW), output padding included. The
    summation order is ORT's, see simulator/kernels/ort_convtranspose.py. Between a
    ``dequantize`` and a ``quantize`` step it is ORT's ``DQ -> ConvTranspose -> Q`` with float
    weights."""

    weight: Any
    bias: Any = None
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    output_size: tuple

    def check(self, where_: str) -> None:
        w = np.asarray(self.weight)
        if w.ndim != 4 or w.dtype != np.float32:
            raise ProgramError(f"{where_}: 'weight' must be a 4-D float32 array [C, M, KH, KW]")
        if self.bias is not None and np.asarray(self.bias).shape != (w.shape[1],):
            raise ProgramError(f"{where_}: 'bias' must hold {w.shape[1]} values")
        if len(tuple(self.strides)) != 2 or len(tuple(self.dilations)) != 2 \
                or len(tuple(self.pads)) != 4 or len(tuple(self.output_size)) != 2:
            raise ProgramError(f"{where_}: strides/dilations (2), pads (4) and output_size (2) values")


def execute_convtranspose_ort(step, p, x):
    """ConvTranspose in float32."""
    return (convtranspose_ort(x, weight=p.weight, bias=p.bias, strides=p.strides, pads=p.pads,
                              dilations=p.dilations, output_size=p.output_size),), stats()


KIND = register("convtranspose_ort", ConvTransposeOrtParams, execute_convtranspose_ort)
