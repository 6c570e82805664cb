"""Float islands of mixed ONNX graphs (mrq/onnx_import_float.py, mrq/lower_float.py,
simulator/kernels/ort_eltwise.py): float ops between dynamically quantized regions run as ONNX
Runtime's CPU kernels, bit for bit: each kernel against ORT's own single-node graph (random,
extreme, ties, inf/NaN), the summation orders against slow scalar references, a quantize_dynamic
CNN exported by PyTorch end to end (0 differing outputs), and the NNA profiles' refusal."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mrq.api import simulate
from mrq.errors import MrqError
from mrq.onnx_import import import_onnx
from mrq.pipeline import Pipeline
from simulator.kernels import ort_eltwise as E
from tests.parity.ort_runner import session_options
from tests.reference import float_island_ref as ref

RNG = np.random.default_rng(20261207)
REPO = Path(__file__).resolve().parents[2]
F32 = np.float32


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ort(model, feeds):
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def _same_bits(got, want):
    got, want = np.asarray(got, F32), np.asarray(want, F32)
    assert got.shape == want.shape
    # NaNs compare equal to NaNs (ORT and numpy may differ in the payload bits)
    bad = (got.view(np.int32) != want.view(np.int32)) & ~(np.isnan(got) & np.isnan(want))
    assert not bad.any(), f"{int(bad.sum())} of {bad.size} differ, e.g. {got[bad][:4]} vs {want[bad][:4]}"


def _values(n):
    """Random values of several magnitudes, then the special ones."""
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38,
                        18.0, -18.0, 9.0, -9.0, 0.5, -0.5, 3.0, -3.0], F32)
    scales = np.repeat(np.array([0.01, 1.0, 10.0, 100.0], F32), n // 4)
    return np.concatenate([RNG.standard_normal(scales.size).astype(F32) * scales, special])


def _one_node(op, inputs, attrs=None, opset=17, inits=()):
    ins = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in inputs]
    node = helper.make_node(op, [name for name, _ in inputs] + [i.name for i in inits], ["y"], **(attrs or {}))
    return _model([node], ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, opset)


@pytest.mark.parametrize("op,attrs,kwargs", [
    ("Sigmoid", {}, {}), ("Tanh", {}, {}), ("Relu", {}, {}),
    ("LeakyRelu", {"alpha": 0.1}, {"alpha": 0.1}),
    ("HardSigmoid", {"alpha": 0.25, "beta": 0.4}, {"alpha": 0.25, "beta": 0.4}),
    ("HardSwish", {}, {})])
def test_unary_kernels_equal_ort(op, attrs, kwargs):
    x = _values(4000)
    want = _ort(_one_node(op, [("x", [x.size])], attrs, opset=14), {"x": x})["y"]
    _same_bits(E.unary(op, x, **kwargs), want)


def test_clip_equals_ort():
    x = _values(400)
    lo, hi = numpy_helper.from_array(F32(-0.75), "lo"), numpy_helper.from_array(F32(2.5), "hi")
    want = _ort(_one_node("Clip", [("x", [x.size])], inits=(lo, hi)), {"x": x})["y"]
    _same_bits(E.unary("Clip", x, lo=-0.75, hi=2.5), want)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "PRelu"])
def test_binary_kernels_broadcast_equal_ort(op):
    a = _values(400)[:400].reshape(4, 5, 4, 5)
    a[0, 0, 0, :4] = [np.inf, -np.inf, np.nan, 0.0]
    b = RNG.standard_normal((5, 1, 1)).astype(F32)
    b[0] = 0.0   # x / 0, x * 0 with inf
    want = _ort(_one_node(op, [("a", a.shape), ("b", b.shape)]), {"a": a, "b": b})["y"]
    _same_bits(E.binary(op, a, b), want)


@pytest.mark.parametrize("shape,axis", [((3, 16), -1), ((2, 5), 1), ((2, 50), -1), ((2, 1000), -1),
                                        ((1, 16, 4, 30), 1), ((3, 7, 33), 1)])
def test_softmax_equals_ort(shape, axis):
    for scale in (0.1, 10.0, 200.0):
        x = (RNG.standard_normal(shape) * scale).astype(F32)
        x.reshape(-1)[:3] = x.reshape(-1)[3]   # ties, several maxima
        want = _ort(_one_node("Softmax", [("x", shape)], {"axis": axis}), {"x": x})["y"]
        _same_bits(E.softmax(x, axis), want)


def test_softmax_row_sum_order():
    """The vectorised lane order equals the scalar reference's, on rows of awkward lengths."""
    for d in (1, 15, 16, 17, 47, 48, 49, 130):
        x = (RNG.standard_normal((1, d)) * 30).astype(F32)
        e = E._sum_exp_terms(x - x.max())
        total = ref.softmax_row_sum(e[0])
        _same_bits(E.softmax(x, -1), (e * (F32(1.0) / total)).astype(F32))


