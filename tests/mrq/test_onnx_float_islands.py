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
from mrq.hw_profile import load_profile
from mrq.onnx_import import import_onnx
from mrq.pipeline import Pipeline
from simulator.errors import KernelInputError
from simulator.kernels import ort_eltwise as E
from tests.ort_host import ORT_PROFILE
from tests.parity.ort_runner import session_options
from tests.reference import float_island_ref as ref

RNG = np.random.default_rng(20261207)
# the MLAS float kernel set of the installed ORT on this host, as its profile names it
ORT_ISA = load_profile(ORT_PROFILE).runtime_isa
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
        _same_bits(E.softmax(x, axis, ORT_ISA), want)


def _extreme_rows(d):
    """Rows of length d: -inf entries, one huge maximum (everything else underflows), values
    spread across the whole underflow range of both kernels, all equal, subnormal inputs."""
    rows = np.zeros((6, d), F32)
    rows[0] = RNG.standard_normal(d) * 50
    rows[0, ::3] = -np.inf
    rows[1] = -RNG.random(d) * 1e3
    rows[1, d // 2] = 3e38
    rows[2] = -RNG.random(d) * 110
    rows[2, 0] = 0.0
    rows[3] = 7.5
    rows[4] = RNG.standard_normal(d) * 1e-40
    rows[5] = np.linspace(-104.5, 0.0, d)
    return rows


@pytest.mark.parametrize("d", [1, 7, 8, 9, 24, 25, 33, 130])
def test_softmax_extreme_rows_equal_ort(d):
    """Underflowing and infinite inputs on rows of the lengths where the lane loops change, under
    this host's kernel set; both kernel sets against the scalar references."""
    x = _extreme_rows(d)
    want = _ort(_one_node("Softmax", [("x", x.shape)], {"axis": -1}), {"x": x})["y"]
    _same_bits(E.softmax(x, -1, ORT_ISA), want)
    for isa in E.ORT_ISAS:
        for row in x[1:]:   # finite rows: the scalar references take finite shifted values
            e = np.array([ref.sum_exp_term(F32(v - row.max()), isa) for v in row], F32)
            total = ref.softmax_row_sum(e, isa)
            _same_bits(E.softmax(row[None], -1, isa)[0], (e * (F32(1.0) / total)).astype(F32))


@pytest.mark.parametrize("isa", E.ORT_ISAS)
def test_softmax_row_sum_order(isa):
    """The vectorised lane order equals the scalar reference's, on rows of awkward lengths
    (FMA3: 8 lanes, its 24-element loop and the tails)."""
    for d in (1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 47, 48, 49, 130):
        x = (RNG.standard_normal((1, d)) * 30).astype(F32)
        e = E._sum_exp_terms(x - x.max(), isa)
        total = ref.softmax_row_sum(e[0], isa)
        _same_bits(E.softmax(x, -1, isa), (e * (F32(1.0) / total)).astype(F32))


@pytest.mark.parametrize("isa", E.ORT_ISAS)
def test_sum_exp_terms_against_scalar_reference(isa):
    """Each exp lane against the exact-rational scalar reference: random shifted inputs down to
    past both clamps, the underflow corners (subnormal results; FMA3's 2^-127 that is 0) and
    the clamps themselves."""
    v = np.concatenate([-(RNG.random(2000) * 110).astype(F32),
                        -np.abs(RNG.standard_normal(300)).astype(F32) * F32(0.01),
                        np.array([0.0, -0.0, -1e-45, -0.5, -88.3762626647949, -88.37626, -88.3763,
                                  -87.33654, -87.3365, -86.5, -87.0, -87.9, -88.0, -88.3,
                                  -103.9720840454, -103.97208, -104.0, -200.0, -3.4e38], F32)])
    got = E._sum_exp_terms(v, isa)
    want = np.array([ref.sum_exp_term(t, isa) for t in v], F32)
    _same_bits(got, want)
    # both kernels reach the subnormal range; at m = -127 only FMA3 gives 0
    assert ((got > 0) & (got < np.finfo(F32).tiny)).any()
    assert (E._sum_exp_terms(np.array([-88.3], F32), isa)[0] == 0) == (isa == "fma3")


def test_softmax_isa_is_checked():
    """The kernel sets the simulator knows are the profile vocabulary's, each with its NCHWc
    block; another name is refused."""
    from mrq.hw_profile import RUNTIME_ISAS
    from simulator.kernels.ort_nchwc import BLOCKS
    assert tuple(RUNTIME_ISAS) == E.ORT_ISAS and set(BLOCKS) == set(E.ORT_ISAS)
    with pytest.raises(KernelInputError):
        E.softmax(np.zeros((1, 4), F32), -1, "avx2")


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


def _gap_model(shape):
    inits = [numpy_helper.from_array(F32(0.5), "s"), numpy_helper.from_array(np.uint8(128), "z")]
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "s", "z"], ["q"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                   helper.make_tensor_value_info("q", TensorProto.UINT8, None)], inits)


