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

    def _FloatMatMul(self, node, a, b):
        at = node.attrs
        a = np.swapaxes(a, -1, -2) if at.get("trans_a") and a.ndim > 1 else a
        b = np.swapaxes(b, -1, -2) if at.get("trans_b") and b.ndim > 1 else b
        return at.get("alpha", 1.0) * np.matmul(a, b)

    def _FloatConv(self, node, x):
        from mrq.float_ref import conv2d_nchw
        at = node.attrs
        return conv2d_nchw(x, at["weight"], at.get("bias"), at["strides"], at["pads"],
                           at["dilations"], at["group"])

    def _FloatReduceL2(self, node, x):
        return np.sqrt((x * x).sum(axis=-1, keepdims=True))

    # plain-number ops of mixed graphs (mrq/onnx_import_ml.py): exact functions of their inputs
    def _FloatML(self, node, x):
        at, op = node.attrs, node.attrs["float_op"]
        if op in ("Imputer", "Scaler"):
            stride = x.shape[0] if x.ndim == 1 else x.shape[1]
            per = (lambda v: np.asarray(v, np.float64)[np.arange(x.size).reshape(x.shape) % stride]
                   if np.size(v) == stride else np.asarray(v, np.float64).reshape(-1)[0])
            if op == "Scaler":
                return (x - per(at["offset"])) * per(at["scale"])
            hit = np.isnan(x) if np.isnan(at["replaced"]) else x == at["replaced"]
            return np.where(hit, per(at["values"]), x)
        if op == "OneHotEncoder":
            cats = np.asarray(at["cats"])
            return (np.asarray(x)[..., None] == cats).astype(np.float64)
        if op == "Lookup":
            return np.asarray(at["table"])[np.asarray(x).astype(np.int64)]
        return np.argmax(x, axis=at["axis"], keepdims=bool(at["keepdims"]))

    def _FloatCast(self, node, x):
        return np.trunc(x) if node.attrs["to"] != "float32" else x

    # float math of transformers (mrq/onnx_import_math.py)
    def _FloatMath(self, node, x):
        with np.errstate(all="ignore"):
            return {"Sqrt": np.sqrt, "Neg": np.negative, "Abs": np.abs, "Square": np.square,
                    "Cube": lambda v: v * v * v,
                    "FastGelu": lambda v: 0.5 * v * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (
                        v + 0.044715 * v ** 3)))}[node.attrs["float_op"]](x)

    def _FloatReduceMean(self, node, x):
        return x.mean(axis=-1, keepdims=bool(node.attrs["keepdims"]))

    def _FloatRmsNorm(self, node, x):
        ms = (x * x).mean(axis=-1, keepdims=True)
        return x / np.sqrt(ms + float(node.attrs["epsilon"])) * np.asarray(node.attrs["scale"], x.dtype)
