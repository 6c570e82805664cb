"""``float_conv``: ONNX Runtime's float32 2-D Conv in a float island of a mixed graph, in one of
the two summation orders its CPU provider uses: ``mlas`` (im2col + SGEMM, the ``conv_ort``
kernel) or ``nchwc`` (the NCHWc kernels ORT's layout transformer substitutes for a Conv whose
weight is a constant initializer)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.errors import ProgramError
from simulator.kernels.ort_conv import conv_ort
from simulator.kernels.ort_eltwise import ORT_ISAS
from simulator.kernels.ort_nchwc import BLOCKS, conv_nchwc
from simulator.steps.base import Params, register, stats
from simulator.steps.conv_ort import check_float_conv

ORDERS = ("mlas", "nchwc")


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatConvParams(Params):
    """``weight`` float32 [M, C/group, KH, KW] (ONNX layout), optional ``bias`` [M]; ``pads``
    (top, left, bottom, right); ``order``: ``mlas`` or ``nchwc`` (ORT 1.32 on x86-64 with one
    thread, simulator/kernels/ort_conv.py and ort_nchwc.py); ``isa``: MLAS's x86-64 kernel set
    (the profile's ``runtime_isa``), whose channel block the ``nchwc`` order uses."""

    weight: Any
    bias: Any = None
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    group: int = 1
    order: str = "mlas"
    isa: str = "avx512f"

    def check(self, where_: str) -> None:
        check_float_conv(self, where_)
        if self.order not in ORDERS:
            raise ProgramError(f"{where_}: 'order' must be one of {sorted(ORDERS)}, got {self.order!r}")
        if self.isa not in ORT_ISAS:
            raise ProgramError(f"{where_}: 'isa' must be one of {list(ORT_ISAS)}, got {self.isa!r}")


def execute_float_conv(step, p, x):
    """Conv in float32."""
    geometry = dict(weight=p.weight, bias=p.bias, strides=p.strides, pads=p.pads,
                    dilations=p.dilations, group=int(p.group))
    if p.order == "nchwc":
        return (conv_nchwc(x, **geometry, block=BLOCKS[p.isa]),), stats()
    return (conv_ort(x, **geometry),), stats()


KIND = register("float_conv", FloatConvParams, execute_float_conv)
