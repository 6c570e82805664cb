"""Real architectures written in PyTorch, exported to float ONNX and quantized with ONNX Runtime's
``quantize_static`` (QDQ and QOperator, u8/s8 activations, per-tensor/per-channel weights) on
random calibration data, with fixed seeds.

    python bench/torch_models.py OUT_DIR                 # every architecture x quantizer option
    python bench/torch_models.py OUT_DIR --only yolo_head,unet_convt --formats qdq --configs u8s8

Writes ``<arch>.float.onnx`` and ``<arch>.<format>.<config>.onnx`` into OUT_DIR and prints one
line per file. torch is needed here only (``pip install torch==2.13.0``); the tests use the
small files this wrote into tests/data/onnx_real/ (see the README there).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SEED = 20261207


def _nn():
    import torch
    from torch import nn
    return torch, nn


def build(arch: str):
    """(module, input shape) of a named architecture, with seeded random weights and
    BatchNorm statistics (so folding them gives non-trivial scales)."""
    torch, nn = _nn()
    torch.manual_seed(SEED)

    def cbr(ci, co, k=3, s=1, act=None, groups=1):
        layers = [nn.Conv2d(ci, co, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(co)]
        if act is not None:
            layers.append(act())
        return nn.Sequential(*layers)

    class ResNetBlock(nn.Module):   # ResNet-18 stem + one basic block with a projection
        def __init__(self):
            super().__init__()
            self.stem = cbr(3, 16, 3, 2, nn.ReLU)
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.a = cbr(16, 32, 3, 2, nn.ReLU)
            self.b = cbr(32, 32, 3, 1)
            self.proj = cbr(16, 32, 1, 2)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.pool(self.stem(x))
            y = torch.relu(self.b(self.a(x)) + self.proj(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    class MobileNetV3Block(nn.Module):   # inverted residual with HardSwish and squeeze-excite
        def __init__(self):
            super().__init__()
            self.stem = cbr(3, 16, 3, 2, nn.Hardswish)
            self.expand = cbr(16, 48, 1, 1, nn.Hardswish)
            self.dw = cbr(48, 48, 3, 1, nn.Hardswish, groups=48)
            self.se1 = nn.Conv2d(48, 12, 1)
            self.se2 = nn.Conv2d(12, 48, 1)
            self.project = cbr(48, 16, 1, 1)
            self.head = nn.Conv2d(16, 8, 1)

        def forward(self, x):
            x = self.stem(x)
            y = self.dw(self.expand(x))
            s = nn.functional.hardsigmoid(self.se2(torch.relu(self.se1(
                nn.functional.adaptive_avg_pool2d(y, 1)))))
            return self.head(self.project(y * s) + x)

    class YoloHead(nn.Module):   # two scales, nearest upsample + concat, split into box/obj/cls
        def __init__(self):
            super().__init__()
            self.c1 = cbr(3, 16, 3, 2, nn.LeakyReLU)
            self.c2 = cbr(16, 32, 3, 2, nn.LeakyReLU)
            self.c3 = cbr(32, 32, 3, 2, nn.LeakyReLU)
            self.lat = cbr(32, 16, 1, 1, nn.LeakyReLU)
            self.fuse = cbr(48, 32, 3, 1, nn.LeakyReLU)
            self.det = nn.Conv2d(32, 3 * 8, 1)

        def forward(self, x):
            p3 = self.c2(self.c1(x))
            p4 = self.c3(p3)
            up = nn.functional.interpolate(self.lat(p4), scale_factor=2, mode="nearest")
            y = self.det(self.fuse(torch.cat([up, p3], 1)))
            n, _, h, w = y.shape
            y = y.reshape(n, 3, 8, h, w).permute(0, 1, 3, 4, 2)
            box, obj, cls = torch.split(y, [4, 1, 3], dim=-1)
            return torch.sigmoid(box[..., :2]), box[..., 2:4], torch.sigmoid(obj), cls

    class UNetConvT(nn.Module):   # U-Net: down with MaxPool, up with ConvTranspose, skip concat
        def __init__(self):
            super().__init__()
            self.e1 = cbr(3, 8, 3, 1, nn.ReLU)
            self.e2 = cbr(8, 16, 3, 1, nn.ReLU)
            self.up = nn.ConvTranspose2d(16, 8, 2, 2)
            self.d1 = cbr(16, 8, 3, 1, nn.ReLU)
            self.out = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            a = self.e1(x)
            b = self.e2(nn.functional.max_pool2d(a, 2))
            return self.out(self.d1(torch.cat([self.up(b), a], 1)))

    class DeepLabResize(nn.Module):   # strided encoder, bilinear Resize back up, pad + crop
        def __init__(self):
            super().__init__()
            self.e1 = cbr(3, 16, 3, 2, nn.ReLU)
            self.e2 = cbr(16, 16, 3, 2, nn.ReLU)
            self.aspp = cbr(16, 16, 3, 1, nn.ReLU)
            self.cls = nn.Conv2d(16, 5, 1)

        def forward(self, x):
            y = self.aspp(self.e2(self.e1(x)))
            y = nn.functional.interpolate(self.cls(y), scale_factor=4, mode="bilinear",
                                          align_corners=False)
            y = nn.functional.pad(y, (1, 1, 1, 1))
            return y[:, :, 1:-1, 1:-1], torch.argmax(y, 1)

    class ViTBlock(nn.Module):   # patch embedding + one pre-norm encoder block
        def __init__(self, dim=32, heads=4):
            super().__init__()
            self.heads = heads
            self.embed = nn.Conv2d(3, dim, 4, 4)
            self.ln1 = nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.ln2 = nn.LayerNorm(dim)
            self.mlp1 = nn.Linear(dim, 2 * dim)
            self.mlp2 = nn.Linear(2 * dim, dim)
            self.head = nn.Linear(dim, 10)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)       # N, T, D
            n, tokens, d = t.shape
            # split q/k/v before moving the heads so that the batch stays the first axis (timm's
            # permute(2, 0, 3, 1, 4) moves it, which mrq refuses: it runs batch items apart)
            q, k, v = (z.transpose(1, 2) for z in self.qkv(self.ln1(t))
                       .reshape(n, tokens, 3, self.heads, d // self.heads).unbind(2))
            att = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, -1)
            t = t + self.proj((att @ v).transpose(1, 2).reshape(n, tokens, d))
            t = t + self.mlp2(nn.functional.gelu(self.mlp1(self.ln2(t))))
            return self.head(t.mean(1))

    class ViTNoNorm(nn.Module):   # LayerNorm-free encoder block, ReLU MLP, per-head matmuls
        def __init__(self, dim=32, heads=4):
            super().__init__()
            self.heads = heads
            self.embed = nn.Conv2d(3, dim, 4, 4)
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.proj = nn.Linear(dim, dim)
            self.mlp1 = nn.Linear(dim, 2 * dim)
            self.mlp2 = nn.Linear(2 * dim, dim)
            self.head = nn.Linear(dim, 10)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)       # N, T, D
            n, tokens, d = t.shape
            hd = d // self.heads

            def split(z):   # N, H, T, hd without moving the batch axis
                return z.reshape(n, tokens, self.heads, hd).transpose(1, 2)
            q, k, v = split(self.q(t)), split(self.k(t)), split(self.v(t))
            att = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * hd ** -0.5, -1)
            t = t + self.proj(torch.matmul(att, v).transpose(1, 2).reshape(n, tokens, d))
            t = t + self.mlp2(torch.relu(self.mlp1(t)))
            return self.head(t.mean(1))

    archs = {"resnet_block": (ResNetBlock, (1, 3, 32, 32)),
             "mobilenetv3_block": (MobileNetV3Block, (1, 3, 32, 32)),
             "yolo_head": (YoloHead, (1, 3, 32, 32)),
             "unet_convt": (UNetConvT, (1, 3, 16, 16)),
             "deeplab_resize": (DeepLabResize, (1, 3, 32, 32)),
             "vit_block": (ViTBlock, (1, 3, 16, 16)), "vit_nonorm": (ViTNoNorm, (1, 3, 16, 16))}
    cls, shape = archs[arch]
    model = cls()
    for m in model.modules():   # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval(), shape


ARCHS = ("resnet_block", "mobilenetv3_block", "yolo_head", "unet_convt", "deeplab_resize", "vit_block",
         "vit_nonorm")
# name -> (activation type, weight type, per_channel)
CONFIGS = {"u8s8": ("QUInt8", "QInt8", False), "s8s8pc": ("QInt8", "QInt8", True),
           "u8u8": ("QUInt8", "QUInt8", False)}
FORMATS = ("qdq", "qop")


def export_float(arch: str, path: Path) -> tuple:
    torch, _ = _nn()
    model, shape = build(arch)
    x = torch.randn(*shape)
    torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False,
                      input_names=["input"], do_constant_folding=True)
    return shape


class _RandomReader:
    def __init__(self, name, shape, count=8):
        rng = np.random.default_rng(SEED)
        self.items = iter([{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)])

    def get_next(self):
        return next(self.items, None)


def quantize(float_path: Path, out_path: Path, shape, fmt: str, config: str) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    act, weight, per_channel = CONFIGS[config]
    pre = out_path.with_suffix(".pre.onnx")
    quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out_path), _RandomReader("input", shape),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    activation_type=getattr(QuantType, act), weight_type=getattr(QuantType, weight),
                    per_channel=per_channel)
    pre.unlink()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--only", help="comma-separated architectures (default: all)")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    a = ap.parse_args(argv)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    archs = a.only.split(",") if a.only else list(ARCHS)
    for arch in archs:
        fp = out / f"{arch}.float.onnx"
        shape = export_float(arch, fp)
        for fmt in a.formats.split(","):
            for config in a.configs.split(","):
                qp = out / f"{arch}.{fmt}.{config}.onnx"
                quantize(fp, qp, shape, fmt, config)
                print(f"{qp}  ({qp.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
