"""``quantize_blocked``: float32 x -> integer codes with blocked scales (ONNX QuantizeLinear with
``block_size``, opset 21)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import KernelInputError, ProgramError
from simulator.kernels import quant as quant_k
from simulator.steps.base import OutBlock, register, stats, where
from simulator.steps.quantize import METHODS


def expand_blocks(value: np.ndarray, shape: tuple, axis: int, block_size: int) -> np.ndarray:
    """The per-element parameters of a blocked ``value`` (x's shape except along ``axis``, where
    it has ceil(dim / block_size) entries): element i on the axis takes entry i // block_size
    (the last block may be partial), as the onnx reference implementation replicates them."""
    full = np.repeat(value, block_size, axis=axis)
    blocks = -(-int(shape[axis]) // block_size) if len(shape) == value.ndim else -1
    if blocks == value.shape[axis]:
        full = full.take(np.arange(shape[axis]), axis=axis)
    if blocks != value.shape[axis] or full.shape != tuple(shape):
        raise KernelInputError(f"blocked parameters of shape {list(value.shape)} (block size "
                               f"{block_size} along axis {axis}) do not fit an input of shape "
                               f"{list(shape)}")
    return full


@dataclass(frozen=True, kw_only=True, eq=False)
class QuantizeBlockedParams(OutBlock):
    """``scale``/``zero_point``: arrays of x's rank, of x's shape except ceil(dim / block_size)
    along ``axis``. Per element, the arithmetic of ``quantize`` (``method='divide'``:
    ``clamp(round(f32(x / scale)) + zero_point)``; NaN to ``out_min``)."""

    scale: Any
    zero_point: Any
    axis: int
    block_size: int
    rounding: str = "half_even"
    method: str = "divide"

    def check(self, where_: str) -> None:
        if self.method not in METHODS:
            raise ProgramError(f"{where_}: method must be 'divide' or 'multiply', got "
                               f"{self.method!r}")
        check_block_params(self, where_)


def check_block_params(p, where_: str) -> None:
    """What blocked scale and zero-point parameters must satisfy (``dequantize_blocked`` and
    ``quantize_blocked``)."""
    if p.block_size < 1:
        raise ProgramError(f"{where_}: block_size must be positive, got {p.block_size}")
    if np.shape(p.scale) != np.shape(p.zero_point) or np.ndim(p.scale) == 0:
        raise ProgramError(f"{where_}: scale and zero_point must be arrays of one shape")
    if not -np.ndim(p.scale) <= p.axis < np.ndim(p.scale):
        raise ProgramError(f"{where_}: axis {p.axis} is outside the parameters' "
                           f"{np.ndim(p.scale)} axes")


def execute_quantize_blocked(step, p, x):
    """float32 x -> integer codes: the expanded parameters, one per element, as a per-axis
    quantize of the flattened tensor (the kernel's arithmetic, element by element)."""
    if x.dtype != np.float32:
        raise KernelInputError(f"{where(step)}: expected float32 input, got {x.dtype}")
    if x.ndim != np.ndim(p.scale):
        raise KernelInputError(f"{where(step)}: input of rank {x.ndim}, blocked parameters of "
                               f"rank {np.ndim(p.scale)}")
    axis = p.axis % x.ndim
    scale = expand_blocks(np.asarray(p.scale, np.float32), x.shape, axis, p.block_size)
    zp = expand_blocks(np.asarray(p.zero_point, np.int64), x.shape, axis, p.block_size)
    out_min, out_max, dt = p.out_range(where(step))
    flat, n_sat = quant_k.quantize(np.ascontiguousarray(x).reshape(1, -1), scale=scale.reshape(-1),
                                   zero_point=zp.reshape(-1), axis=1, rounding=p.rounding,
                                   method=p.method, out_min=out_min, out_max=out_max,
                                   out_dtype=dt)
    return (flat.reshape(x.shape),), stats(0, n_sat)


KIND = register("quantize_blocked", QuantizeBlockedParams, execute_quantize_blocked)
