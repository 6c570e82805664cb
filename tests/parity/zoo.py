"""Deterministic zoo of small random float CNNs, quantized by ONNX Runtime's ``quantize_static``.

This is the model source for the ONNX Runtime parity evidence (tests/parity/test_ort_parity.py and
bench/ort_parity_count.py). Every model is a tiny NCHW float32 CNN built with ``onnx.helper``
(opset 17) from a seeded random architecture, quantized over a grid of ORT quantizer settings:

- quant_format QDQ / QOperator,
- activation type QUInt8 / QInt8, weight type QInt8 / QUInt8 (QInt8 activations only with QInt8
  weights: ORT has no s8-activation/u8-weight kernels),
- per_channel on / off,
- ActivationSymmetric on / off, WeightSymmetric on / off.

Op vocabulary (chosen so that, with ``session.qdqisint8allowed=1`` on the CPU EP, every op in ORT's
optimized graph is an integer kernel, a data-movement op, or a single-rounding float op such as
Quantize/DequantizeLinear, i.e. nothing whose result depends on a float reduction order):
Conv (k 1/3/5 and 1x3/3x1, stride 1/2, symmetric and asymmetric pads, dilation 1/2, groups
including depthwise and depth multiplier 2), Relu / Clip(0, 6) after convs, residual Add, Mul of
two branches (also broadcast squeeze-excite style), Concat, MaxPool, AveragePool (with and
without count_include_pad, with pads), GlobalAveragePool, Flatten / Reshape, Gemm (transB 0/1,
with bias) and MatMul heads.

Use ``generate(out_dir, count, seed)``; or as a script: ``python tests/parity/zoo.py OUT_DIR``.
Everything is a pure function of (seed, index): the same call gives byte-identical models.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
INPUT_NAME = "input"


# --------------------------------------------------------------------------------------------
# Quantization configurations
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantConfig:
    quant_format: str  # "QDQ" | "QOperator"
    activation_type: str  # "QUInt8" | "QInt8"
    weight_type: str  # "QInt8" | "QUInt8"
    per_channel: bool
    activation_symmetric: bool
    weight_symmetric: bool

    @property
    def key(self) -> str:
        return (
            f"{self.quant_format}-a{'u8' if self.activation_type == 'QUInt8' else 's8'}"
            f"-w{'u8' if self.weight_type == 'QUInt8' else 's8'}"
            f"-{'pc' if self.per_channel else 'pt'}"
            f"-as{int(self.activation_symmetric)}-ws{int(self.weight_symmetric)}"
        )


def config_grid() -> list[QuantConfig]:
    """All quantizer settings the zoo cycles through (those ORT's CPU EP can execute)."""
    grid = []
    for fmt, act, wt, pc, asym, wsym in itertools.product(
        ("QDQ", "QOperator"),
        ("QUInt8", "QInt8"),
        ("QInt8", "QUInt8"),
        (False, True),
        (False, True),
        (True, False),
    ):
        if act == "QInt8" and wt == "QUInt8":
            continue  # no s8-activation x u8-weight kernels in ORT (QLinearConv, QGemm, ...)
        grid.append(QuantConfig(fmt, act, wt, pc, asym, wsym))
    return grid


# --------------------------------------------------------------------------------------------
# Random architecture builder
# --------------------------------------------------------------------------------------------


@dataclass
class FM:
    """A feature-map tensor in the graph under construction (NCHW; batch is symbolic)."""

    name: str
    c: int
    h: int
    w: int


class _Builder:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0
        self.ops: list[str] = []  # human-readable architecture summary

    # -- helpers -------------------------------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def init(self, prefix: str, arr: np.ndarray) -> str:
        name = self.fresh(prefix)
        # (np.ascontiguousarray would turn a 0-d array into shape [1]; Clip needs true scalars)
        self.inits.append(numpy_helper.from_array(np.array(arr, order="C", copy=True), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh("n_" + op), **attrs))
        return outs

    def bias(self, n: int) -> np.ndarray:
        b = self.rng.normal(0.0, 0.3, size=n)
        b = np.where(np.abs(b) < 0.02, np.sign(b + 1e-9) * 0.05, b)  # nonzero
        return b.astype(np.float32)

    # -- layers --------------------------------------------------------------------------------
    def conv(
        self,
        x: FM,
        cout: int | None = None,
        *,
        k: tuple[int, int] | None = None,
        stride: int | None = None,
        dil: int | None = None,
        pads: tuple[int, int, int, int] | None = None,
        group: int | None = None,
        act: str | None = None,
        same: bool = False,
    ) -> FM:
        """Random Conv (+ optional Relu / Clip(0,6)). same=True keeps H, W (stride 1, 'same' pads)."""
        r = self.rng
        if group is None:
            u = r.random()
            if u < 0.22:
                group = x.c  # depthwise
            elif u < 0.32:
                divs = [g for g in range(2, x.c) if x.c % g == 0]
                group = int(r.choice(divs)) if divs else 1
            else:
                group = 1
            if cout is not None and cout % group:
                group = 1
        if cout is None:
            if group == x.c and group > 1:
                cout = x.c * (2 if r.random() < 0.25 else 1)
            else:
                cout = int(r.integers(3, 13))
                cout = group * max(1, round(cout / group))
        assert cout % group == 0, (cout, group)
        if k is None:
            kk = int(r.choice([1, 3, 3, 3, 5]))
            k = (kk, kk)
            if r.random() < 0.1:
                k = (1, 3) if r.random() < 0.5 else (3, 1)
        if dil is None:
            dil = 2 if (r.random() < 0.2 and max(k) > 1) else 1
        ke = ((k[0] - 1) * dil + 1, (k[1] - 1) * dil + 1)
        if same:
            stride = 1
            ph, pw = ke[0] - 1, ke[1] - 1
            pads = (ph // 2, pw // 2, ph - ph // 2, pw - pw // 2)
        if stride is None:
            stride = 2 if (r.random() < 0.3 and min(x.h, x.w) >= 6) else 1
        if pads is None:
            u = r.random()
            if u < 0.2:
                pads = (0, 0, 0, 0)
            elif u < 0.75:
                ph, pw = (ke[0] - 1) // 2, (ke[1] - 1) // 2
                pads = (ph, pw, ph, pw)
            else:  # asymmetric
                pads = tuple(int(v) for v in r.integers(0, max(ke) // 2 + 2, size=4))
        # keep the output at least 1x1
        pads = list(pads)
        while x.h + pads[0] + pads[2] < ke[0]:
            pads[2] += 1
        while x.w + pads[1] + pads[3] < ke[1]:
            pads[3] += 1
        pads = tuple(pads)
        oh = (x.h + pads[0] + pads[2] - ke[0]) // stride + 1
        ow = (x.w + pads[1] + pads[3] - ke[1]) // stride + 1
        cin_g = x.c // group
        fan_in = cin_g * k[0] * k[1]
        w = (r.standard_normal((cout, cin_g, k[0], k[1])) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        wn = self.init("W", w)
        bn = self.init("B", self.bias(cout))
        (y,) = self.node(
            "Conv",
            [x.name, wn, bn],
            kernel_shape=list(k),
            strides=[stride, stride],
            pads=list(pads),
            dilations=[dil, dil],
            group=group,
        )
        desc = f"conv{k[0]}x{k[1]}/s{stride}/d{dil}/g{group}/p{''.join(map(str, pads))}->{cout}"
        if act is None:
            act = str(r.choice(["none", "relu", "relu", "clip"]))
        if act == "relu":
            (y,) = self.node("Relu", [y])
            desc += "+relu"
        elif act == "clip":
            lo = self.init("clip_lo", np.array(0.0, np.float32))
            hi = self.init("clip_hi", np.array(6.0, np.float32))
            (y,) = self.node("Clip", [y, lo, hi])
            desc += "+clip6"
        self.ops.append(desc)
        return FM(y, cout, oh, ow)

    def maxpool(self, x: FM) -> FM:
        r = self.rng
        k = int(r.choice([2, 3]))
        s = int(r.choice([1, 2])) if min(x.h, x.w) >= 6 else 1
        pads = (0, 0, 0, 0) if (k == 2 or r.random() < 0.4) else (1, 1, 1, 1)
        if r.random() < 0.2:
            pads = (0, 0, 1, 1)
        oh = (x.h + pads[0] + pads[2] - k) // s + 1
        ow = (x.w + pads[1] + pads[3] - k) // s + 1
        (y,) = self.node("MaxPool", [x.name], kernel_shape=[k, k], strides=[s, s], pads=list(pads))
        self.ops.append(f"maxpool{k}/s{s}/p{''.join(map(str, pads))}")
        return FM(y, x.c, oh, ow)

    def avgpool(self, x: FM) -> FM:
        r = self.rng
        k = int(r.choice([2, 3]))
        s = int(r.choice([1, 2])) if min(x.h, x.w) >= 6 else 1
        u = r.random()
        if k == 2 or u < 0.35:
            pads = (0, 0, 0, 0)
        elif u < 0.8:
            pads = (1, 1, 1, 1)
        else:
            pads = (0, 1, 1, 0)
        cip = int(r.random() < 0.5)
        oh = (x.h + pads[0] + pads[2] - k) // s + 1
        ow = (x.w + pads[1] + pads[3] - k) // s + 1
        (y,) = self.node(
            "AveragePool",
            [x.name],
            kernel_shape=[k, k],
            strides=[s, s],
            pads=list(pads),
            count_include_pad=cip,
        )
        self.ops.append(f"avgpool{k}/s{s}/p{''.join(map(str, pads))}/cip{cip}")
        return FM(y, x.c, oh, ow)

    def residual(self, x: FM) -> FM:
        r = self.rng
        a = self.conv(x, same=True)
        a = self.conv(a, cout=x.c if r.random() < 0.5 else None, same=True, act="none")
        if a.c == x.c and r.random() < 0.6:
            b = x
            self.ops.append("identity")
        else:
            b = self.conv(x, cout=a.c, k=(1, 1), stride=1, pads=(0, 0, 0, 0), group=1, act="none")
        (y,) = self.node("Add", [a.name, b.name])
        self.ops.append("add")
        if r.random() < 0.6:
            (y,) = self.node("Relu", [y])
            self.ops.append("relu")
        return FM(y, a.c, a.h, a.w)

    def mul(self, x: FM) -> FM:
        a = self.conv(x, same=True)
        b = self.conv(x, cout=a.c, same=True)
        (y,) = self.node("Mul", [a.name, b.name])
        self.ops.append("mul")
        return FM(y, a.c, a.h, a.w)

    def squeeze_excite(self, x: FM) -> FM:
        (g,) = self.node("GlobalAveragePool", [x.name])
        self.ops.append("gap")
        gf = FM(g, x.c, 1, 1)
        mid = max(2, x.c // 2)
        h = self.conv(gf, cout=mid, k=(1, 1), stride=1, pads=(0, 0, 0, 0), group=1, act="relu")
        s = self.conv(h, cout=x.c, k=(1, 1), stride=1, pads=(0, 0, 0, 0), group=1, act="clip")
        (y,) = self.node("Mul", [x.name, s.name])
        self.ops.append("mul(broadcast)")
        return FM(y, x.c, x.h, x.w)

    def concat(self, x: FM) -> FM:
        r = self.rng
        a = self.conv(x, same=True)
        if r.random() < 0.3:
            b = x
            self.ops.append("identity")
        else:
            b = self.conv(x, same=True)
        (y,) = self.node("Concat", [a.name, b.name], axis=1)
        self.ops.append("concat")
        return FM(y, a.c + b.c, x.h, x.w)

    def head(self, x: FM) -> list[tuple[str, list]]:
        """Returns [(output name, shape)] for the graph outputs."""
        r = self.rng
        u = r.random()
        if u < 0.1:
            self.ops.append("out:featuremap")
            return [(x.name, ["N", x.c, x.h, x.w])]
        if u < 0.55 or x.c * x.h * x.w > 768:
            (g,) = self.node("GlobalAveragePool", [x.name])
            self.ops.append("gap")
            feat, k = g, x.c
        else:
            feat, k = x.name, x.c * x.h * x.w
        if r.random() < 0.5:
            (f,) = self.node("Flatten", [feat], axis=1)
            self.ops.append("flatten")
        else:
            shp = self.init("shape", np.array([0, -1], np.int64))
            (f,) = self.node("Reshape", [f for f in (feat, shp)])
            self.ops.append("reshape")
        n_cls = int(r.integers(4, 11))
        if r.random() < 0.3:
            hid = int(r.integers(6, 17))
            f = self._fc(f, k, hid)
            (f,) = self.node("Relu", [f])
            self.ops.append("relu")
            k = hid
        y = self._fc(f, k, n_cls)
        outs = [(y, ["N", n_cls])]
        if r.random() < 0.12:
            self.ops.append("out:+featuremap")
            outs.append((x.name, ["N", x.c, x.h, x.w]))
        return outs

    def _fc(self, f: str, k: int, n: int) -> str:
        r = self.rng
        w = (r.standard_normal((k, n)) * np.sqrt(2.0 / k)).astype(np.float32)
        if r.random() < 0.3:
            (y,) = self.node("MatMul", [f, self.init("Wm", w)])
            self.ops.append(f"matmul{k}x{n}")
            return y
        trans_b = int(r.random() < 0.75)
        wn = self.init("Wg", np.ascontiguousarray(w.T) if trans_b else w)
        (y,) = self.node("Gemm", [f, wn, self.init("Bg", self.bias(n))], transB=trans_b)
        self.ops.append(f"gemm{k}x{n}/tB{trans_b}")
        return y


def build_float_model(seed: int) -> tuple[onnx.ModelProto, dict]:
    """A random float CNN. Returns (model, info) with info = {'c','h','w','arch','in_scale'}."""
    r = np.random.default_rng(seed)
    b = _Builder(r)
    c = int(r.integers(3, 9))
    h = int(r.integers(8, 17))
    w = int(r.integers(8, 17)) if r.random() < 0.4 else h
    x = FM(INPUT_NAME, c, h, w)
    n_blocks = int(r.integers(2, 6))
    kinds = ["conv", "conv", "residual", "mul", "se", "concat", "maxpool", "avgpool"]
    probs = np.array([0.26, 0.0, 0.2, 0.08, 0.08, 0.12, 0.13, 0.13])
    probs /= probs.sum()
    for blk in range(n_blocks):
        kind = str(r.choice(kinds, p=probs))
        if kind in ("maxpool", "avgpool") and min(x.h, x.w) < 4:
            kind = "conv"
        if blk == 0 and kind in ("avgpool", "se"):
            # ORT's quantizer leaves an (Global)AveragePool that reads the float graph input
            # unquantized: a float reduction, not reproducible bit-exactly.
            kind = "conv"
        if kind == "conv":
            x = b.conv(x)
        elif kind == "residual":
            x = b.residual(x)
        elif kind == "mul":
            x = b.mul(x)
        elif kind == "se":
            x = b.squeeze_excite(x)
        elif kind == "concat":
            x = b.concat(x)
        elif kind == "maxpool":
            x = b.maxpool(x)
        elif kind == "avgpool":
            x = b.avgpool(x)
        if x.c > 24:  # keep things small
            x = b.conv(x, cout=int(r.integers(6, 13)), k=(1, 1), group=1)
    outs = b.head(x)
    graph = helper.make_graph(
        b.nodes,
        f"zoo_{seed}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outs],
        initializer=b.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mrq-parity-zoo"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    in_scale = float(r.choice([0.5, 1.0, 2.0, 4.0]))
    return model, {"c": c, "h": h, "w": w, "arch": " ".join(b.ops), "in_scale": in_scale}


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def calibration_batches(shape_chw, in_scale: float, seed: int, n: int = 8) -> list[np.ndarray]:
    r = np.random.default_rng([seed, 1])
    out = []
    for _ in range(n):
        bsz = int(r.integers(1, 4))
        out.append((r.standard_normal((bsz, *shape_chw)) * in_scale).astype(np.float32))
    return out


def make_inputs(shape_chw, in_scale: float, seed: int, input_q=None) -> dict[str, np.ndarray]:
    """Random float32 test inputs (batch 2-4): mostly calibration-like, some far outside the
    calibration range (3-6x, and the whole last batch item x5) so that the input quantization
    and inner layers saturate; some exact zeros. With input_q = (scale, zero_point, qmin, qmax)
    of the model's input QuantizeLinear, 15% of the elements are put exactly on the input grid
    or exactly half-way between two grid points (f32(x / scale) == k + 0.5, a rounding tie)."""
    r = np.random.default_rng([seed, 2])
    bsz = int(r.integers(2, 5))
    x = r.standard_normal((bsz, *shape_chw)) * in_scale
    # outliers: a fraction of elements scaled far out
    mask = r.random(x.shape) < 0.08
    x = np.where(mask, x * r.uniform(3.0, 6.0, size=x.shape), x)
    # the last batch item is fully out of range (saturation through the whole network)
    x[-1] *= 5.0
    x = x.astype(np.float32)
    if input_q is not None:
        s, zp, qmin, qmax = input_q
        s = np.float32(s)
        k = r.integers(qmin - zp - 2, qmax - zp + 2, size=x.shape).astype(np.float64)
        half = r.random(x.shape) < 0.7
        target = k + np.where(half, 0.5, 0.0)
        v = (target * np.float64(s)).astype(np.float32)
        exact = (v / s) == target.astype(np.float32)  # float32 division, as ORT does
        pick = (r.random(x.shape) < 0.15) & exact
        x = np.where(pick, v, x)
    # some exact zeros
    x[r.random(x.shape) < 0.03] = 0.0
    return {INPUT_NAME: x.astype(np.float32)}


def input_quantization(model_path) -> tuple[float, int, int, int] | None:
    """(scale, zero_point, qmin, qmax) of the QuantizeLinear that reads the graph input, if any."""
    m = onnx.load(str(model_path))
    inits = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] == INPUT_NAME:
            zp = numpy_helper.to_array(inits[n.input[2]])
            info = np.iinfo(zp.dtype)
            return (float(numpy_helper.to_array(inits[n.input[1]])), int(zp), int(info.min),
                    int(info.max))
    return None


# --------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------


class _Reader:
    """CalibrationDataReader over a fixed list of batches (duck-typed; ORT only calls
    get_next, and rewind if present)."""

    def __init__(self, batches):
        self.batches = batches
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {INPUT_NAME: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0

    def __len__(self):
        return len(self.batches)


def _reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_Reader, CalibrationDataReader):
        pass

    return Reader


def quantize(float_model: onnx.ModelProto, out_path: Path, cfg: QuantConfig, batches) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    logging.getLogger().setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            float_model,
            str(out_path),
            _reader_class()(batches),
            quant_format=getattr(QuantFormat, cfg.quant_format),
            per_channel=cfg.per_channel,
            activation_type=getattr(QuantType, cfg.activation_type),
            weight_type=getattr(QuantType, cfg.weight_type),
            extra_options={
                "ActivationSymmetric": cfg.activation_symmetric,
                "WeightSymmetric": cfg.weight_symmetric,
            },
        )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclass
class ModelCase:
    index: int
    seed: int
    path: Path
    config: QuantConfig
    arch: str
    input_shape_chw: tuple[int, int, int]
    in_scale: float
    rejected: list = field(repr=False)
    """architectures tried first for this slot and rejected (ORT left an inexact float op)"""
    make_inputs: Callable[[int], dict[str, np.ndarray]] = field(repr=False)
    """make_inputs(k) -> feeds for the k-th random input set of this model (deterministic); odd
    k also put 15% of the elements on the input quantization grid or on its rounding ties."""

    @property
    def name(self) -> str:
        return self.path.stem


def _case_seed(seed: int, i: int, attempt: int = 0) -> int:
    return int(np.random.SeedSequence([seed, i, attempt]).generate_state(1)[0])


MAX_ATTEMPTS = 12


def _ort_check(path: Path) -> list[str]:
    """Inexact ops in ORT's optimized graph of `path` (see ort_runner.inexact_ops)."""
    try:
        from . import ort_runner
    except ImportError:  # run as a script: tests/parity is sys.path[0]
        import ort_runner
    opt = path.with_suffix(".opt.onnx")
    try:
        return ort_runner.inexact_ops(ort_runner.optimized_graph(path, opt))
    finally:
        opt.unlink(missing_ok=True)


def _make_one(args) -> dict:
    """Quantize model i, retrying with a new architecture (attempt += 1) while ORT's optimized
    graph keeps a float op that is not bit-reproducible. Writes the model and a JSON sidecar."""
    i, seed, out_dir, cfg = args
    path = Path(out_dir) / f"m{i:03d}_{cfg.key}.onnx"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    t = time.perf_counter()
    rejected = []
    for attempt in range(MAX_ATTEMPTS):
        s = _case_seed(seed, i, attempt)
        model, info = build_float_model(s)
        batches = calibration_batches((info["c"], info["h"], info["w"]), info["in_scale"], s)
        tmp = path.with_suffix(".tmp.onnx")
        quantize(model, tmp, cfg, batches)
        bad = _ort_check(tmp)
        if not bad:
            break
        rejected.append({"arch": info["arch"], "inexact_ops": sorted(set(bad))})
        tmp.unlink()
    else:
        raise RuntimeError(f"model {i} ({cfg.key}): no exact architecture in {MAX_ATTEMPTS} tries")
    os.replace(tmp, path)
    iq = input_quantization(path)
    meta = {
        "index": i,
        "seed": s,
        "attempt": attempt,
        "config": asdict(cfg),
        "arch": info["arch"],
        "input_shape_chw": [info["c"], info["h"], info["w"]],
        "in_scale": info["in_scale"],
        "input_quantization": iq,
        "rejected": rejected,
        "seconds": round(time.perf_counter() - t, 3),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def generate_shared(tmp_path_factory, count: int, seed: int = 20261126) -> list[ModelCase]:
    """:func:`generate` into one folder per pytest run, shared by every pytest-xdist worker and
    every test module that asks, under a lock: each model is quantized once per run instead of
    once per worker and module (``generate`` reuses the models it finds; the first ``count`` of
    a larger zoo are the same models)."""
    import fcntl

    base = Path(tmp_path_factory.getbasetemp())
    # under xdist each worker's base temp is a folder of the run's own
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out_dir = root / f"ort_zoo_{seed}"
    with open(root / f"ort_zoo_{seed}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return generate(out_dir, count, seed)


def generate(
    out_dir, count: int = 150, seed: int = 20261126, processes: int = 1
) -> list[ModelCase]:
    """Build `count` quantized models in out_dir. Existing files are reused (a model's name
    encodes its index and config, and its content is a pure function of (seed, index)). Model i
    uses config_grid()[i % len(grid)], so every configuration gets about count/len(grid) models.
    processes > 1 quantizes in a multiprocessing pool."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = out_dir / ".zoo_seed"
    if stamp.exists() and stamp.read_text() != str(seed):
        for p in itertools.chain(out_dir.glob("m*.onnx"), out_dir.glob("m*.json")):
            p.unlink()
    stamp.write_text(str(seed))
    grid = config_grid()
    jobs = [(i, seed, str(out_dir), grid[i % len(grid)]) for i in range(count)]
    if processes > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(processes) as pool:
            metas = pool.map(_make_one, jobs, chunksize=1)
    else:
        metas = [_make_one(j) for j in jobs]
    cases = []
    for (i, _, _, cfg), meta in zip(jobs, metas):
        shape = tuple(meta["input_shape_chw"])
        cases.append(
            ModelCase(
                index=i,
                seed=meta["seed"],
                path=out_dir / f"m{i:03d}_{cfg.key}.onnx",
                config=cfg,
                arch=meta["arch"],
                input_shape_chw=shape,
                in_scale=meta["in_scale"],
                rejected=meta["rejected"],
                make_inputs=(
                    lambda k, _shape=shape, _sc=meta["in_scale"], _s=meta["seed"],
                    _iq=meta["input_quantization"]: make_inputs(
                        _shape, _sc, _s * 1000 + k, _iq if k % 2 else None
                    )
                ),
            )
        )
    return cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--count", type=int, default=150)
    ap.add_argument("--seed", type=int, default=20261126)
    ap.add_argument("-j", "--processes", type=int, default=1)
    a = ap.parse_args(argv)
    t = time.perf_counter()
    cases = generate(a.out_dir, a.count, a.seed, a.processes)
    dt = time.perf_counter() - t
    for c in cases:
        print(f"{c.path.name}\t{c.input_shape_chw}\t{c.arch}")
    n_rej = sum(len(c.rejected) for c in cases)
    print(
        f"{len(cases)} models, {len({c.config for c in cases})} configs, {dt:.1f} s "
        f"({n_rej} candidate architectures rejected for inexact float ops)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
