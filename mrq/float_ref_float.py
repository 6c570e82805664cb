"""Float (numpy) semantics of the float-island IR ops of mixed graphs (:mod:`mrq.onnx_import_float`),
in the reference's own precision: the exact functions ORT's float kernels approximate."""
from __future__ import annotations

import numpy as np


class FloatOpsReference:
    def _FloatBinary(self, node, a, b):
        with np.errstate(all="ignore"):
            if node.attrs["float_op"] == "PRelu":
                return np.where(a > 0, a, a * b)
            return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                    "Div": np.divide}[node.attrs["float_op"]](a, b)

    def _FloatUnary(self, node, x):
        at, op = node.attrs, node.attrs["float_op"]
        with np.errstate(all="ignore"):
            if op == "Sigmoid":
                return 1.0 / (1.0 + np.exp(-x))
            if op == "Tanh":
                return np.tanh(x)
            if op in ("Relu", "Clip"):
                lo = 0.0 if op == "Relu" else at.get("lo")
                hi = None if op == "Relu" else at.get("hi")
                return np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)
            if op == "LeakyRelu":
                return np.where(x >= 0, x, at["alpha"] * x)
            if op == "HardSigmoid":
                return np.clip(at["alpha"] * x + at["beta"], 0.0, 1.0)
            if op == "HardSwish":
                return x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)
        raise ValueError(f"float unary op {op!r}")

    def _FloatConcat(self, node, *xs):
        return np.concatenate(xs, axis=node.attrs["axis"])

    def _FloatMaxPool(self, node, x):
        return self._MaxPool(node, x)

    def _FloatSoftmax(self, node, x):
        e = np.exp(x - x.max(axis=node.attrs["axis"], keepdims=True))
        return e / e.sum(axis=node.attrs["axis"], keepdims=True)

    def _FloatGlobalAveragePool(self, node, x):
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)

    def _FloatReduceL2(self, node, x):
        return np.sqrt((x * x).sum(axis=-1, keepdims=True))
