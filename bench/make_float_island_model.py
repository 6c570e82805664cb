"""Regenerate tests/data/onnx_float/dynamic_cnn.u8.onnx: a small CNN exported by PyTorch and
quantized by ONNX Runtime's quantize_dynamic, with float islands between its ConvInteger and
MatMulInteger regions (tests/mrq/test_onnx_float_islands.py). Needs torch (CPU).

    python bench/make_float_island_model.py [OUT]
"""
from __future__ import annotations

import pathlib
import sys
import tempfile

import onnx

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "onnx_float" / "dynamic_cnn.u8.onnx"


def dynamic_cnn(tmp_path):
    """A small CNN exported by PyTorch and quantized by ORT's quantize_dynamic (ConvInteger,
    MatMulInteger): between them SiLU, MaxPool, Split/Concat, Resize, Tanh, LeakyRelu, HardSwish,
    GlobalAveragePool, Flatten and Softmax stay float."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.c2 = torch.nn.Conv2d(16, 12, 3, padding=1)
            self.c3 = torch.nn.Conv2d(12, 12, 1)
            self.fc = torch.nn.Linear(12, 7)

        def forward(self, x):
            x = self.c1(x)
            x = x * torch.sigmoid(x)
            x = torch.nn.functional.max_pool2d(x, 2)
            a, b = torch.split(x, [6, 10], dim=1)
            x = torch.cat([torch.tanh(b), a], dim=1)
            x = torch.nn.functional.leaky_relu(self.c2(x), 0.1)
            x = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
            x = torch.nn.functional.hardswish(self.c3(x))
            x = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)
            return torch.softmax(self.fc(x), dim=1)

    float_path, q_path = tmp_path / "cnn.onnx", tmp_path / "cnn_q.onnx"
    torch.onnx.export(Net().eval(), torch.zeros(1, 3, 12, 12), str(float_path), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False,
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    quantize_dynamic(str(float_path), str(q_path), weight_type=QuantType.QUInt8)
    return onnx.load(q_path)


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(dynamic_cnn(pathlib.Path(tmp)), str(out))
    print(out)
