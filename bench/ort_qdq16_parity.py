"""Parity of `mrq sim --profile onnxruntime-cpu` with ONNX Runtime on 16-bit QDQ models (int16 /
uint16 activations), which ORT executes as float islands (DequantizeLinear -> float Conv / Gemm /
Add -> QuantizeLinear: its QDQ fusions to integer kernels take 8-bit activations only).

    python bench/ort_qdq16_parity.py /tmp/qdq16              # generate, then compare
    python bench/ort_qdq16_parity.py /tmp/qdq16 --integer-path   # what mrq's integer Conv/Gemm gave

Models: a small CNN (strided conv, depthwise 3x3, pointwise, residual Add, grouped dilated conv,
Flatten, Gemm) and the same without the residual, exported with PyTorch and quantized with ORT's
``quantize_static`` (QDQ, int16 / uint16 activations, int8 weights per tensor and per channel,
int16 weights per channel), fixed seeds. Output and intermediate mismatches are counted with
bench/onnx_real_parity.py. ``--integer-path`` lowers the Conv/Gemm nodes with mrq's integer
arithmetic instead of ORT's float kernels (the state before the float islands; the residual Add
has no 16-bit integer form under onnxruntime-cpu and is refused there).

The float kernels reproduce ORT 1.32's x86-64 MLAS SGEMM (AVX-512F / FMA3 kernels for multi-row
products, the AVX one-row kernels for depthwise and batch-1 Gemm), one intra-op thread; the host
is printed with the table.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.onnx_real_parity import compare_model

SEED = 0
SHAPE = (1, 3, 16, 16)
# name -> (activation QuantType, weight QuantType, per_channel)
CONFIGS = {"s16s8": ("QInt16", "QInt8", False), "s16s8pc": ("QInt16", "QInt8", True),
           "u16s8": ("QUInt16", "QInt8", False), "u16s8pc": ("QUInt16", "QInt8", True),
           "s16s16pc": ("QInt16", "QInt16", True)}
ARCHS = ("cnn16", "plain16")


def build(arch: str):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, residual: bool):
            super().__init__()
            self.residual = residual
            self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.pw = nn.Conv2d(16, 16, 1)
            self.grouped = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4)
            self.fc = nn.Linear(16 * 8 * 8, 10)

        def forward(self, x):
            y = torch.relu(self.stem(x))
            z = self.pw(torch.relu(self.dw(y)))
            y = y + z if self.residual else z
            y = torch.relu(self.grouped(y))
            return self.fc(y.flatten(1))

    torch.manual_seed(SEED)
    return Net(arch == "cnn16").eval()


class _Reader:
    def __init__(self, count=8):
        rng = np.random.default_rng(SEED)
        self.items = iter([{"input": rng.standard_normal(SHAPE).astype(np.float32)}
                           for _ in range(count)])

    def get_next(self):
        return next(self.items, None)


def generate(out: Path, archs=ARCHS, configs=tuple(CONFIGS)) -> list:
    import torch
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for arch in archs:
        fp = out / f"{arch}.float.onnx"
        torch.onnx.export(build(arch), (torch.randn(*SHAPE),), str(fp), opset_version=17,
                          dynamo=False, input_names=["input"], do_constant_folding=True)
        for config in configs:
            act, weight, per_channel = CONFIGS[config]
            qp = out / f"{arch}.qdq.{config}.onnx"
            quantize_static(str(fp), str(qp), _Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=getattr(QuantType, act),
                            weight_type=getattr(QuantType, weight), per_channel=per_channel)
            paths.append(qp)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("-n", "--inputs", type=int, default=4, help="random inputs per model")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-generate", action="store_true", help="compare the models already there")
    ap.add_argument("--integer-path", action="store_true",
                    help="lower Conv/Gemm with mrq's integer arithmetic (before the float islands)")
    a = ap.parse_args(argv)
    import logging
    logging.disable(logging.WARNING)   # quantize_static's opset-upgrade advice
    out = Path(a.out_dir)
    paths = (sorted(out.glob("*.qdq.*.onnx")) if a.no_generate else generate(out))
    if a.integer_path:
        from mrq.lower_islands import FloatIslandLowering
        FloatIslandLowering.ort_float_island = lambda self, node: False
    import onnxruntime
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"ORT {onnxruntime.__version__}, {cpu}; {'integer' if a.integer_path else 'float-island'} "
          f"lowering, {a.inputs} random inputs per model")
    print(f"{'model':30s} {'outputs':>17s} {'intermediates':>23s}  notes")
    bad = out_bad = out_all = mid_bad = mid_all = 0
    for path in paths:
        r = compare_model(path, a.inputs, a.seed)
        if r["error"]:
            bad += 1
            print(f"{r['model']:30s} {'-':>17s} {'-':>23s}  unsupported: {r['error']}")
            continue
        out_bad, out_all = out_bad + r["out_bad"], out_all + r["out_elems"]
        mid_bad, mid_all = mid_bad + r["mid_bad"], mid_all + r["mid_elems"]
        bad += bool(r["out_bad"] or r["mid_bad"])
        print(f"{r['model']:30s} {r['out_bad']:7d}/{r['out_elems']:<9d} "
              f"{r['mid_bad']:7d}/{r['mid_elems']:<9d}({r['mid_tensors']:3d})  {r['worst']}")
    print(f"\nTOTAL {len(paths)} models: outputs {out_bad}/{out_all} mismatching, intermediates "
          f"{mid_bad}/{mid_all}; {bad} models not exact or refused")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
