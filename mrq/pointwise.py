"""Pointwise ops that an accelerator runs as a 256-entry table (LUT) on 8-bit codes.

One entry per op: its ONNX float op (for import and export), its real-valued semantics and its
attributes with their ONNX defaults. Everything else is generic: the importer reads the QDQ
pattern ``DequantizeLinear -> op -> QuantizeLinear``, the float reference evaluates ``real``,
lowering builds the table by evaluating ``real`` on every input code's real value and quantizing
it with the profile's own input quantizer, and export writes the float op between Q/DQ.
Adding an op is one entry here (and its name in hw_profiles/schema.json's op list).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class PointwiseOp:
    onnx_op: str
    # real(x, attrs) -> y in x's float dtype: float32 for tables (runtimes build them in
    # float32), float64 in the float reference
    real: Callable
    attrs: dict = field(default_factory=dict)   # ONNX attribute -> default


POINTWISE = {
    "LeakyRelu": PointwiseOp("LeakyRelu",
                             lambda x, a: np.where(x >= 0, x, x.dtype.type(a["alpha"]) * x),
                             {"alpha": 0.01}),
}

BY_ONNX = {op.onnx_op: name for name, op in POINTWISE.items()}


def ir_attrs(name: str, onnx_attrs: dict) -> dict:
    """The IR node's attributes: every attribute of the op, defaults filled in."""
    return {key: onnx_attrs.get(key, default) for key, default in POINTWISE[name].attrs.items()}


__all__ = ["BY_ONNX", "POINTWISE", "PointwiseOp", "ir_attrs"]
