"""``conv_ort``: 2-D grouped Conv of float32 NCHW values with float32 weights, ONNX Runtime's
CPU kernel (MLAS im2col + SGEMM + bias)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels.ort_conv import conv_ort
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class ConvOrtParams(Params):
    """``weight`` float32 [M, C/group, KH, KW] (ONNX layout), optional ``bias`` [M]; ``pads``
    (top, left, bottom, right). The summation order is ORT 1.32's on x86-64 with one thread
    (simulator/kernels/ort_conv.py). Between ``dequantize`` and ``quantize`` steps it is ORT's
    ``DQ -> Conv -> Q`` of a 16-bit QDQ model, which ORT never fuses into an integer kernel."""

    weight: Any
    bias: Any = None
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    group: int = 1

    def check(self, where_: str) -> None:
        check_float_conv(self, where_)


def check_float_conv(p, where_: str) -> None:
    """The geometry a float32 ONNX Conv's parameters must have (``conv_ort`` and ``float_conv``)."""
    w = np.asarray(p.weight)
    if w.ndim != 4 or w.dtype != np.float32:
        raise ProgramError(f"{where_}: 'weight' must be a 4-D float32 array [M, C/group, KH, KW]")
    if int(p.group) < 1 or w.shape[0] % int(p.group):
        raise ProgramError(f"{where_}: {w.shape[0]} filters do not split into {p.group} groups")
    if p.bias is not None and np.asarray(p.bias).shape != (w.shape[0],):
        raise ProgramError(f"{where_}: 'bias' must hold {w.shape[0]} values")
    if len(tuple(p.strides)) != 2 or len(tuple(p.dilations)) != 2 or len(tuple(p.pads)) != 4:
        raise ProgramError(f"{where_}: strides/dilations (2) and pads (4) values")
    if min(tuple(p.strides) + tuple(p.dilations)) < 1 or min(p.pads) < 0:
        raise ProgramError(f"{where_}: strides/dilations must be >= 1 and pads >= 0")


def execute_conv_ort(step, p, x):
    """Conv in float32."""
    return (conv_ort(x, weight=p.weight, bias=p.bias, strides=p.strides, pads=p.pads,
                     dilations=p.dilations, group=int(p.group)),), stats()


KIND = register("conv_ort", ConvOrtParams, execute_conv_ort)
