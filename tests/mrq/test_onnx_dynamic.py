"""ONNX Runtime's dynamic quantization (``quantize_dynamic``: DynamicQuantizeLinear,
MatMulInteger with run-time zero points, the float tail ORT fuses into DynamicQuantizeMatMul),
batched MatMulInteger/QLinearMatMul, and the one-line refusals of bad quantized models: every
result equal to ONNX Runtime's (the parity harness's session options), element for element."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mrq import cli
from mrq.errors import MrqError
from mrq.onnx_import import import_onnx
from mrq.pipeline import Pipeline
from simulator.errors import SimulatorError
from simulator.kernels import ort_dynamic
from tests.ort_host import ORT_PROFILE
from tests.parity.ort_runner import session_options
from tests.reference import dynamic_ref

RNG = np.random.default_rng(20261207)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ort(model, feeds, fused=True):
    """ORT's outputs with the parity harness's options; ``fused=False``: graph optimizations off,
    so the Cast/Mul/Add chain runs as written instead of ORT's DynamicQuantizeMatMul."""
    import onnxruntime as ort
    options = session_options()
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _sim(model, feeds):
    outputs = Pipeline(import_onnx(model), ORT_PROFILE, "native").run(feeds).outputs
    return [outputs[o.name] for o in model.graph.output]


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        assert np.array_equal(g, w), f"{int(np.sum(g != w))} of {w.size} differ"


def _extreme_inputs(shape):
    """All-equal (zero range), zeros, negative-only, positive-only, tiny and huge ranges, random."""
    n = int(np.prod(shape))
    normal = RNG.standard_normal(n)
    return [np.full(n, 0.75), np.zeros(n), np.full(n, -3.0), -np.abs(normal) - 0.5,
            np.abs(normal) + 0.5, normal * 1e-20, normal * 1e30,
            np.linspace(-1.0, 1.0, n) * 127.5, normal * 3.0 + 1.0]


# ------------------------------------------------------------------ the arithmetic, by reference
def test_dynamic_quantize_kernel_equals_reference():
    cases = [v.astype(np.float32) for v in _extreme_inputs((37,))]
    cases += [(RNG.standard_normal(int(RNG.integers(1, 60))) * 10.0 ** RNG.uniform(-6, 6)
               + RNG.uniform(-3, 3)).astype(np.float32) for _ in range(200)]
    for x in cases:
        codes, scale, zp, _ = ort_dynamic.dynamic_quantize(x)
        r_codes, r_scale, r_zp = dynamic_ref.dynamic_quantize(x)
        assert scale.dtype == np.float32 and scale == r_scale and int(zp) == r_zp, x[:4]
        assert np.array_equal(codes, r_codes)


def test_dynamic_quantize_refuses_ranges_without_a_finite_grid():
    for x in (np.array([1.0, np.inf], np.float32), np.array([1e-45, 0.0], np.float32)):
        with pytest.raises(Exception, match="dynamic quantize"):
            ort_dynamic.dynamic_quantize(x)


@pytest.mark.parametrize("b_dtype", [np.int8, np.uint8])
def test_matmul_integer_and_scale_bias_kernels_equal_reference(b_dtype):
    lo, hi = np.iinfo(b_dtype).min, np.iinfo(b_dtype).max
    for a, b in [(RNG.integers(0, 256, (5, 33)), RNG.integers(lo, hi + 1, (33, 7))),
                 (np.full((3, 40), 255), np.full((40, 4), lo)),     # extreme codes
                 (np.zeros((2, 9)), np.full((9, 3), hi))]:
        a, b = a.astype(np.uint8), b.astype(b_dtype)
        za = int(RNG.integers(0, 256))
        zb = RNG.integers(lo, hi + 1, b.shape[1]).astype(b_dtype)
        for zero_b in (zb, zb[:1]):
            acc = ort_dynamic.matmul_integer(a, b, np.uint8(za), zero_b)
            assert acc.dtype == np.int32
            assert np.array_equal(acc, dynamic_ref.matmul_integer(a, b, za, zero_b))
        sa = np.float32(RNG.uniform(1e-3, 1))
        sb = RNG.uniform(1e-3, 1, b.shape[1]).astype(np.float32)
        bias = RNG.standard_normal(b.shape[1]).astype(np.float32)
        got = ort_dynamic.scale_bias(acc, (sa * sb).astype(np.float32), bias)
        assert np.array_equal(got, dynamic_ref.scale_bias(acc, sa, sb, bias))


