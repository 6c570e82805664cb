"""``maxpool``: max pooling in the input dtype."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.kernels import pool as pool_k
from simulator.steps.base import Params, check_layout, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class MaxpoolParams(Params):
    """Max pooling with ONNX geometry (``kernel``, ``strides``, ``pads`` (top, left, bottom,
    right), ``dilations``, ``ceil_mode``). A window with no valid tap yields the dtype
    minimum."""

    kernel: tuple
    layout: str = "NCHW"
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    ceil_mode: int = 0

    def check(self, where_: str) -> None:
        check_layout(self.layout, where_)

    def kernel_kwargs(self) -> dict:
        return dict(layout=self.layout, kernel=self.kernel, strides=self.strides,
                    pads=self.pads, dilations=self.dilations, ceil_mode=self.ceil_mode)


def execute_maxpool(step, p, x):
    """Max pooling, same dtype as the input."""
    return (pool_k.maxpool(x, **p.kernel_kwargs()),), stats()


def launch_maxpool(step, p, x):
    return pool_k.maxpool_launch(x, **p.kernel_kwargs())


KIND = register("maxpool", MaxpoolParams, execute_maxpool, launch_maxpool)
