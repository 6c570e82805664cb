"""``transpose_conv``: transposed 2-D convolution (TFLite TRANSPOSE_CONV), then requantization."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.errors import ProgramError
from simulator.kernels import int16_ops as i16_k
from simulator.kernels import quant as quant_k
from simulator.steps.base import (
    AccBlock,
    RequantBlock,
    check_layout,
    register,
    stats,
    where,
)


@dataclass(frozen=True, kw_only=True, eq=False)
class TransposeConvParams(AccBlock, RequantBlock):
    """Every input pixel ``(iy, ix)`` adds ``(x - input_zero_point) * weight[m, c, ky, kx]`` to
    output ``(iy * stride_h - pad_top + ky, ix * stride_w - pad_left + kx)`` (taps outside
    ``output_size`` (OH, OW) are dropped); ``weight`` [M, C, KH, KW]; ``pads`` (top, left). The
    sum wraps at ``acc_bits`` (``acc_overflow`` must be ``wrap``: the scatter order has no
    saturating counterpart in the runtimes modelled), ``bias`` is added last, then the
    requantization block (``channel_axis`` = the layout's channel axis)."""

    weight: Any
    bias: Any = None
    input_zero_point: int = 0
    strides: tuple = (1, 1)
    pads: tuple = (0, 0)
    output_size: tuple
    layout: str = "NHWC"

    def check(self, where_: str) -> None:
        check_layout(self.layout, where_)
        RequantBlock.check(self, where_)
        if self.acc_overflow != "wrap":
            raise ProgramError(f"{where_}: transpose_conv supports acc_overflow 'wrap' only, got "
                               f"{self.acc_overflow!r}")
        if len(tuple(self.pads)) != 2 or len(tuple(self.output_size)) != 2:
            raise ProgramError(f"{where_}: pads (top, left) and output_size (OH, OW) need 2 values")


def execute_transpose_conv(step, p, x):
    """Transposed convolution: scatter accumulation, bias, requantization."""
    acc = i16_k.transpose_conv_acc(x, p.weight, bias=p.bias, input_zero_point=p.input_zero_point,
                                   strides=p.strides, pads=p.pads, output_size=p.output_size,
                                   layout=p.layout, acc_bits=p.acc_bits)
    out, n_sat = quant_k.requantize(acc, **p.requant_kwargs(where(step)))
    return (out,), stats(0, n_sat)


KIND = register("transpose_conv", TransposeConvParams, execute_transpose_conv)