# ---------------------------------------------------------------- single nodes against ORT
def _dql_model(shape):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    outs = [helper.make_tensor_value_info("y", TensorProto.UINT8, shape),
            helper.make_tensor_value_info("y_scale", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("y_zp", TensorProto.UINT8, [])]
    return _model([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zp"])],
                  [x], outs)


def test_dynamic_quantize_linear_equals_ort():
    model = _dql_model([None, 4, 6])
    for values in _extreme_inputs((3, 4, 6)):
        x = values.reshape(3, 4, 6).astype(np.float32)
        _assert_same(_sim(model, {"x": x}), _ort(model, {"x": x}))


def _matmul_integer_model(a_shape, b_shape, b_const=None, b_zp=None):
    """DynamicQuantizeLinear(a) -> MatMulInteger(a_q, B, a_zp, B_zp) -> int32 graph output;
    B a constant, or a second DynamicQuantizeLinear of the input ``b``."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["a"], ["a_q", "a_s", "a_zp"])]
    inputs, inits = [a], []
    if b_const is None:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape))
        nodes.append(helper.make_node("DynamicQuantizeLinear", ["b"], ["b_q", "b_s", "b_zp"]))
        mm_in = ["a_q", "b_q", "a_zp", "b_zp"]
    else:
        inits = [numpy_helper.from_array(b_const, "b_q"), numpy_helper.from_array(b_zp, "b_zp")]
        mm_in = ["a_q", "b_q", "a_zp", "b_zp"]
    nodes.append(helper.make_node("MatMulInteger", mm_in, ["y"]))
    y = helper.make_tensor_value_info("y", TensorProto.INT32, None)
    return _model(nodes, inputs, [y], inits)


@pytest.mark.parametrize("case", ["2d_per_column_zp", "3d_a_2d_b", "3d_both_dynamic"])
def test_matmul_integer_with_run_time_zero_points_equals_ort(case):
    if case == "2d_per_column_zp":
        w = RNG.integers(0, 256, (16, 5)).astype(np.uint8)
        model = _matmul_integer_model([None, 16], None, w, RNG.integers(0, 256, 5).astype(np.uint8))
        shapes = {"a": (4, 16)}
    elif case == "3d_a_2d_b":
        w = RNG.integers(-128, 128, (16, 5)).astype(np.int8)
        model = _matmul_integer_model([None, 3, 16], None, w, np.int8(-7))
        shapes = {"a": (2, 3, 16)}
    else:   # batched Q @ K^T style: both operands quantized at run time, batch dims broadcast
        model = _matmul_integer_model([None, 2, 3, 8], [None, 1, 8, 4])
        shapes = {"a": (2, 2, 3, 8), "b": (2, 1, 8, 4)}
    for scale in (1.0, 1e-3, 50.0):
        feeds = {k: (RNG.standard_normal(s) * scale + 0.3).astype(np.float32) for k, s in shapes.items()}
        _assert_same(_sim(model, feeds), _ort(model, feeds))


def test_matmul_integer_of_two_graph_inputs_equals_ort():
    """A non-constant B (an integer graph input), N-D, constant zero points."""
    a = helper.make_tensor_value_info("a", TensorProto.UINT8, [None, 3, 6])
    b = helper.make_tensor_value_info("b", TensorProto.INT8, [None, 6, 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, None)
    inits = [numpy_helper.from_array(np.uint8(200), "za"), numpy_helper.from_array(np.int8(-128), "zb")]
    model = _model([helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["y"])], [a, b], [y], inits)
    feeds = {"a": RNG.integers(0, 256, (2, 3, 6)).astype(np.uint8),
             "b": RNG.integers(-128, 128, (2, 6, 4)).astype(np.int8)}
    _assert_same(_sim(model, feeds), _ort(model, feeds))


def test_per_axis_dequantize_of_a_graph_input_equals_ort():
    x = helper.make_tensor_value_info("x", TensorProto.INT8, [None, 3, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 2])
    inits = [numpy_helper.from_array(np.array([0.5, 0.03, 7.0], np.float32), "s"),
             numpy_helper.from_array(np.array([-128, 0, 127], np.int8), "z")]
    model = _model([helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], axis=1)], [x], [y], inits)
    feeds = {"x": RNG.integers(-128, 128, (4, 3, 2)).astype(np.int8)}
    _assert_same(_sim(model, feeds), _ort(model, feeds))


def _float_mlp(w_shapes, clip=None):
    """A float Gemm/Relu MLP (quantize_dynamic makes each Gemm a DynamicQuantizeLinear ->
    MatMulInteger -> Cast -> Mul -> Add chain)."""
    nodes, inits, prev = [], [], "x"
    for i, (k, n) in enumerate(w_shapes):
        inits += [numpy_helper.from_array((RNG.standard_normal((n, k)) * 0.3).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(RNG.standard_normal(n).astype(np.float32), f"b{i}")]
        out = "y" if i == len(w_shapes) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out + ("" if out == "y" else "_pre")],
                                      transB=1))
        if out != "y":
            if clip is None:
                nodes.append(helper.make_node("Relu", [out + "_pre"], [out]))
            else:
                inits += [numpy_helper.from_array(np.float32(clip[0]), f"lo{i}"),
                          numpy_helper.from_array(np.float32(clip[1]), f"hi{i}")]
                nodes.append(helper.make_node("Clip", [out + "_pre", f"lo{i}", f"hi{i}"], [out]))
        prev = out
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, w_shapes[0][0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, w_shapes[-1][1]])
    return _model(nodes, [x], [y], inits, opset=13)


@pytest.mark.parametrize("weight_type,per_channel,clip", [
    ("QInt8", False, None), ("QUInt8", True, None), ("QInt8", True, (0.0, 6.0))])
def test_quantize_dynamic_mlp_equals_ort(tmp_path, weight_type, per_channel, clip):
    """The whole quantize_dynamic MLP (ORT fuses each chain into DynamicQuantizeMatMul): 0
    differing outputs, and the chain is one IR op per layer with the Relu/Clip fused."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    float_path, q_path = tmp_path / "mlp.onnx", tmp_path / "mlp_q.onnx"
    onnx.save(_float_mlp([(20, 32), (32, 16), (16, 6)], clip), float_path)
    quantize_dynamic(str(float_path), str(q_path), weight_type=getattr(QuantType, weight_type),
                     per_channel=per_channel)
    model = onnx.load(q_path)
    ir = import_onnx(model)
    assert [n.op for n in ir.nodes] == ["DynamicMatMul"] * 3
    assert ir.nodes[0].attrs["clamp"] == ((0.0, None) if clip is None else clip)
    for values in _extreme_inputs((5, 20))[2:]:
        x = values.reshape(5, 20).astype(np.float32)
        got = _sim(model, {"x": x})
        _assert_same(got, _ort(model, {"x": x}))
        _assert_same(got, _ort(model, {"x": x}, fused=False))   # the same roundings unfused


def test_orts_fused_forms_equal_ort(tmp_path):
    """A model saved after ORT's optimizations holds com.microsoft DynamicQuantizeMatMul (from
    the MLP) and MatMulIntegerToFloat (one DynamicQuantizeLinear read by two MatMuls)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tests.parity.ort_runner import optimized_graph
    float_path, q_path = tmp_path / "mlp.onnx", tmp_path / "mlp_q.onnx"
    onnx.save(_float_mlp([(12, 16), (16, 5)]), float_path)
    quantize_dynamic(str(float_path), str(q_path), weight_type=QuantType.QUInt8, per_channel=True)
    fused = optimized_graph(q_path, tmp_path / "fused.onnx")
    assert {n.op_type for n in fused.graph.node} == {"DynamicQuantizeMatMul", "Relu"}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y0", "y1")]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"])]
    inits = []
    for i, w_dtype in enumerate((np.int8, np.uint8)):
        lo, hi = np.iinfo(w_dtype).min, np.iinfo(w_dtype).max
        inits += [numpy_helper.from_array(RNG.integers(lo, hi + 1, (8, 4)).astype(w_dtype), f"w{i}"),
                  numpy_helper.from_array(RNG.uniform(0.01, 0.1, 4).astype(np.float32), f"s{i}"),
                  numpy_helper.from_array(RNG.integers(lo, hi + 1, 4).astype(w_dtype), f"z{i}"),
                  numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("MatMulIntegerToFloat", ["xq", f"w{i}", "xs", f"s{i}", "xz",
                                                               f"z{i}", f"b{i}"], [f"y{i}"],
                                      domain="com.microsoft"))
    graph = helper.make_graph(nodes, "g", [x], outs, inits)
    shared = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                     helper.make_opsetid("com.microsoft", 1)])
    for model, shape in ((fused, (4, 12)), (shared, (2, 3, 8))):
        assert {n.op for n in import_onnx(model).nodes} == {"DynamicMatMul"}
        for values in _extreme_inputs(shape)[2:]:
            feeds = {"x": values.reshape(shape).astype(np.float32)}
            _assert_same(_sim(model, feeds), _ort(model, feeds))


@pytest.mark.parametrize("weight_type", ["QUInt8", "QInt8"])
def test_quantize_dynamic_conv_equals_ort(tmp_path, weight_type):
    """quantize_dynamic's conv (DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul -> Add of the
    reshaped bias, then Relu; ORT runs it unfused): one IR op, 0 differing outputs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 7, 7])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 0, 1, 1], strides=[2, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    float_path, q_path = tmp_path / "conv.onnx", tmp_path / "conv_q.onnx"
    onnx.save(_model(nodes, [x], [y], inits, opset=13), float_path)
    quantize_dynamic(str(float_path), str(q_path), weight_type=getattr(QuantType, weight_type))
    model = onnx.load(q_path)
    assert [n.op for n in import_onnx(model).nodes] == ["DynamicConv"]
    for values in _extreme_inputs((2, 3, 7, 7))[2:]:
        feeds = {"x": values.reshape(2, 3, 7, 7).astype(np.float32)}
        _assert_same(_sim(model, feeds), _ort(model, feeds))


def test_mrq_sim_runs_a_dynamic_model(tmp_path, capfd):
    """`mrq sim` (per-layer fidelity included) on a quantize_dynamic MLP: exit 0, ORT's output."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    float_path, q_path = tmp_path / "mlp.onnx", tmp_path / "mlp_q.onnx"
    onnx.save(_float_mlp([(12, 16), (16, 5)]), float_path)
    quantize_dynamic(str(float_path), str(q_path), weight_type=QuantType.QInt8)
    x = RNG.standard_normal((3, 12)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    out = tmp_path / "out.npz"
    code = cli.main(["sim", str(q_path), "--profile", ORT_PROFILE, "--inputs",
                     str(tmp_path / "in.npz"), "-o", str(out)])
    assert code == 0, capfd.readouterr().err
    with np.load(out) as data:
        _assert_same([data["y"]], _ort(onnx.load(q_path), {"x": x}))


def test_dynamic_quantize_lstm_is_refused_by_name():
    """quantize_dynamic writes an LSTM as com.microsoft DynamicQuantizeLSTM: refused naming it,
    not at the float Transpose an exporter puts before it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 20, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("DynamicQuantizeLSTM", ["xt", "w", "r"], ["y"], name="lstm",
                              domain="com.microsoft", hidden_size=16)]
    model = _model(nodes, [x], [y])
    with pytest.raises(MrqError, match="'DynamicQuantizeLSTM' at node 'lstm'"):
        import_onnx(model)


