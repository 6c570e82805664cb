"""Fixtures for the verification kit tests: generated IR models, the demo model, golden sets,
and (when present) a real model."""
from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_in_process import mrq_in_process

from mrq.ir import Graph, Node, QParams, Tensor

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = str(ROOT / "mrq" / "data" / "demo_cnn.onnx")
SHARED_MODELS = Path("/work/shared/models")


def make_cnn(seed: int = 0, layout: str = "NCHW", act_dtype: str = "int8", channels=(3, 8, 8),
             hw: int = 8, n_classes: int = 5, weight_scale: float = 0.02, big_weights: bool = False,
             pow2: bool = False) -> Graph:
    """A small random quantized CNN built directly in the IR:

    Quantize -> Conv 3x3 (+ReLU) -> depthwise Conv 3x3 stride 2 (+ReLU) -> GlobalAveragePool ->
    Reshape -> Gemm -> Dequantize. ``big_weights``: every conv weight is +127, so positive inputs
    drive the accumulators far past 20 bits. ``pow2``: power-of-two scales everywhere, so the
    requantization multipliers are powers of two and many outputs fall exactly on ties."""
    rng = np.random.default_rng(seed)
    c_in, c1, c2 = channels
    lo, hi = (-128, 127) if act_dtype == "int8" else (0, 255)
    zp_relu = lo  # ReLU output grid: zero point at the bottom
    t: dict = {}

    def act(name, shape, scale, zp):
        if pow2:
            scale = 2.0 ** np.round(np.log2(scale))
        t[name] = Tensor(name, shape, act_dtype, QParams([scale], [zp], act_dtype))

    def sp(c, h, w):
        return (None, c, h, w) if layout == "NCHW" else (None, h, w, c)

    t["x"] = Tensor("x", sp(c_in, hw, hw), "float32")
    in_zp = 0 if act_dtype == "int8" else 128
    act("xq", sp(c_in, hw, hw), 0.03, in_zp)
    nodes = [Node("Quantize", "quant_in", ["x"], ["xq"])]

    def conv(name, x, y, c_out, c_in_g, group, stride, x_scale, y_scale):
        w_scale = (weight_scale * (0.5 + rng.random(c_out))).astype(np.float32)
        if pow2:
            w_scale = np.full(c_out, 2.0 ** -6, np.float32)
            x_scale = float(t[x].qparams.scale[0])
        if big_weights:
            w = np.full((c_out, c_in_g, 3, 3), 127, np.int8)
        else:
            w = np.clip(np.rint(rng.normal(0, 40, (c_out, c_in_g, 3, 3))), -127, 127).astype(np.int8)
        bias_scale = (np.float32(x_scale) * w_scale).astype(np.float32)
        b = rng.integers(-2000, 2000, c_out).astype(np.int64)
        t[name + "_w"] = Tensor(name + "_w", w.shape, "int8", QParams(w_scale, np.zeros(c_out, np.int64), "int8", axis=0), w)
        t[name + "_b"] = Tensor(name + "_b", (c_out,), "int32", QParams(bias_scale, np.zeros(c_out, np.int64), "int32", axis=0), b)
        nodes.append(Node("Conv", name, [x, name + "_w", name + "_b"], [y],
                          {"strides": (stride, stride), "pads": (1, 1, 1, 1), "dilations": (1, 1),
                           "group": group, "layout": layout, "clamp": (0.0, None)}))

    h2 = hw // 2
    act("a1", sp(c1, hw, hw), 0.05, zp_relu)
    conv("conv1", "xq", "a1", c1, c_in, 1, 1, 0.03, 0.05)
    act("a2", sp(c2, h2, h2), 0.06, zp_relu)
    conv("dwconv", "a1", "a2", c2, 1, c1, 2, 0.05, 0.06)
    act("g", (None, c2, 1, 1) if layout == "NCHW" else (None, 1, 1, c2), 0.04, zp_relu)
    nodes.append(Node("GlobalAveragePool", "gap", ["a2"], ["g"], {"layout": layout}))
    act("f", (None, c2), 0.04, zp_relu)
    nodes.append(Node("Reshape", "flatten", ["g"], ["f"], {"shape": (0, -1)}))
    w_scale = (0.01 * (0.5 + rng.random(n_classes))).astype(np.float32)
    if pow2:
        w_scale = np.full(n_classes, 2.0 ** -7, np.float32)
    wf = np.clip(np.rint(rng.normal(0, 50, (c2, n_classes))), -127, 127).astype(np.int8)
    t["fc_w"] = Tensor("fc_w", wf.shape, "int8", QParams(w_scale, np.zeros(n_classes, np.int64), "int8", axis=1), wf)
    bs = (np.float32(t["f"].qparams.scale[0]) * w_scale).astype(np.float32)
    t["fc_b"] = Tensor("fc_b", (n_classes,), "int32", QParams(bs, np.zeros(n_classes, np.int64), "int32", axis=0),
                       rng.integers(-500, 500, n_classes).astype(np.int64))
    act("logits_q", (None, n_classes), 0.08, 0 if act_dtype == "int8" else 128)
    nodes.append(Node("Gemm", "fc", ["f", "fc_w", "fc_b"], ["logits_q"]))
    t["logits"] = Tensor("logits", (None, n_classes), "float32")
    nodes.append(Node("Dequantize", "dequant_out", ["logits_q"], ["logits"]))
    return Graph(tensors=t, nodes=nodes, inputs=["x"], outputs=["logits"], name=f"gen_cnn_{seed}_{layout}")


