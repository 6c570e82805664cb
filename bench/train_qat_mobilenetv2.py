"""Train a small MobileNetV2 on Fashion-MNIST with TF1.x-style quantization-aware training and
export it as ONNX QDQ, plus a float model and an ONNX Runtime ``quantize_static`` model.

Data: ``sudo apt-get install dataset-fashion-mnist`` (see ``bench/fashion_mnist.py``).
Needs ``torch`` (CPU), ``onnx``, ``onnxruntime``, ``numpy``.

Reproduce ``bench/models`` (about 25 min on one idle core; ``--float-checkpoint`` lets a rerun
skip the float training)::

    python bench/train_qat_mobilenetv2.py --epochs 5 --qat-epochs 1 --out-dir bench/models

Recipe (details in ``bench/models/README.md``):

1. Float training with BatchNorm (AdamW + one-cycle LR, random shift +-2 px and horizontal flip).
2. BatchNorm is folded into the conv weights/biases once, after float training
   (``w' = w * g/sqrt(v+eps)``, ``b' = beta - m * g/sqrt(v+eps)``); QAT fine-tunes the folded
   convs (there is no BN during QAT, so the trained graph is exactly the exported graph).
3. QAT with hand-written fake quantization that mimics TF1.x ``tf.contrib.quantize``:

   * activations: asymmetric per-tensor uint8 [0, 255], range from a moving average (decay 0.999,
     bias-corrected at the start) of batch min/max, widened to contain 0, zero point nudged to
     an integer (TF ``Nudge``). The network input is fixed at scale 1/255, zero point 0.
   * weights: asymmetric per-tensor uint8 with TF1's narrow range [1, 255], range = the weight
     tensor's current min/max (widened to contain 0), zero point nudged.
   * biases: int32, scale = s_in * s_w (float32 product), zero point 0 (TF1 does this only at
     conversion; here it is simulated during QAT too so that export is exact).
   * ReLU6 has no op of its own in the QDQ export: the conv's output quantizer has zero point 0 and
     ``255 * scale <= 6`` (the moving min of a ReLU6 output is 0 and its max cannot exceed 6), so
     QuantizeLinear's saturation *is* the clamp, as in TF1/TFLite exports. The float model keeps
     explicit ``Clip(0, 6)``.
4. Export with ``onnx.helper`` (opset 13): Q/DQ on every activation, uint8 weight initializers
   -> DequantizeLinear, int32 bias -> DequantizeLinear, float Conv/Add/GlobalAveragePool/
   Flatten/Gemm in between.
5. ``onnxruntime.quantization.quantize_static`` of the float model: QDQ, QUInt8 asymmetric
   activations, QInt8 per-channel weights, MinMax calibration on the first 512 training images.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_mnist  # noqa: E402

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 13
IR_VERSION = 7

STEM_CHANNELS = 16
# MobileNetV2 table: (expansion t, output channels c, repeats n, first stride s)
BLOCKS = [
    (1, 16, 1, 1),   # 28x28
    (4, 24, 2, 2),   # 14x14
    (4, 32, 3, 2),   # 7x7
    (4, 64, 2, 1),   # 7x7
    (4, 96, 1, 1),   # 7x7
]
LAST_CHANNELS = 256
NUM_CLASSES = 10
CL = torch.channels_last  # ~1.4x faster convolutions on CPU than NCHW-contiguous


# --------------------------------------------------------------------------------------------
# Float model (with BatchNorm)
# --------------------------------------------------------------------------------------------

class ConvBN(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1, relu6=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu6 = relu6

    def forward(self, x):
        y = self.bn(self.conv(x))
        return F.relu6(y) if self.relu6 else y


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        layers = []
        if t != 1:
            layers.append(ConvBN(cin, hidden, 1))                                  # expand
        layers.append(ConvBN(hidden, hidden, 3, stride, groups=hidden))            # depthwise
        layers.append(ConvBN(hidden, cout, 1, relu6=False))                        # linear project
        self.layers = nn.ModuleList(layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        for layer in self.layers:
            y = layer(y)
        return x + y if self.use_res else y


class MobileNetV2Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ConvBN(1, STEM_CHANNELS, 3)
        blocks, cin = [], STEM_CHANNELS
        for t, c, n, s in BLOCKS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.ModuleList(blocks)
        self.last = ConvBN(cin, LAST_CHANNELS, 1)
        self.fc = nn.Linear(LAST_CHANNELS, NUM_CLASSES)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        x = self.last(x).mean((2, 3))
        return self.fc(x)


# --------------------------------------------------------------------------------------------
# TF1.x-style fake quantization
# --------------------------------------------------------------------------------------------

def nudged_qparams(mn: torch.Tensor, mx: torch.Tensor, qmin: int, qmax: int):
    """TF ``Nudge``: range widened to contain 0, zero point rounded to an integer in
    [qmin, qmax]. Returns (float32 scale tensor, int32 zero point tensor, python zp)."""
    mn = torch.clamp(mn.detach().float(), max=0.0)
    mx = torch.clamp(mx.detach().float(), min=0.0)
    scale = (mx - mn) / float(qmax - qmin)
    scale = torch.clamp(scale, min=1e-12).reshape(1).float()
    zp = float(qmin) - mn.reshape(1) / scale
    zp = torch.clamp(torch.round(zp), qmin, qmax).to(torch.int32)
    return scale, zp


class ActFQ(nn.Module):
    """Asymmetric per-tensor uint8 activation fake-quant with a moving-average min/max observer."""

    def __init__(self, decay: float = 0.999, fixed: tuple[float, float] | None = None):
        super().__init__()
        self.decay = decay
        self.fixed = fixed
        lo, hi = fixed if fixed else (0.0, 0.0)
        self.register_buffer("min_val", torch.tensor(lo))
        self.register_buffer("max_val", torch.tensor(hi))
        self.register_buffer("count", torch.tensor(0, dtype=torch.int64))
        self.enabled = False    # apply fake quantization
        self.observing = False  # update min/max from the data

    @torch.no_grad()
    def observe(self, x):
        if self.fixed:
            return
        mn, mx = torch.aminmax(x)
        k = int(self.count)
        d = min(self.decay, k / (k + 1.0))  # running mean first, then EMA (bias-corrected)
        self.min_val.mul_(d).add_((1 - d) * mn)
        self.max_val.mul_(d).add_((1 - d) * mx)
        self.count += 1

    def qparams(self):
        return nudged_qparams(self.min_val, self.max_val, 0, 255)

    def forward(self, x):
        if self.observing:
            self.observe(x)
        if not self.enabled:
            return x
        scale, zp = self.qparams()
        return _FastFakeQuant.apply(x, scale.item(), int(zp.item()), 0, 255)


class _FastFakeQuant(torch.autograd.Function):
    """Per-tensor affine fake quantization, bit-identical in the forward pass to
    ``torch.fake_quantize_per_tensor_affine`` (clamp to the grid's range, ``round(x * (1/s)) * s``)
    but about 4x faster on CPU; straight-through gradient inside the range."""

    @staticmethod
    def forward(ctx, x, scale: float, zero_point: int, qmin: int, qmax: int):
        lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        y = torch.clamp(x, lo, hi)
        return y.mul_(1.0 / scale).round_().mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, x, ctx.lo, ctx.hi), None, None, None, None


def weight_qparams(w: torch.Tensor):
    """Asymmetric per-tensor uint8 weights, TF1 narrow range [1, 255]."""
    return nudged_qparams(w.min(), w.max(), 1, 255)


def fake_quant_weight(w):
    scale, zp = weight_qparams(w)
    return torch.fake_quantize_per_tensor_affine(w, scale, zp, 1, 255), scale


def bias_scale(in_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    return (in_scale.float() * w_scale.float()).float()


def quantize_bias(b, s_b):
    """int32 codes of b on the grid s_b (zero point 0)."""
    return torch.clamp(torch.round(b.detach() / s_b), -2**31, 2**31 - 1)


def fake_quant_bias(b, s_b):
    # straight-through estimator: forward uses the int32 grid, gradient passes to b
    return b + (quantize_bias(b, s_b) * s_b - b).detach()


# --------------------------------------------------------------------------------------------
# BN-folded model used for QAT and export
# --------------------------------------------------------------------------------------------

class QConv(nn.Module):
    def __init__(self, name, weight, bias, stride, groups, relu6):
        super().__init__()
        self.name = name
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.stride, self.groups, self.relu6 = stride, groups, relu6
        self.pad = weight.shape[-1] // 2
        self.out_q = ActFQ()
        self.quant = False

    def forward(self, x, in_q: ActFQ):
        w, b = self.weight, self.bias
        if self.quant:
            w, s_w = fake_quant_weight(w)
            b = fake_quant_bias(b, bias_scale(in_q.qparams()[0], s_w))
        y = F.conv2d(x, w, b, self.stride, self.pad, 1, self.groups)
        if self.relu6:
            # Mathematically redundant once out_q is enabled (its range is [0, <=6]); kept so that
            # the float-mode forward and the observer see ReLU6 outputs.
            y = F.relu6(y)
        return self.out_q(y)


class QLinear(nn.Module):
    def __init__(self, name, weight, bias):
        super().__init__()
        self.name = name
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.out_q = ActFQ()
        self.quant = False

    def forward(self, x, in_q: ActFQ):
        w, b = self.weight, self.bias
        if self.quant:
            w, s_w = fake_quant_weight(w)
            b = fake_quant_bias(b, bias_scale(in_q.qparams()[0], s_w))
        return self.out_q(F.linear(x, w, b))


class QBlock(nn.Module):
    def __init__(self, name, convs, use_res):
        super().__init__()
        self.name = name
        self.convs = nn.ModuleList(convs)
        self.use_res = use_res
        self.add_q = ActFQ() if use_res else None


def fold_bn(cb: ConvBN):
    bn = cb.bn
    inv = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    w = cb.conv.weight.detach() * inv.reshape(-1, 1, 1, 1)
    b = bn.bias.detach() - bn.running_mean * inv
    return w, b


def qconv_from(name, cb: ConvBN):
    w, b = fold_bn(cb)
    return QConv(name, w, b, cb.conv.stride[0], cb.conv.groups, cb.relu6)


class FoldedNet(nn.Module):
    """BN-folded MobileNetV2; float when quantization is off, TF1-style fake-quant when on."""

    def __init__(self, net: MobileNetV2Small):
        super().__init__()
        self.in_q = ActFQ(fixed=(0.0, 1.0))   # input in [0,1]: scale 1/255, zero point 0
        self.stem = qconv_from("stem", net.stem)
        blocks = []
        for i, b in enumerate(net.blocks):
            names = (["expand"] if len(b.layers) == 3 else []) + ["dw", "project"]
            convs = [qconv_from(f"block{i}.{n}", l) for n, l in zip(names, b.layers)]
            blocks.append(QBlock(f"block{i}", convs, b.use_res))
        self.blocks = nn.ModuleList(blocks)
        self.last = qconv_from("last", net.last)
        self.gap_q = ActFQ()
        self.fc = QLinear("fc", net.fc.weight, net.fc.bias)

    def set_quant(self, enabled: bool):
        for m in self.modules():
            if isinstance(m, ActFQ):
                m.enabled = enabled
            if isinstance(m, (QConv, QLinear)):
                m.quant = enabled

    def set_observing(self, observing: bool):
        for m in self.modules():
            if isinstance(m, ActFQ):
                m.observing = observing

    def forward(self, x):
        x = self.in_q(x)
        q = self.in_q
        x = self.stem(x, q)
        q = self.stem.out_q
        for blk in self.blocks:
            inp = x
            for conv in blk.convs:
                x = conv(x, q)
                q = conv.out_q
            if blk.use_res:
                x = blk.add_q(inp + x)
                q = blk.add_q
        x = self.last(x, q)
        x = self.gap_q(x.mean((2, 3)))
        return self.fc(x, self.gap_q)


# --------------------------------------------------------------------------------------------
# ONNX export (hand-built graph)
# --------------------------------------------------------------------------------------------

def _np(t):
    return t.detach().cpu().numpy()


class _Graph:
    def __init__(self):
        self.nodes, self.inits = [], []

    def init(self, name, arr):
        from onnx import numpy_helper
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op, inputs, output, name, **attrs):
        from onnx import helper
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def qdq(self, x, prefix, fq: ActFQ):
        """QuantizeLinear -> DequantizeLinear with fq's (scale, zero point)."""
        scale, zp = fq.qparams()
        s = self.init(f"{prefix}.scale", np.float32(scale.item()))
        z = self.init(f"{prefix}.zero_point", np.uint8(zp.item()))
        q = self.node("QuantizeLinear", [x, s, z], f"{prefix}.q", f"{prefix}.QuantizeLinear")
        return self.node("DequantizeLinear", [q, s, z], f"{prefix}.dq", f"{prefix}.DequantizeLinear")

    def qweight(self, prefix, w):
        """uint8 asymmetric per-tensor weight initializer -> DequantizeLinear."""
        scale, zp = weight_qparams(w)
        codes = torch.clamp(torch.round(w.detach() * (1.0 / scale)) + zp, 1, 255)
        # the exported codes must reproduce torch's fake-quantized weights bit for bit
        deq = ((codes - zp) * scale).float()
        fq = torch.fake_quantize_per_tensor_affine(w.detach(), scale, zp, 1, 255)
        assert torch.equal(deq, fq), prefix
        q = self.init(f"{prefix}.weight_quantized", _np(codes).astype(np.uint8))
        s = self.init(f"{prefix}.weight_scale", np.float32(scale.item()))
        z = self.init(f"{prefix}.weight_zero_point", np.uint8(zp.item()))
        return self.node("DequantizeLinear", [q, s, z], f"{prefix}.weight",
                         f"{prefix}.weight.DequantizeLinear"), scale

    def qbias(self, prefix, b, in_q: ActFQ, w_scale):
        s_b = bias_scale(in_q.qparams()[0], w_scale)
        codes = quantize_bias(b, s_b)
        q = self.init(f"{prefix}.bias_quantized", _np(codes).astype(np.int32))
        s = self.init(f"{prefix}.bias_scale", np.float32(s_b.item()))
        z = self.init(f"{prefix}.bias_zero_point", np.int32(0))
        return self.node("DequantizeLinear", [q, s, z], f"{prefix}.bias",
                         f"{prefix}.bias.DequantizeLinear")


def export_onnx(model: FoldedNet, path: str, quantized: bool, doc: str = ""):
    import onnx
    from onnx import TensorProto, helper

    g = _Graph()
    relu6_min = relu6_max = None
    if not quantized:
        relu6_min = g.init("relu6.min", np.float32(0.0))
        relu6_max = g.init("relu6.max", np.float32(6.0))

    def conv(x, c: QConv, in_q):
        if quantized:
            w, s_w = g.qweight(c.name, c.weight)
            b = g.qbias(c.name, c.bias, in_q, s_w)
        else:
            w = g.init(f"{c.name}.weight", _np(c.weight).astype(np.float32))
            b = g.init(f"{c.name}.bias", _np(c.bias).astype(np.float32))
        k = c.weight.shape[-1]
        y = g.node("Conv", [x, w, b], f"{c.name}.out", f"{c.name}.Conv",
                   kernel_shape=[k, k], strides=[c.stride] * 2, pads=[c.pad] * 4,
                   dilations=[1, 1], group=c.groups)
        if quantized:
            # ReLU6 is implied by out_q: zero point 0 maps every x <= 0 to code 0, and
            # 6/scale >= 254.5 makes QuantizeLinear(6) = 255, so every x >= 6 gives 255 too
            # (see the module docstring).
            if c.relu6:
                s, z = c.out_q.qparams()
                s32 = np.float32(s.item())
                assert z.item() == 0 and np.float32(6.0) / s32 >= 254.5, (c.name, s, z)
            return g.qdq(y, c.name, c.out_q)
        if c.relu6:
            y = g.node("Clip", [y, relu6_min, relu6_max], f"{c.name}.relu6", f"{c.name}.Clip")
        return y

    x = INPUT_NAME
    if quantized:
        x = g.qdq(x, INPUT_NAME, model.in_q)
    q = model.in_q
    x = conv(x, model.stem, q)
    q = model.stem.out_q
    for blk in model.blocks:
        inp = x
        for c in blk.convs:
            x = conv(x, c, q)
            q = c.out_q
        if blk.use_res:
            x = g.node("Add", [inp, x], f"{blk.name}.add.out", f"{blk.name}.Add")
            if quantized:
                x = g.qdq(x, f"{blk.name}.add", blk.add_q)
            q = blk.add_q
    x = conv(x, model.last, q)
    x = g.node("GlobalAveragePool", [x], "gap.out", "gap.GlobalAveragePool")
    if quantized:
        x = g.qdq(x, "gap", model.gap_q)
    x = g.node("Flatten", [x], "flatten.out", "flatten.Flatten", axis=1)
    if quantized:
        # same grid as the pool output (what ORT's quantizer emits around Flatten/Reshape)
        x = g.qdq(x, "flatten", model.gap_q)
    fc = model.fc
    if quantized:
        w, s_w = g.qweight("fc", fc.weight)
        b = g.qbias("fc", fc.bias, model.gap_q, s_w)
    else:
        w = g.init("fc.weight", _np(fc.weight).astype(np.float32))
        b = g.init("fc.bias", _np(fc.bias).astype(np.float32))
    out = "fc.out" if quantized else OUTPUT_NAME
    x = g.node("Gemm", [x, w, b], out, "fc.Gemm", transB=1)
    if quantized:
        s, z = fc.out_q.qparams()
        sn = g.init("fc.scale", np.float32(s.item()))
        zn = g.init("fc.zero_point", np.uint8(z.item()))
        qn = g.node("QuantizeLinear", [x, sn, zn], "fc.q", "fc.QuantizeLinear")
        g.node("DequantizeLinear", [qn, sn, zn], OUTPUT_NAME, "fc.DequantizeLinear")

    graph = helper.make_graph(
        g.nodes, "fmnist_mobilenetv2" + ("_qat_qdq" if quantized else "_float"),
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", NUM_CLASSES])],
        g.inits)
    m = helper.make_model(graph, producer_name="mrq-bench-train_qat_mobilenetv2",
                          opset_imports=[helper.make_opsetid("", OPSET)], doc_string=doc)
    m.ir_version = IR_VERSION
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return m


# --------------------------------------------------------------------------------------------
# ONNX Runtime quantize_static
# --------------------------------------------------------------------------------------------

def ort_quantize_static(float_path, out_path, calib_x, batch=64):
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT_NAME: calib_x[i:i + batch]}
                                 for i in range(0, len(calib_x), batch)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(float_path, out_path, Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": False})
    import onnx
    m = onnx.load(out_path)
    onnx.checker.check_model(m, full_check=True)


def ort_accuracy(path, x, y, optimize=True, batch=1000):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    preds = np.concatenate([sess.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch]})[0].argmax(1)
                            for i in range(0, len(x), batch)])
    return float((preds == y).mean() * 100), preds


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment(x, gen):
    """Random shift by up to +-2 pixels (zero padding) and random horizontal flip, per sample."""
    n = x.shape[0]
    xp = F.pad(x, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=gen)
    dx = torch.randint(0, 5, (n,), generator=gen)
    ar = torch.arange(28)
    rows = (dy[:, None] + ar[None, :])[:, :, None].expand(n, 28, 28)
    cols = (dx[:, None] + ar[None, :])[:, None, :].expand(n, 28, 28)
    idx = torch.arange(n)[:, None, None].expand(n, 28, 28)
    out = xp[:, 0][idx, rows, cols].unsqueeze(1)
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def batches(n, bs, gen):
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n - bs + 1, bs):   # drop the last partial batch
        yield perm[i:i + bs]