@pytest.mark.parametrize("channels,order", [(12, "mlas"), (16, "nchwc"), (32, "nchwc")])
def test_global_average_pool_equals_ort(channels, order):
    """A graph-input GlobalAveragePool of 16k channels is ORT's NCHWc kernel (plane in order),
    otherwise MLAS's 4-lane sum; both against the scalar reference and ORT."""
    for hw in ((7, 7), (10, 10), (3, 5)):
        x = (RNG.standard_normal((2, channels) + hw) * 100 + 3).astype(F32)
        got = E.global_average_pool(x, order)
        _same_bits(got, ref.global_average_pool(x, order))
        want = _ort(_one_node("GlobalAveragePool", [("x", x.shape)]), {"x": x})["y"]
        _same_bits(got, want)


@pytest.mark.parametrize("kernel,strides,pads,ceil", [((3, 3), (1, 1), (1, 1, 1, 1), 0),
                                                      ((2, 2), (2, 2), (0, 0, 0, 0), 1),
                                                      ((5, 5), (1, 1), (2, 2, 2, 2), 0)])
def test_float_maxpool_equals_ort_and_reference(kernel, strides, pads, ceil):
    x = (RNG.standard_normal((1, 3, 7, 9)) * 10).astype(F32)
    x[0, 0, 0, :3] = [-np.inf, np.inf, -0.0]
    got = E.maxpool(x, layout="NCHW", kernel=kernel, strides=strides, pads=pads,
                    dilations=(1, 1), ceil_mode=ceil)
    _same_bits(got, ref.maxpool(x, kernel, strides, pads, (1, 1), ceil))
    attrs = {"kernel_shape": list(kernel), "strides": list(strides), "pads": list(pads), "ceil_mode": ceil}
    _same_bits(got, _ort(_one_node("MaxPool", [("x", x.shape)], attrs), {"x": x})["y"])


DYNAMIC_CNN = Path(__file__).resolve().parents[1] / "data" / "onnx_float" / "dynamic_cnn.u8.onnx"


def _dynamic_cnn(tmp_path):
    """A small CNN exported by PyTorch and quantized by ORT's quantize_dynamic (ConvInteger,
    MatMulInteger): between them SiLU, MaxPool, Split/Concat, Resize, Tanh, LeakyRelu, HardSwish,
    GlobalAveragePool, Flatten and Softmax stay float. Committed; regenerated byte for byte by
    ``python bench/make_float_island_model.py``."""
    return onnx.load(DYNAMIC_CNN)


def test_quantize_dynamic_cnn_equals_ort(tmp_path):
    model = _dynamic_cnn(tmp_path)
    ops = {n.op for n in import_onnx(model).nodes}
    assert {"DynamicConv", "DynamicMatMul", "FloatUnary", "FloatBinary", "FloatMaxPool",
            "FloatConcat", "FloatSoftmax", "FloatGlobalAveragePool", "Take"} <= ops
    for scale in (1.0, 30.0):
        x = (RNG.standard_normal((2, 3, 12, 12)) * scale).astype(F32)
        got = Pipeline(import_onnx(model), "onnxruntime-cpu", "native").run({"x": x}).outputs
        want = _ort(model, {"x": x})
        _same_bits(got["y"], want["y"])
    # the float reference of every island op runs too (mrq/float_ref_float.py)
    sim = simulate(import_onnx(model), "onnxruntime-cpu", {"x": x}, fidelity=True)
    assert sim.outputs["y"].shape == (2, 7)