def cnn_inputs(graph: Graph, batch: int = 2, seed: int = 0) -> dict:
    shape = tuple(batch if d is None else d for d in graph.tensors["x"].shape)
    return {"x": np.random.default_rng(100 + seed).normal(0, 1.5, shape).astype(np.float32)}


def demo_feeds(batch: int = 2) -> dict:
    from mrq.demo import demo_inputs
    return demo_inputs(batch)


def real_models() -> list:
    """Real quantized models available on this machine: bench/models/*.onnx in the repository
    (e.g. the QAT MobileNetV2), then the shared TFLite models when the TFLite importer exists."""
    found = sorted(glob.glob(str(ROOT / "bench" / "models" / "*.onnx")))
    found = [p for p in found if "float" not in os.path.basename(p).lower()]
    if SHARED_MODELS.is_dir():
        try:
            import mrq.tflite_import  # noqa: F401
            shared = [p for p in SHARED_MODELS.rglob("*.tflite")
                      if ("quant" in p.name or "int8" in p.name or "ref_model.tflite" in p.name)
                      and "float" not in p.name]
            # CNNs first (the image-classification ResNet has 4-D NHWC activations)
            found += [str(p) for p in sorted(shared, key=lambda p: ("resnet" not in p.name.lower(), p.name))]
        except Exception:
            pass
    return found


def load_real_model():
    """(graph, path) of the first real model that loads and lowers, or pytest.skip."""
    from mrq.hw_profile import load_profile
    from mrq.lower import arithmetic_from_profile, lower
    from mrq.onnx_import import load_model
    errors = []
    for path in real_models():
        try:
            g = load_model(path)
            lower(g, arithmetic_from_profile(load_profile("onnxruntime-cpu")))
            return g, path
        except Exception as exc:  # a model the importer cannot handle yet
            errors.append(f"{os.path.basename(path)}: {exc}")
    pytest.skip("no real model available (bench/models/*.onnx, or /work/shared/models with the TFLite "
                "importer)" + (f"; tried: {'; '.join(errors)[:300]}" if errors else ""))


def real_inputs(graph, batch: int = 2, seed: int = 0) -> dict:
    feeds = {}
    rng = np.random.default_rng(seed)
    for name in graph.inputs:
        t = graph.tensors[name]
        shape = tuple(batch if (i == 0 or d is None) else d for i, d in enumerate(t.shape))
        if t.dtype == "float32":
            feeds[name] = rng.uniform(0, 1, shape).astype(np.float32)
        else:
            lo, hi = (-128, 127) if t.dtype == "int8" else (0, 255)
            feeds[name] = rng.integers(lo, hi + 1, shape).astype(t.dtype)
    return feeds


def run_cli(*args):
    """``mrq ARGS`` in this process (tests/cli_in_process.py): the return code, stdout and stderr
    a subprocess would give, without an interpreter start and imports per call. Nothing here
    tests what only a process shows; the entry point, signals and exit codes set by the
    interpreter are tested by real processes in tests/mrq/test_cli_*.py and test_entry.py."""
    return mrq_in_process(*args)


@pytest.fixture(scope="session")
def demo_golden(tmp_path_factory):
    """Golden set of the demo model under nna-sym8 (npy + hex + bin + C headers), batch 2."""
    from mrq.golden import make_golden
    d = tmp_path_factory.mktemp("golden") / "demo_nna_sym8"
    make_golden(DEMO_MODEL, "nna-sym8", demo_feeds(2), str(d), c_headers=True, write_bin=True)
    return d


@pytest.fixture(scope="session")
def gen_golden_nhwc(tmp_path_factory):
    """Golden set of a generated NCHW model written with --layout NHWC (tflite-int8)."""
    from mrq.golden import make_golden
    g = make_cnn(1)
    d = tmp_path_factory.mktemp("golden") / "gen_nhwc"
    make_golden(g, "tflite-int8", cnn_inputs(g), str(d), layout="NHWC", weight_layout="OHWI")
    return d


def copy_set(src, dst) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)
