"""``conv_integer``: ONNX ``ConvInteger`` whose input zero point is a buffer (computed at run time
by ``dynamic_quantize``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.kernels import conv as conv_k
from simulator.steps.base import Params, check_layout, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class ConvIntegerParams(Params):
    """Inputs ``(x, zero_point_x)``: ``acc = sum (x - zero_point_x) * (weight - weight_zero_point)``
    (padding contributes nothing, as ORT pads with the zero point) over ``weight`` [M, C/group,
    KH, KW], exact, returned as int32 (wrapping, as ORT's int32 accumulator)."""

    weight: Any
    weight_zero_point: Any = 0
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    group: int = 1
    layout: str = "NCHW"

    def check(self, where_: str) -> None:
        check_layout(self.layout, where_)


def execute_conv_integer(step, p, x, zero_point_x):
    """int x and its zero point -> int32 accumulator."""
    acc, _ = conv_k.conv2d_acc(x, p.weight, weight_zero_point=p.weight_zero_point, bias=None,
                               input_zero_point=int(np.asarray(zero_point_x).reshape(-1)[0]),
                               strides=p.strides, pads=p.pads, dilations=p.dilations,
                               group=p.group, layout=p.layout, acc_bits=32, acc_overflow="wrap")
    return (acc.astype(np.int32),), stats()


KIND = register("conv_integer", ConvIntegerParams, execute_conv_integer, n_inputs=2)
