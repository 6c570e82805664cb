"""NHWC layout rewrite (mrq/layout.py): the rewritten program gives bit-identical outputs (names,
shapes, dtypes, values) to the native one for committed models, re-quantized models, generated
ORT-quantized models and a hand-built graph with the awkward cases; traces keep the native layout."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mrq.api import bind_inputs, prepare, simulate
from mrq.demo import DEMO_MODEL, demo_inputs
from mrq.ir import Graph, Node, QParams, Tensor
from mrq.layout import to_nhwc
from mrq.onnx_import import load_model
from simulator.run import run

REPO = Path(__file__).resolve().parents[2]
COMMITTED = [DEMO_MODEL, str(REPO / "bench/models/fmnist_mnv2_qat_qdq.onnx"),
             str(REPO / "bench/models/fmnist_mnv2_ort_qdq.onnx")]
PROFILES = ["onnxruntime-cpu", "tflite-int8", "litert-default", "nna-sym8", "nna-sym8-pow2",
            "nna-sym8-acc20", "nna-a16w8"]


def _feeds(program, batch, seed):
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in program.inputs:
        shape = (batch,) + tuple(spec.shape[1:])
        if spec.dtype == "float32":
            x = rng.standard_normal(shape).astype(np.float32) * 2.0
            x.reshape(-1)[::7] = 0.0          # some exact zero points / ties
            feeds[spec.name] = x
        else:
            info = np.iinfo(np.dtype(spec.dtype))
            feeds[spec.name] = rng.integers(info.min, info.max + 1, shape).astype(spec.dtype)
    return feeds


def _outputs(lowered, feeds):
    program, bound = bind_inputs(lowered, feeds)
    return run(program, bound).outputs


def assert_same_outputs(graph, profile, batches=(1, 3), seeds=(0, 1), more_feeds=()):
    """Both layouts, lowered once each (binding inputs leaves a lowered model as it was), on
    random inputs of each batch and seed and on ``more_feeds``."""
    native = prepare(graph, profile, layout="native")
    nhwc = prepare(graph, profile, layout="nhwc")
    cases = [_feeds(native.program, batch, seed) for batch in batches for seed in seeds]
    for feeds in cases + list(more_feeds):
        a = _outputs(native, feeds)
        b = _outputs(nhwc, feeds)
        assert list(a) == list(b)
        for name in a:
            assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
            np.testing.assert_array_equal(a[name], b[name],
                                          err_msg=f"{graph.name} {profile} {name}")


@pytest.fixture(scope="module")
def committed():
    return {path: load_model(path) for path in COMMITTED}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("path", COMMITTED, ids=[os.path.basename(p) for p in COMMITTED])
def test_committed_models(committed, path, profile):
    assert_same_outputs(committed[path], profile)


def test_integer_codes_and_auto_default(committed):
    graph = committed[COMMITTED[2]]
    lowered = prepare(graph, "onnxruntime-cpu")                 # the default is the fast layout
    assert any(s.kind == "conv" and s.params["layout"] == "NHWC" for s in lowered.program.steps)
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (4, 1, 28, 28)).astype(np.uint8)
    name = lowered.program.inputs[0].name
    outs = []
    for layout in ("native", "auto"):
        program, bound = bind_inputs(prepare(graph, "onnxruntime-cpu", layout=layout), {name: codes})
        outs.append(run(program, bound).outputs)
    for k in outs[0]:
        np.testing.assert_array_equal(outs[0][k], outs[1][k])


def test_structure_of_mobilenet(committed):
    g = committed[COMMITTED[2]]
    new = to_nhwc(g)
    assert new.inputs == g.inputs and new.outputs == g.outputs
    for name in g.inputs + g.outputs:
        assert new.tensors[name].shape == g.tensors[name].shape
        assert new.tensors[name].dtype == g.tensors[name].dtype
    assert all(n.attrs["layout"] == "NHWC" for n in new.nodes if n.op in ("Conv", "GlobalAveragePool"))
    # one transpose after the input quantization; the flatten after the 1x1 pool reads NHWC
    assert [n.op for n in new.nodes].count("Transpose") == 1
    # the input graph is untouched
    assert all(n.attrs.get("layout", "NCHW") == "NCHW" for n in g.nodes if n.op == "Conv")
    assert not any("__nhwc" in t for t in g.tensors)


def test_traces_use_the_native_layout():
    feeds = demo_inputs(2)
    fast = simulate(DEMO_MODEL, "onnxruntime-cpu", feeds, fidelity=False)
    traced = simulate(DEMO_MODEL, "onnxruntime-cpu", feeds, fidelity=False, trace=True)
    full = simulate(DEMO_MODEL, "onnxruntime-cpu", feeds)
    assert any(s.params.get("layout") == "NHWC" for s in fast.lowered.program.steps)
    for res in (traced, full):
        assert all(s.params.get("layout", "NCHW") == "NCHW" for s in res.lowered.program.steps)
        assert not any("__nhwc" in k for k in res.trace)
    assert traced.trace["r1_QuantizeLinear_Output"].shape == (2, 16, 16, 16)
    assert full.layers and not any("__nhwc" in str(row.tensor) for row in full.layers)
    for k in fast.outputs:
        np.testing.assert_array_equal(fast.outputs[k], traced.outputs[k])
        np.testing.assert_array_equal(fast.outputs[k], full.outputs[k])
    with pytest.raises(ValueError):
        simulate(DEMO_MODEL, "onnxruntime-cpu", feeds, trace=True, fidelity=False, layout="nhwc")
    with pytest.raises(ValueError):
        prepare(DEMO_MODEL, "onnxruntime-cpu", layout="NCHWc")


@pytest.mark.parametrize("profile", ["nna-sym8", "nna-w4a8-pow2"])
def test_requantized_model(committed, profile):
    from mrq.requant import requantize
    new, _ = requantize(committed[DEMO_MODEL], profile, demo_inputs(16, seed=1))
    assert_same_outputs(new, profile)


# ------------------------------------------------------------------------------ hand-built graph
def _qp(scale, zp=0, dtype="int8"):
    return QParams(np.array([scale], np.float32), np.array([zp], np.int64), dtype)


class _G:
    def __init__(self):
        self.g = Graph({}, [], [], [], name="layout_cases")
        self.rng = np.random.default_rng(7)

    def act(self, name, shape, scale=0.05, zp=0, dtype="int8"):
        self.g.tensors[name] = Tensor(name, shape, dtype, _qp(scale, zp, dtype))
        return name

    def const(self, name, data, scale=0.02, zp=0, dtype="int8"):
        self.g.tensors[name] = Tensor(name, tuple(data.shape), dtype, _qp(scale, zp, dtype), data)
        return name

    def node(self, op, ins, outs, **attrs):
        self.g.nodes.append(Node(op, f"n{len(self.g.nodes)}_{op}", list(ins), list(outs), attrs))

    def conv(self, x, y, c_in, c_out, group=1, k=3, stride=1, clamp=None):
        w = self.const(f"{y}_w", self.rng.integers(-127, 128, (c_out, c_in // group, k, k)).astype(np.int8))
        b = f"{y}_b"
        self.g.tensors[b] = Tensor(b, (c_out,), "int32", None,
                                   self.rng.integers(-3000, 3000, c_out).astype(np.int64))
        attrs = {"strides": (stride, stride), "pads": (k // 2,) * 4, "dilations": (1, 1),
                 "group": group, "layout": "NCHW"}
        if clamp:
            attrs["clamp"] = clamp
        self.node("Conv", [x, w, b], [y], **attrs)


def _awkward_graph() -> Graph:
    """Conv, broadcast Add with a [1,C,1,1] constant as second operand (layout-neutral under
    ORT's operand swap) and as first operand (not neutral: must stay native), broadcast Mul with
    a rank-3 constant, depthwise conv, channel Concat, Clamp, Rescale, MaxPool, AveragePool,
    AveragePool with count_include_pad and clipped windows, GlobalAveragePool, Reshape with a 0 that copies the channel dim, Gemm; an intermediate conv
    output is also a graph output."""
    b = _G()
    g = b.g
    g.tensors["x"] = Tensor("x", (None, 4, 9, 9), "float32")
    g.inputs = ["x"]
    b.act("xq", (None, 4, 9, 9), 0.04, 3)
    b.node("Quantize", ["x"], ["xq"])
    b.act("a1", (None, 8, 9, 9), 0.1, -5)
    b.conv("xq", "a1", 4, 8, clamp=(0.0, None))
    kb = b.const("kb", b.rng.integers(-100, 100, (1, 8, 1, 1)).astype(np.int8), 0.03, 2)
    b.act("a2", (None, 8, 9, 9), 0.12, 1)
    b.node("Add", ["a1", kb], ["a2"])
    ka = b.const("ka", b.rng.integers(-100, 100, (1, 8, 1, 1)).astype(np.int8), 0.05, -1)
    b.act("a3", (None, 8, 9, 9), 0.15, 0)
    b.node("Add", [ka, "a2"], ["a3"])
    km = b.const("km", b.rng.integers(-100, 100, (8, 1, 1)).astype(np.int8), 0.02, 0)
    b.act("a4", (None, 8, 9, 9), 0.1, 0)
    b.node("Mul", ["a3", km], ["a4"])
    b.act("a5", (None, 8, 9, 9), 0.2, 4)
    b.conv("a4", "a5", 8, 8, group=8)
    k0 = b.const("k0", np.array(17, np.int8), 0.1, 0)
    b.act("a5s", (None, 8, 9, 9), 0.2, 4)
    b.node("Add", ["a5", k0], ["a5s"])                       # 0-d constant: layout-neutral
    k3 = b.const("k3", b.rng.integers(-100, 100, (8, 1, 1)).astype(np.int8), 0.05, 3)
    b.act("a5t", (None, 8, 9, 9), 0.2, 4)
    b.node("Add", [k3, "a5s"], ["a5t"])                      # rank-3 first operand: swap differs
    b.act("a6", (None, 16, 9, 9), 0.2, 4)
    b.node("Concat", ["a4", "a5t"], ["a6"], axis=1)
    b.act("a7", (None, 16, 9, 9), 0.2, 4)
    b.node("Clamp", ["a6"], ["a7"], lo=-0.5, hi=6.0)
    b.act("a8", (None, 16, 9, 9), 0.3, -2)
    b.node("Rescale", ["a7"], ["a8"])
    b.act("a9", (None, 16, 5, 5), 0.3, -2)
    b.node("MaxPool", ["a8"], ["a9"], kernel=(2, 2), strides=(2, 2), pads=(0, 0, 1, 1),
           dilations=(1, 1), ceil_mode=0)
    b.act("a10", (None, 16, 5, 5), 0.3, -2)     # tflite_raw pools need equal grids
    b.node("AveragePool", ["a9"], ["a10"], kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
           ceil_mode=0, count_include_pad=0)
    b.act("a10b", (None, 16, 2, 2), 0.3, -2)
    b.node("AveragePool", ["a10"], ["a10b"], kernel=(3, 3), strides=(2, 2), pads=(0, 1, 1, 0),
           ceil_mode=0, count_include_pad=1)
    b.act("a11", (None, 16, 1, 1), 0.2, 1)
    b.node("GlobalAveragePool", ["a10b"], ["a11"], layout="NCHW")
    b.act("a12", (None, 16, 1), 0.2, 1)
    b.node("Reshape", ["a11"], ["a12"], shape=(0, 0, -1))
    b.act("a13", (None, 16), 0.2, 1)
    b.node("Reshape", ["a12"], ["a13"], shape=(0, -1))
    w = b.const("fc_w", b.rng.integers(-127, 128, (16, 10)).astype(np.int8), 0.01)
    b.act("logits_q", (None, 10), 0.1, 0)
    b.node("Gemm", ["a13", w], ["logits_q"])
    g.tensors["logits"] = Tensor("logits", (None, 10), "float32")
    b.node("Dequantize", ["logits_q"], ["logits"])
    g.outputs = ["logits", "a1", "a10"]
    return g


@pytest.mark.parametrize("profile", ["onnxruntime-cpu", "tflite-int8", "nna-sym8", "nna-sym8-pow2"])
def test_awkward_graph(profile):
    g = _awkward_graph()
    assert_same_outputs(g, profile, batches=(1, 2, 5), seeds=(0, 1, 2))


def test_awkward_graph_decisions():
    g = _awkward_graph()
    new = to_nhwc(g)
    by_name = {n.name: n for n in new.nodes}
    ops = {n.name: n for n in g.nodes}
    add_second = next(n for n in ops.values() if n.op == "Add" and n.inputs[1] == "kb")
    add_first = next(n for n in ops.values() if n.op == "Add" and n.inputs[0] == "ka")
    assert by_name[add_second.name].outputs == ["a2__nhwc"]
    assert by_name[add_first.name].outputs == ["a3"]            # ORT swap differs: stays NCHW
    assert next(n for n in new.nodes if "k0__nhwc" in n.inputs).outputs == ["a5s__nhwc"]
    assert next(n for n in new.nodes if n.inputs and n.inputs[0] == "k3").outputs == ["a5t"]
    concat = next(n for n in new.nodes if n.op == "Concat")
    assert concat.attrs["axis"] == 3
    reshape = next(n for n in new.nodes if n.op == "Reshape" and n.outputs == ["a12"])
    assert reshape.inputs == ["a11"]                          # (0, 0, -1) needs the NCHW tensor
    # graph outputs keep their names and shapes; a1 is produced by a transpose back
    assert new.outputs == g.outputs
    assert new.tensors["a1"].shape == (None, 8, 9, 9)
    assert any(n.op == "Transpose" and n.outputs == ["a1"] for n in new.nodes)
    assert not any("__nhwc" in t for t in g.tensors)           # the input graph is unchanged


# ------------------------------------------------------------------------------ generated models
ZOO_COUNT = int(os.environ.get("MRQ_LAYOUT_ZOO", "48"))   # one model per quantizer config


@pytest.fixture(scope="module")
def zoo_models(tmp_path_factory):
    import sys
    sys.path.insert(0, str(REPO / "tests"))
    from parity import zoo
    cases = zoo.generate_shared(tmp_path_factory, ZOO_COUNT, 20261126)
    # each imported once for both profiles (read-only: prepare and to_nhwc copy, as for the
    # committed models)
    return [(c.name, load_model(str(c.path)), c.make_inputs) for c in cases]


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["onnxruntime-cpu", "nna-sym8"])
def test_generated_models(zoo_models, profile):
    converted = 0
    for _, g, make_inputs in zoo_models:
        new = to_nhwc(g)
        converted += any(n.attrs.get("layout") == "NHWC" for n in new.nodes)
        # random inputs, then inputs on the grid and on rounding ties
        assert_same_outputs(g, profile, batches=(2,), seeds=(0,), more_feeds=[make_inputs(1)])
    assert converted == len(zoo_models)


@pytest.mark.parametrize("mode", ["fixed", "tflite_raw", "ort_float"])
@pytest.mark.parametrize("include_pad", [0, 1])
def test_avgpool_kernel_nhwc_equals_nchw(mode, include_pad):
    """Regression: the NHWC ``fixed`` kernel subtracted ``z_in * kh * kw`` under
    count_include_pad although clipped windows sum fewer taps (PROGRAM.md sums ``x - z_in`` over
    the taps inside the image). Both layouts against the reference (NCHW runs the NHWC kernel on
    a transposed copy)."""
    from simulator.kernels import pool as pool_k
    from tests.reference import pool_ref
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (2, 5, 7, 6)).astype(np.int8)
    geo = ((3, 3), (2, 2), (0, 1, 1, 0), False, include_pad)
    kw = {"kernel": (3, 3), "strides": (2, 2), "pads": (0, 1, 1, 0),
          "count_include_pad": include_pad, "mode": mode, "zero_point_in": -37, "scale_in": 0.05,
          "scale_out": 0.04, "zero_point_out": 3, "rq_rounding": "half_up", "out_dtype": np.int8}
    if mode == "fixed":
        want, want_sat = pool_ref.avgpool_fixed_avg(x, *geo, -37, "half_up"), 0
    elif mode == "tflite_raw":
        want, want_sat = pool_ref.avgpool_tflite(x, *geo, -128, 127, "int8")
    else:
        want, want_sat = pool_ref.avgpool_ort_float(x, *geo, np.float32(0.05), -37,
                                                    np.float32(0.04), 3, -128, 127, "int8")
    a, sa = pool_k.avgpool(x, layout="NCHW", **kw)
    b, sb = pool_k.avgpool(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), layout="NHWC", **kw)
    np.testing.assert_array_equal(a, want)
    np.testing.assert_array_equal(b.transpose(0, 3, 1, 2), want)
    assert sa == sb == want_sat
