"""Pointwise ops that an accelerator runs as a 256-entry table (LUT) on 8-bit codes.

One entry per op: its ONNX float op (for import and export), its real-valued semantics and its
attributes with their ONNX defaults. Everything else is generic: the importer reads the QDQ
pattern ``DequantizeLinear -> op -> QuantizeLinear`` (and ORT's ``com.microsoft`` QLinear* forms
of it), the float reference evaluates ``real``, lowering builds the table by evaluating the op on
every input code's float32 value and quantizing it with the profile's own quantizer, and export
writes the float op between Q/DQ.

``real`` is the op's true function. A runtime whose float32 kernel is a different deterministic
algorithm (ONNX Runtime's MLAS approximations, :mod:`mrq.ort_float`) names it in ``runtime``
(profile ``runtime`` -> function); its table is built with that function, which makes the table
equal, code for code, to what the runtime computes. Adding an op is one entry here (and its name
in hw_profiles/schema.json's op list).

IR names: ONNX ``Sigmoid`` is the IR's ``Logistic`` (TFLite's name, one op for both importers).
``Logistic``, ``Tanh`` and ``HardSwish`` also have their own lowering (LiteRT's table arithmetic,
mrq/lower_extra.py, mrq/lower_movement.py); it is used unless the profile's runtime is named in
the entry's ``runtime``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mrq import ort_float
from mrq.errors import ModelError

_erf = np.frompyfunc(math.erf, 1, 1)


@dataclass(frozen=True)
class PointwiseOp:
    onnx_op: str
    # real(x, attrs) -> y in x's float dtype: float32 for tables (runtimes build them in
    # float32), float64 in the float reference
    real: Callable
    attrs: dict = field(default_factory=dict)    # ONNX attribute -> default
    choices: dict = field(default_factory=dict)  # attribute -> the values it may take
    runtime: dict = field(default_factory=dict)  # profile runtime -> its float32 function(x, attrs)
    opset: int = 1                               # first ONNX opset with the op (for export)

    def table_function(self, runtime: str) -> Callable:
        """The function a table is built with on ``runtime``: its own kernel, else ``real``."""
        return self.runtime.get(runtime, self.real)


def _logistic(x, a):
    return 1.0 / (1.0 + np.exp(-x))


def _hard_sigmoid(x, a):
    t = x.dtype.type
    return np.clip(t(a["alpha"]) * x + t(a["beta"]), t(0.0), t(1.0))


def _hard_swish(x, a):
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _gelu(x, a):
    if a["approximate"] == "tanh":
        inner = np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))
    else:
        inner = _erf(x / math.sqrt(2.0)).astype(x.dtype)
    return 0.5 * x * (1.0 + inner)


POINTWISE = {
    "LeakyRelu": PointwiseOp("LeakyRelu",
                             lambda x, a: np.where(x >= 0, x, x.dtype.type(a["alpha"]) * x),
                             {"alpha": 0.01}, opset=6),
    "Logistic": PointwiseOp("Sigmoid", _logistic, opset=6,
                            runtime={"onnxruntime": lambda x, a: ort_float.logistic(x)}),
    "Tanh": PointwiseOp("Tanh", lambda x, a: np.tanh(x), opset=6,
                        runtime={"onnxruntime": lambda x, a: ort_float.tanh(x)}),
    # in float32, alpha * x + beta rounded twice is also ORT's kernel
    "HardSigmoid": PointwiseOp("HardSigmoid", _hard_sigmoid, {"alpha": 0.2, "beta": 0.5}, opset=6),
    "HardSwish": PointwiseOp("HardSwish", _hard_swish, opset=14,
                             runtime={"onnxruntime": lambda x, a: ort_float.hard_swish(x)}),
    "Gelu": PointwiseOp("Gelu", _gelu, {"approximate": "none"}, {"approximate": ("none", "tanh")},
                        opset=20,
                        runtime={"onnxruntime": lambda x, a: ort_float.gelu(x, a["approximate"])}),
}

BY_ONNX = {op.onnx_op: name for name, op in POINTWISE.items()}


def ir_attrs(name: str, onnx_attrs: dict, node_name: str | None = None) -> dict:
    """The IR node's attributes: every attribute of the op, defaults filled in, values checked."""
    op = POINTWISE[name]
    attrs = {key: onnx_attrs.get(key, default) for key, default in op.attrs.items()}
    attrs = {key: v.decode() if isinstance(v, bytes) else v for key, v in attrs.items()}
    for key, allowed in op.choices.items():
        if attrs[key] not in allowed:
            raise ModelError(f"node {node_name or name!r} ({op.onnx_op}): {key}={attrs[key]!r} "
                             f"is not one of {', '.join(map(repr, allowed))}")
    return attrs


__all__ = ["BY_ONNX", "POINTWISE", "PointwiseOp", "ir_attrs"]
