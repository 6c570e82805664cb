"""``dequantize_blocked``: integer x -> float32 with blocked scales (ONNX DequantizeLinear with
``block_size``, opset 21)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import KernelInputError
from simulator.kernels import quant as quant_k
from simulator.steps.base import Params, register, stats, where
from simulator.steps.quantize_blocked import check_block_params, expand_blocks


@dataclass(frozen=True, kw_only=True, eq=False)
class DequantizeBlockedParams(Params):
    """``scale``/``zero_point``: arrays of x's rank, of x's shape except ceil(dim / block_size)
    along ``axis``. Per element, the arithmetic of ``dequantize``: ``f32(f32(x - zp) * scale)``."""

    scale: Any
    zero_point: Any
    axis: int
    block_size: int

    def check(self, where_: str) -> None:
        check_block_params(self, where_)


def execute_dequantize_blocked(step, p, x):
    """integer x -> float32, one expanded parameter per element (the dequantize kernel on the
    flattened tensor)."""
    if x.ndim != np.ndim(p.scale):
        raise KernelInputError(f"{where(step)}: input of rank {x.ndim}, blocked parameters of "
                               f"rank {np.ndim(p.scale)}")
    axis = p.axis % x.ndim
    scale = expand_blocks(np.asarray(p.scale, np.float32), x.shape, axis, p.block_size)
    zp = expand_blocks(np.asarray(p.zero_point, np.int64), x.shape, axis, p.block_size)
    flat = quant_k.dequantize(np.ascontiguousarray(x).reshape(1, -1), scale=scale.reshape(-1),
                              zero_point=zp.reshape(-1), axis=1)
    return (flat.reshape(x.shape),), stats()


KIND = register("dequantize_blocked", DequantizeBlockedParams, execute_dequantize_blocked)
