"""The quantized intermediate representation shared by every importer and pass.

One equation everywhere: ``real = scale * (q - zero_point)``. A quantized tensor carries integer
codes (for constants) and a :class:`QParams`; a float tensor has ``qparams=None``.

Canonical ops (``Node.op``) and their inputs:

=====================  =======================================================================
Quantize               float x -> quantized y (graph input boundary)
Dequantize             quantized x -> float y (graph output boundary)
Conv                   x, w[M, C/g, KH, KW] (const), [bias int32 const]; attrs strides, pads
                       (top, left, bottom, right), dilations, group, layout ('NCHW'/'NHWC')
Gemm                   a[..., K], w[K, N] (const), [bias[N]]; y = a @ w + bias
Add, Mul               a, b (numpy broadcasting)
Clamp                  x; attrs lo, hi (real values; None = unbounded). Relu and Clip import as it.
Rescale                x -> same values on another grid (a DequantizeLinear->QuantizeLinear pair)
MaxPool, AveragePool   x; attrs kernel, strides, pads, dilations, ceil_mode, count_include_pad
GlobalAveragePool      x
Concat                 x...; attrs axis
Reshape                x; attrs shape (0 copies the batch dimension, -1 infers)
Transpose              x; attrs perm
Softmax                x; attrs axis
=====================  =======================================================================

Quantized compute ops (Conv, Gemm, Add, Mul, AveragePool, GlobalAveragePool) may carry a fused
clamp in ``attrs['clamp'] = (lo, hi)`` (real values) from a following Relu/Clip that the importer
folded, so a clamp implied by the graph is never lost.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

INT_DTYPES = ("int4", "uint4", "int8", "uint8", "int16", "uint16", "int32", "int64")

_RANGES = {
    "int4": (-8, 7), "uint4": (0, 15),
    "int8": (-128, 127), "uint8": (0, 255),
    "int16": (-32768, 32767), "uint16": (0, 65535),
    "int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1),
}


def dtype_range(dtype: str) -> tuple[int, int]:
    """(qmin, qmax) of an integer storage dtype."""
    return _RANGES[dtype]


def storage_dtype(dtype: str) -> str:
    """The numpy dtype that holds codes of ``dtype`` (4-bit codes live in 8-bit arrays)."""
    return {"int4": "int8", "uint4": "uint8"}.get(dtype, dtype)


@dataclass(frozen=True, eq=False)
class QParams:
    """Affine quantization of a tensor. ``scale``/``zero_point`` have shape (1,) (per tensor) or
    (C,) with ``axis`` naming the channel axis. ``dtype`` is the code type, e.g. 'int8'."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str
    axis: Optional[int] = None
    narrow_range: bool = False
    bits: Optional[int] = None    # code width when narrower than the dtype (4-bit codes in int8)

    def __post_init__(self):
        object.__setattr__(self, "scale", np.atleast_1d(np.asarray(self.scale, np.float32)))
        object.__setattr__(self, "zero_point", np.atleast_1d(np.asarray(self.zero_point, np.int64)))
        if self.scale.shape != self.zero_point.shape:
            if self.zero_point.size == 1:
                object.__setattr__(self, "zero_point",
                                   np.full(self.scale.shape, self.zero_point[0], np.int64))
            else:
                raise ValueError(f"scale shape {self.scale.shape} != zero point shape {self.zero_point.shape}")
        if self.scale.size > 1 and self.axis is None:
            raise ValueError("per-channel QParams need an axis")

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    @property
    def qmin(self) -> int:
        lo, _ = dtype_range(self.dtype)
        if self.bits is not None:
            lo = -(1 << (self.bits - 1)) if lo < 0 else 0
        return lo + 1 if self.narrow_range else lo

    @property
    def qmax(self) -> int:
        hi = dtype_range(self.dtype)[1]
        if self.bits is not None:
            hi = (1 << (self.bits - 1)) - 1 if dtype_range(self.dtype)[0] < 0 else (1 << self.bits) - 1
        return hi

    def same_grid(self, other: "QParams") -> bool:
        return (self.dtype == other.dtype and self.scale.shape == other.scale.shape
                and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point, other.zero_point))

    def broadcast_shape(self, ndim: int) -> tuple:
        """Shape that makes scale/zero point broadcast against a tensor of rank ``ndim``."""
        if self.scale.size == 1:
            return (1,) * ndim
        shape = [1] * ndim
        shape[self.axis % ndim] = self.scale.size
        return tuple(shape)

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        """Float64 real values of ``codes`` (for analysis, not for bit-exact simulation)."""
        shape = self.broadcast_shape(codes.ndim)
        return (codes.astype(np.float64) - self.zero_point.reshape(shape)) * \
            self.scale.astype(np.float64).reshape(shape)

    def with_(self, **changes) -> "QParams":
        return replace(self, **changes)


@dataclass(eq=False)
class Tensor:
    name: str
    shape: tuple            # leading None = batch dimension; constants have concrete shapes
    dtype: str              # 'float32' or an INT_DTYPES code type
    qparams: Optional[QParams] = None
    data: Optional[np.ndarray] = None   # constants: integer codes (quantized) or float values

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def is_quantized(self) -> bool:
        return self.qparams is not None


@dataclass(eq=False)
class Node:
    op: str
    name: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)


@dataclass(eq=False)
class Graph:
    """A topologically ordered list of nodes over named tensors."""

    tensors: dict
    nodes: list
    inputs: list
    outputs: list
    name: str = "graph"
    meta: dict = field(default_factory=dict)

    def producer(self, tensor_name: str) -> Optional[Node]:
        for node in self.nodes:
            if tensor_name in node.outputs:
                return node
        return None

    def consumers(self, tensor_name: str) -> list:
        return [n for n in self.nodes if tensor_name in n.inputs]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def copy(self) -> "Graph":
        """A deep copy, so passes never mutate their input graph."""
        return copy.deepcopy(self)

    def unique_name(self, base: str) -> str:
        name, i = base, 1
        while name in self.tensors or any(n.name == name for n in self.nodes):
            name, i = f"{base}_{i}", i + 1
        return name

    def const(self, name: str) -> np.ndarray:
        data = self.tensors[name].data
        if data is None:
            raise KeyError(f"{name} is not a constant")
        return data


COMPUTE_OPS = ("Conv", "Gemm", "Add", "Mul", "AveragePool", "GlobalAveragePool")
MOVEMENT_OPS = ("Reshape", "Transpose", "Concat", "MaxPool")


def attr(node: Node, key: str, default: Any = None) -> Any:
    return node.attrs.get(key, default)
