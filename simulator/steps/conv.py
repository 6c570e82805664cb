"""``conv``: 2-D convolution, accumulator, requantization."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.kernels import conv as conv_k
from simulator.kernels import pair_sums as pair_k
from simulator.kernels import quant as quant_k
from simulator.steps.base import (
    AccBlock,
    PairSumsBlock,
    RequantBlock,
    check_layout,
    prepared,
    register,
    stats,
    where,
)


@dataclass(frozen=True, kw_only=True, eq=False)
class ConvParams(AccBlock, PairSumsBlock, RequantBlock):
    """2-D convolution of int x (``layout`` NCHW or NHWC) with int ``weight`` [M, C/group, KH,
    KW] (always OIHW): ``acc = bias + sum (x - input_zero_point) * (w - weight_zero_point)``
    in the accumulator block's order and width (``pair_sums``: see the pair-sums block), then
    the requantization block (``channel_axis`` = the layout's channel axis)."""

    weight: Any
    weight_zero_point: Any = 0
    bias: Any = None
    input_zero_point: int = 0
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    group: int = 1
    layout: str = "NCHW"

    def check(self, where_: str) -> None:
        check_layout(self.layout, where_)
        self.check_pair_sums(where_)
        RequantBlock.check(self, where_)

    def geometry(self) -> dict:
        return dict(weight_zero_point=self.weight_zero_point, bias=self.bias,
                    input_zero_point=self.input_zero_point, strides=self.strides,
                    pads=self.pads, dilations=self.dilations, group=self.group,
                    layout=self.layout, **self.acc_kwargs())


def _build(step, p):
    if p.pair_sums != "exact":
        return None   # the fast kernels sum exactly: the plain kernel runs this step
    rq = p.requant_kwargs(where(step))
    axis = rq.pop("channel_axis")
    return conv_k.prepare_conv(p.weight, requant=rq, channel_axis=axis, **p.geometry())


def execute_conv(step, p, x):
    """2-D convolution (OIHW weights, NCHW or NHWC activations), accumulator then requant."""
    fast = prepared(step, _build)
    if fast is not None:
        res = fast.run(x)
        if res is not None:
            return (res[0],), stats(0, res[1])
    accumulate = conv_k.conv2d_acc if p.pair_sums == "exact" else pair_k.conv2d_acc_pairs
    acc, n_ovf = accumulate(x, p.weight, **p.geometry())
    out, n_sat = quant_k.requantize(acc, **p.requant_kwargs(where(step)))
    return (out,), stats(n_ovf, n_sat)


def fast_launch(fast, x):
    if fast is None:
        return None
    got = fast.launch(x.shape, x.dtype)
    if got is None or not got[1]:
        return None
    return got[0]


def launch_conv(step, p, x):
    return fast_launch(prepared(step, _build), x)


KIND = register("conv", ConvParams, execute_conv, launch_conv)