def test_integer_profiles_refuse_float_islands_in_one_line(tmp_path):
    """An NNA profile has no float arithmetic: the island op is refused naming node and op,
    unless the profile runs it on the host in ORT's arithmetic."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("QuantizeLinear", ["s", "sc", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["y"])]
    inits = [numpy_helper.from_array(F32(1 / 255), "sc"), numpy_helper.from_array(np.uint8(0), "zp")]
    model = _model(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    feeds = {"x": RNG.standard_normal((3, 4)).astype(F32)}
    got = Pipeline(import_onnx(model), "onnxruntime-cpu", "native").run(feeds).outputs
    np.testing.assert_array_equal(got["y"], _ort(model, feeds)["y"])
    with pytest.raises(MrqError) as err:
        Pipeline(import_onnx(model), "nna-sym8", "native").run(feeds)
    assert "Logistic" in str(err.value) and "\n" not in str(err.value)
    # nna-sym8 runs Logistic as a table on the NPU: this variant moves it to the host
    text = (REPO / "hw_profiles" / "nna-sym8.yaml").read_text().replace("name: nna-sym8", "name: nna-host-sig") \
        .replace(" Logistic,", "")
    prof = tmp_path / "nna-host-sig.yaml"
    prof.write_text(text + "\nhost_ops:\n  Logistic: onnxruntime-cpu\n")
    sim = simulate(import_onnx(model), str(prof), feeds, fidelity=False)
    np.testing.assert_array_equal(sim.outputs["y"], _ort(model, feeds)["y"])
    assert {sim.lowered.placement[s.name] for s in sim.lowered.program.steps
            if s.kind == "float_unary"} == {"host"}


def test_reduce_l2_equals_ort():
    for d in (5, 37, 512):
        x = (RNG.standard_normal((3, d)) * 3).astype(F32)
        want = _ort(_one_node("ReduceL2", [("x", x.shape)], {"axes": [1], "keepdims": 1}, opset=13),
                    {"x": x})["y"]
        _same_bits(E.reduce_l2_last(x), want)


def test_prelu_on_dequantized_codes_then_l2_normalisation_equals_ort():
    """ORT has no integer PRelu or ReduceL2: a QDQ graph runs DQ -> PRelu -> Q in float, and an
    embedding's L2 normalisation (ReduceL2, Clip, Expand, Div) stays float to the output."""
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [None, 4, 3, 3])
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
             helper.make_node("PRelu", ["xf", "slope"], ["p"]),
             helper.make_node("QuantizeLinear", ["p", "s2", "z2"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s2", "z2"], ["d"]),
             helper.make_node("Flatten", ["d"], ["f"]),
             helper.make_node("ReduceL2", ["f"], ["n"], axes=[1], keepdims=1),
             helper.make_node("Clip", ["n", "eps"], ["nc"]),
             helper.make_node("Expand", ["nc", "shape"], ["ne"]),
             helper.make_node("Div", ["f", "ne"], ["y"])]
    inits = [numpy_helper.from_array(F32(0.05), "s"), numpy_helper.from_array(np.uint8(128), "z"),
             numpy_helper.from_array(F32(0.03), "s2"), numpy_helper.from_array(np.uint8(100), "z2"),
             numpy_helper.from_array(RNG.uniform(0.05, 0.5, (4, 1, 1)).astype(F32), "slope"),
             numpy_helper.from_array(F32(1e-12), "eps"),
             numpy_helper.from_array(np.array([1, 36], np.int64), "shape")]
    model = _model(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, 13)
    feeds = {"x": RNG.integers(0, 256, (1, 4, 3, 3)).astype(np.uint8)}
    got = Pipeline(import_onnx(model), "onnxruntime-cpu", "native").run(feeds).outputs
    _same_bits(got["y"], _ort(model, feeds)["y"])


def test_qdq_sub_runs_in_float_as_ort():
    """ORT fuses no QDQ Sub: a constant tensor minus a DequantizeLinear view, and the difference
    of two views, run in float between DequantizeLinear and QuantizeLinear."""
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [None, 2, 8])
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
             helper.make_node("Sub", ["anchor", "xf"], ["a"]),
             helper.make_node("QuantizeLinear", ["a", "s2", "z2"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "s2", "z2"], ["af"]),
             helper.make_node("Sub", ["af", "xf"], ["b"]),
             helper.make_node("QuantizeLinear", ["b", "s2", "z2"], ["y"])]
    inits = [numpy_helper.from_array(F32(0.07), "s"), numpy_helper.from_array(np.uint8(120), "z"),
             numpy_helper.from_array(F32(0.11), "s2"), numpy_helper.from_array(np.uint8(128), "z2"),
             numpy_helper.from_array((RNG.standard_normal((1, 2, 8)) * 4).astype(F32), "anchor")]
    model = _model(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits, 13)
    feeds = {"x": RNG.integers(0, 256, (3, 2, 8)).astype(np.uint8)}
    feeds["x"][0, 0, :4] = [0, 255, 120, 121]
    got = Pipeline(import_onnx(model), "onnxruntime-cpu", "native").run(feeds).outputs
    np.testing.assert_array_equal(got["y"], _ort(model, feeds)["y"])
