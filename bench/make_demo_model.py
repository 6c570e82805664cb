"""Regenerate mrq/data/demo_cnn.onnx: a small CNN quantized by ONNX Runtime's quantize_static.

int8 asymmetric activations, int8 symmetric per-channel weights (a format both ONNX Runtime and
TFLite-style hardware accept). Deterministic: `python bench/make_demo_model.py`.
"""
import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

OUT = os.path.join(os.path.dirname(__file__), "..", "mrq", "data", "demo_cnn.onnx")


def float_model(rng) -> onnx.ModelProto:
    inits, nodes = [], []

    def w(name, shape, fan_in):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name))
        return name

    def b(name, n):
        inits.append(numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np.float32), name))
        return name

    nodes.append(helper.make_node("Conv", ["input", w("w1", (16, 3, 3, 3), 27), b("b1", 16)], ["c1"], pads=[1, 1, 1, 1], name="stem_conv"))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="stem_relu"))
    nodes.append(helper.make_node("Conv", ["r1", w("w2", (16, 1, 3, 3), 9), b("b2", 16)], ["c2"], pads=[1, 1, 1, 1], group=16, name="dw_conv"))
    nodes.append(helper.make_node("Relu", ["c2"], ["r2"], name="dw_relu"))
    nodes.append(helper.make_node("Conv", ["r2", w("w3", (16, 16, 1, 1), 16), b("b3", 16)], ["c3"], name="pw_conv"))
    nodes.append(helper.make_node("Add", ["c3", "r1"], ["a1"], name="residual_add"))
    nodes.append(helper.make_node("MaxPool", ["a1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="maxpool"))
    nodes.append(helper.make_node("Conv", ["p1", w("w4", (32, 16, 3, 3), 144), b("b4", 32)], ["c4"], pads=[1, 1, 1, 1], strides=[2, 2], name="down_conv"))
    nodes.append(helper.make_node("Relu", ["c4"], ["r4"], name="down_relu"))
    nodes.append(helper.make_node("GlobalAveragePool", ["r4"], ["g"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"], name="flatten"))
    nodes.append(helper.make_node("Gemm", ["f", w("wfc", (10, 32), 32), b("bfc", 10)], ["logits"], transB=1, name="classifier"))
    graph = helper.make_graph(nodes, "demo_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class Reader(CalibrationDataReader):
    def __init__(self, rng):
        self.batches = iter([{"input": rng.standard_normal((4, 3, 16, 16)).astype(np.float32)} for _ in range(8)])

    def get_next(self):
        return next(self.batches, None)


def main():
    rng = np.random.default_rng(20261126)
    model = float_model(rng)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "float.onnx")
        onnx.save(model, src)
        quantize_static(src, OUT, Reader(rng), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    sys.exit(main())