def test_dynamic_ops_need_ort_float_arithmetic():
    with pytest.raises(MrqError, match="dynamic quantization is ONNX Runtime's float32"):
        Pipeline(import_onnx(_dql_model([None, 4])), "tflite-int8", "native")


def test_batched_qlinearmatmul_pairs_samples_with_b():
    """A constant B of A's rank holds one matrix per sample: the batch must be exactly that."""
    a = helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [2, 3, 5])
    inits = [numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.uint8(120), "z"),
             numpy_helper.from_array(RNG.integers(0, 256, (2, 4, 5)).astype(np.uint8), "b"),
             numpy_helper.from_array(np.float32(0.5), "ys")]
    node = helper.make_node("QLinearMatMul", ["a", "s", "z", "b", "s", "z", "ys", "z"], ["y"])
    model = _model([node], [a], [y], inits, opset=13)
    feeds = {"a": RNG.integers(0, 256, (2, 3, 4)).astype(np.uint8)}
    _assert_same(_sim(model, feeds), _ort(model, feeds))
    with pytest.raises(SimulatorError, match="one matrix for each of 2 samples; got a batch of 1"):
        _sim(model, {"a": feeds["a"][:1]})


# -------------------------------------------------------------- bad models: one line, exit 2
def _bad_models():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    xq = helper.make_tensor_value_info("xq", TensorProto.UINT8, [None, 4])
    zp = numpy_helper.from_array(np.uint8(3), "zp")

    def qdq(scale_input, block=None, scale=None):
        attrs = {"block_size": block, "axis": 1} if block else {}
        q = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], **attrs)
        d = helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], **attrs)
        inits = [zp] + ([numpy_helper.from_array(scale, "s")] if scale is not None else [])
        ins = [x] + ([helper.make_tensor_value_info("s", TensorProto.FLOAT, [1])] if scale_input else [])
        return _model([q, d], ins, [y], inits, opset=21)

    # 4 / 3 needs ceil = 2 blocks (the last one partial, valid ONNX): one scale is too few
    blocked = qdq(False, block=3, scale=np.full((1, 1), 0.1, np.float32))
    blocked.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full((1, 1), 3, np.uint8), "zp"))
    # three 4-bit codes need two bytes; one byte holds only two
    odd_int4 = TensorProto(name="w", data_type=TensorProto.INT4, dims=[3], raw_data=b"\x12")
    int4 = _model([helper.make_node("DequantizeLinear", ["xq", "s1"], ["y"]),
                   helper.make_node("DequantizeLinear", ["w", "s1"], ["w_real"])], [xq],
                  [y, helper.make_tensor_value_info("w_real", TensorProto.FLOAT, [3])],
                  [odd_int4, numpy_helper.from_array(np.float32(0.5), "s1")], opset=21)
    fp8 = helper.make_tensor_value_info("x8", TensorProto.FLOAT8E4M3FN, [None, 4])
    float8 = _model([helper.make_node("DequantizeLinear", ["x8", "s2"], ["y"])], [fp8], [y],
                    [numpy_helper.from_array(np.float32(0.5), "s2")], opset=21)
    return {"scale is a graph input": (qdq(True), "graph input 's'"),
            "block size does not divide the axis": (blocked, "block_size=3"),
            "int4 data with an odd element count": (int4, "'w'"),
            "float8 model": (float8, "FLOAT8E4M3FN")}


BAD = _bad_models()


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_quantized_models_are_one_line_errors(tmp_path, capfd, case):
    model, needle = BAD[case]
    path, out = tmp_path / "m.onnx", tmp_path / "out.npz"
    onnx.save(model, path)
    feeds = {i.name: np.ones((2, 4), helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
                             if i.type.tensor_type.elem_type != TensorProto.FLOAT8E4M3FN else np.float32)
             for i in model.graph.input}
    np.savez(tmp_path / "in.npz", **feeds)
    code = cli.main(["sim", str(path), "--profile", ORT_PROFILE, "--inputs",
                     str(tmp_path / "in.npz"), "-o", str(out), "-q"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert needle in err[0], err[0]
    assert not out.exists()
