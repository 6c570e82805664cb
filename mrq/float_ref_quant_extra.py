"""Float reference (:mod:`mrq.float_ref`) of blocked quantization and of run-time quantization
parameters (:mod:`mrq.onnx_import_blocked`, :mod:`mrq.onnx_import_runtime_quant`, the
whole-tensor statistics and scalar ops of :mod:`mrq.onnx_import_math`): codes stand for the real
values they quantize, as for ``Quantize``; the float ops are their real-number selves."""
from __future__ import annotations

import numpy as np

from mrq.onnx_import_blocked import expand


class QuantExtraReference:
    def _BlockQuantize(self, node, x):
        return x

    def _BlockDequantize(self, node, x):
        if node.inputs[0] not in self.g.inputs:   # a BlockQuantize's output: already real
            return x
        at = node.attrs   # integer codes fed as a graph input: dequantize them
        shape = np.shape(x)
        scale = expand(np.asarray(at["scale"], np.float64), shape, at["axis"], at["block_size"])
        zp = expand(np.asarray(at["zero_point"], np.float64), shape, at["axis"], at["block_size"])
        return (np.asarray(x, np.float64) - zp) * scale

    def _QuantizeRuntime(self, node, x, scale, zero_point):
        return x

    def _FloatReduceMinMax(self, node, x):
        fn = np.min if node.attrs["float_op"] == "Min" else np.max
        axes = tuple(int(a) for a in node.attrs["axes"])
        return fn(x, axis=axes, keepdims=bool(node.attrs["keepdims"])) if axes else x

    def _FloatMath(self, node, *xs):
        op = node.attrs["float_op"]
        with np.errstate(all="ignore"):
            if op == "Round":
                return np.rint(xs[0])
            if op == "Identity":
                return xs[0]
            if op in ("Min", "Max"):
                fn = np.minimum if op == "Min" else np.maximum
                y = xs[0]
                for x in xs[1:]:
                    y = fn(y, x)
                return y
            if op == "Clip":
                return np.minimum(np.maximum(xs[0], xs[1]), xs[2])
            if op in ("Add", "Sub", "Mul", "Div"):
                return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                        "Div": np.divide}[op](xs[0], xs[1])
        return super()._FloatMath(node, *xs)