@pytest.mark.parametrize("channels", [8, 12, 24])
def test_global_average_pool_graph_follows_the_host_block(channels):
    """ORT gives a graph-input GlobalAveragePool its NCHWc kernel when the channels are a
    multiple of the host's block (16 with AVX-512F, 8 with AVX2/FMA3): through the pipeline under
    this host's profile, bit for bit; the order each profile lowers to."""
    from mrq.api import prepare
    x = (RNG.standard_normal((2, channels, 7, 7)) * 100 + 3).astype(F32)
    model = _gap_model(x.shape)
    got = Pipeline(import_onnx(model), ORT_PROFILE, "native").run({"x": x}).outputs
    _same_bits(got["y"], _ort(model, {"x": x})["y"])
    for profile, block in (("onnxruntime-cpu", 16), ("onnxruntime-cpu-avx2", 8)):
        (step,) = [s for s in prepare(import_onnx(model), profile, layout="native").program.steps
                   if s.kind == "float_global_avgpool"]
        assert step.params["order"] == ("mlas" if channels % block else "nchwc"), profile


def test_softmax_step_takes_the_profile_isa():
    from mrq.api import prepare
    inits = [numpy_helper.from_array(F32(1 / 256), "s"), numpy_helper.from_array(np.uint8(0), "z")]
    model = _model([helper.make_node("Softmax", ["x"], ["y"], axis=-1),
                    helper.make_node("QuantizeLinear", ["y", "s", "z"], ["q"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 9])],
                   [helper.make_tensor_value_info("q", TensorProto.UINT8, None)], inits)
    for profile, isa in (("onnxruntime-cpu", "avx512f"), ("onnxruntime-cpu-avx2", "fma3"),
                         ("onnxruntime-cpu-avx512", "avx512f"), ("onnxruntime-cpu-avxvnni", "fma3")):
        (step,) = [s for s in prepare(import_onnx(model), profile, layout="native").program.steps
                   if s.kind == "float_softmax"]
        assert step.params["isa"] == isa, profile


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
        got = Pipeline(import_onnx(model), ORT_PROFILE, "native").run({"x": x}).outputs
        want = _ort(model, {"x": x})
        _same_bits(got["y"], want["y"])
    # the float reference of every island op runs too (mrq/float_ref_float.py)
    sim = simulate(import_onnx(model), ORT_PROFILE, {"x": x}, fidelity=True)
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
    got = Pipeline(import_onnx(model), ORT_PROFILE, "native").run(feeds).outputs
    np.testing.assert_array_equal(got["y"], _ort(model, feeds)["y"])
    with pytest.raises(MrqError) as err:
        Pipeline(import_onnx(model), "nna-sym8", "native").run(feeds)
    assert "Logistic" in str(err.value) and "\n" not in str(err.value)
    # nna-sym8 runs Logistic as a table on the NPU: this variant moves it to the host
    text = (REPO / "hw_profiles" / "nna-sym8.yaml").read_text().replace("name: nna-sym8", "name: nna-host-sig") \
        .replace(" Logistic,", "")
    prof = tmp_path / "nna-host-sig.yaml"
    prof.write_text(text + f"\nhost_ops:\n  Logistic: {ORT_PROFILE}\n")
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
    got = Pipeline(import_onnx(model), ORT_PROFILE, "native").run(feeds).outputs
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
    got = Pipeline(import_onnx(model), ORT_PROFILE, "native").run(feeds).outputs
    np.testing.assert_array_equal(got["y"], _ort(model, feeds)["y"])