@torch.no_grad()
def torch_accuracy(model, x, y, bs=1000):
    model.eval()
    preds = torch.cat([model(x[i:i + bs].contiguous(memory_format=CL)).argmax(1)
                       for i in range(0, len(x), bs)])
    return float((preds == y).float().mean() * 100), preds.numpy()


def train_epochs(model, x, y, epochs, bs, opt, sched, gen, tag, log_every=100):
    steps = 0
    for ep in range(epochs):
        model.train()
        t0, tot, correct, seen = time.time(), 0.0, 0, 0
        for idx in batches(len(x), bs, gen):
            xb = augment(x[idx], gen).contiguous(memory_format=CL)
            yb = y[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            steps += 1
            tot += loss.item() * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(idx)
            if steps % log_every == 0:
                print(f"  [{tag}] epoch {ep + 1} step {steps} loss {tot / seen:.4f} "
                      f"train-acc {100 * correct / seen:.2f} ({time.time() - t0:.0f}s)", flush=True)
        print(f"[{tag}] epoch {ep + 1}/{epochs}: loss {tot / seen:.4f} train-acc "
              f"{100 * correct / seen:.2f} time {time.time() - t0:.0f}s", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=5, help="float training epochs")
    p.add_argument("--qat-epochs", type=int, default=1, help="QAT fine-tuning epochs")
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "models"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="float max LR (AdamW, one-cycle)")
    p.add_argument("--qat-lr", type=float, default=5e-5, help="QAT LR (Adam, cosine to 0)")
    p.add_argument("--calib-batches", type=int, default=50,
                   help="batches observed before QAT to initialise the activation ranges")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--float-checkpoint", default=None,
                   help="load the float model from here if it exists, else save it here")
    p.add_argument("--train-limit", type=int, default=None, help="use only N training images")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    seed_everything(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    os.makedirs(a.out_dir, exist_ok=True)
    t_start = time.time()

    xtr_u8, ytr_u8 = fashion_mnist.load("train")
    xte_u8, yte_u8 = fashion_mnist.load("test")
    if a.train_limit:
        xtr_u8, ytr_u8 = xtr_u8[:a.train_limit], ytr_u8[:a.train_limit]
    xtr = torch.from_numpy(fashion_mnist.to_float(xtr_u8))
    ytr = torch.from_numpy(ytr_u8.astype(np.int64))
    xte_np = fashion_mnist.to_float(xte_u8)
    yte_np = yte_u8.astype(np.int64)
    xte, yte = torch.from_numpy(xte_np), torch.from_numpy(yte_np)

    # ---- float training ----
    net = MobileNetV2Small().to(memory_format=CL)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"MobileNetV2Small: {n_params} parameters (with BN)", flush=True)
    t0 = time.time()
    if a.float_checkpoint and os.path.exists(a.float_checkpoint):
        net.load_state_dict(torch.load(a.float_checkpoint))
        print(f"loaded float model from {a.float_checkpoint}")
    else:
        steps = a.epochs * (len(xtr) // a.batch_size)
        opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=max(steps, 1),
                                                    pct_start=0.15)
        train_epochs(net, xtr, ytr, a.epochs, a.batch_size, opt, sched, gen, "float")
        if a.float_checkpoint:
            torch.save(net.state_dict(), a.float_checkpoint)
    t_float = time.time() - t0
    acc_float_bn, _ = torch_accuracy(net, xte, yte)
    print(f"float (BN) torch test accuracy: {acc_float_bn:.2f}%", flush=True)

    # ---- fold BN, check the folded float model ----
    model = FoldedNet(net).to(memory_format=CL)
    n_params_folded = sum(p.numel() for p in model.parameters())
    model.set_quant(False)
    acc_float_folded, _ = torch_accuracy(model, xte, yte)
    print(f"float (BN folded) torch test accuracy: {acc_float_folded:.2f}% "
          f"({n_params_folded} parameters)", flush=True)

    paths = {k: os.path.join(a.out_dir, f"fmnist_mnv2_{k}.onnx")
             for k in ("float", "qat_qdq", "ort_qdq")}
    # the float model is the float-trained network with BN folded (before any QAT update)
    export_onnx(model, paths["float"], quantized=False,
                doc="Fashion-MNIST MobileNetV2 (BN folded), float32. Input: float32 "
                    "[N,1,28,28] = pixel/255. Output: logits [N,10].")

    # ---- initialise activation ranges (TF1 quant_delay analogue), then QAT ----
    t0 = time.time()
    model.train()
    model.set_observing(True)
    with torch.no_grad():
        for k, idx in enumerate(batches(len(xtr), a.batch_size, gen)):
            if k >= a.calib_batches:
                break
            model(augment(xtr[idx], gen).contiguous(memory_format=CL))
    model.set_quant(True)
    acc_ptq, _ = torch_accuracy(model, xte, yte)
    print(f"fake-quant before QAT (PTQ, per-tensor asym weights): {acc_ptq:.2f}%", flush=True)
    if a.qat_epochs > 0:
        model.set_observing(True)
        steps = a.qat_epochs * (len(xtr) // a.batch_size)
        opt = torch.optim.Adam(model.parameters(), lr=a.qat_lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
        train_epochs(model, xtr, ytr, a.qat_epochs, a.batch_size, opt, sched, gen, "qat")
    model.set_observing(False)
    t_qat = time.time() - t0
    acc_fq, preds_fq = torch_accuracy(model, xte, yte)
    print(f"QAT fake-quant torch test accuracy: {acc_fq:.2f}%", flush=True)

    # ---- export ----
    export_onnx(model, paths["qat_qdq"], quantized=True,
                doc="Fashion-MNIST MobileNetV2, TF1.x-style QAT: asymmetric per-tensor uint8 "
                    "activations and weights (narrow range 1..255), int32 biases, ReLU6 implied "
                    "by the activation range (zero point 0). Input: float32 [N,1,28,28] = "
                    "pixel/255. Output: logits [N,10].")
    # float-model accuracy through ORT, then quantize_static of the same float graph
    calib = fashion_mnist.to_float(fashion_mnist.load("train")[0][:512])
    ort_quantize_static(paths["float"], paths["ort_qdq"], calib)

    acc = {"torch_float_bn": acc_float_bn, "torch_float_folded": acc_float_folded,
           "torch_ptq_fake_quant_before_qat": acc_ptq, "torch_qat_fake_quant": acc_fq}
    for k, path in paths.items():
        acc[f"ort_{k}"], preds = ort_accuracy(path, xte_np, yte_np)
        if k != "float":  # the QDQ graph's own float semantics, without ORT's integer fusions
            acc[f"ort_{k}_no_graph_opt"], _ = ort_accuracy(path, xte_np, yte_np, optimize=False)
        if k == "qat_qdq":
            agree = float((preds == preds_fq).mean() * 100)
    for k, v in acc.items():
        print(f"test accuracy {k:36s} {v:6.2f}%")
    print(f"QAT QDQ (ORT) vs torch fake-quant: {acc['ort_qat_qdq'] - acc_fq:+.2f} points, "
          f"prediction agreement {agree:.2f}%")
    if abs(acc["ort_qat_qdq"] - acc_fq) > 0.3:
        print("WARNING: ORT QDQ accuracy differs from the torch fake-quant model by > 0.3 points")

    metrics = {
        "accuracy_percent_10k_test": acc,
        "qat_qdq_vs_torch_fake_quant_prediction_agreement_percent": agree,
        "parameters_with_bn": n_params, "parameters_folded": n_params_folded,
        "file_bytes": {os.path.basename(v): os.path.getsize(v) for v in paths.values()},
        "train_seconds": {"float": round(t_float, 1), "qat_incl_calibration": round(t_qat, 1),
                          "total_script": round(time.time() - t_start, 1)},
        "args": vars(a) | {"out_dir": os.path.relpath(a.out_dir)},
        "versions": {"torch": torch.__version__, "onnx": __import__("onnx").__version__,
                     "onnxruntime": __import__("onnxruntime").__version__,
                     "numpy": np.__version__},
    }
    with open(os.path.join(a.out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(json.dumps(metrics["file_bytes"]), json.dumps(metrics["train_seconds"]))


if __name__ == "__main__":
    main()
