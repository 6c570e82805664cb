"""Which ONNX Runtime ops sum u8 x s8 products in saturating int16 pairs on this host, and in
which order: every MLAS path ORT 1.32 takes for an integer conv or matmul, on inputs that
saturate (255 x 127 pairs), through mrq (import, lowering under this host's profile, simulator)
against live ORT. On a host without VNNI (profile onnxruntime-cpu-avx2 / -avx512) the u8s8
paths are pair-saturated and the others exact; on a VNNI host all are exact, and the same test
checks that.

Paths (onnxruntime/core/providers/cpu/quantization/qlinearconv.cc, MLAS platform.cpp):
- QLinearConv u8s8, W_zp 0, C % 4 == 0, M >= 16, M % 8 == 0, group 1: MlasConvSym (AVX2 kernel:
  input channels in groups of 4 per tap);
- other QLinearConv u8s8 (odd C, W_zp != 0, grouped): im2col (kernel row, column, channel) and
  QGEMM U8S8 (K packed in 4s);
- depthwise QLinearConv (one input and one output channel per group) with one weight zero
  point: MlasConvSymDepthwise or MlasConvDepthwise, exact; with per-channel weight zero points
  that differ, ORT 1.32 runs the groups through QGEMM (measured);
- ConvInteger: the weight is QGEMM's A operand (s8 x u8): exact;
- MatMulInteger / QLinearMatMul / QGemm u8s8 (constant or run-time B, M = 1 GEMV too): QGEMM;
- u8u8 everywhere: the U8U8 kernels widen to int16 first: exact.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mrq.hw_profile import load_profile
from mrq.onnx_import import import_onnx
from mrq.pipeline import Pipeline
from tests.ort_host import ORT_PROFILE
from tests.parity.ort_runner import session_options

ort = pytest.importorskip("onnxruntime")
TYPES = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}


def _model(nodes, feeds, inits, out_type):
    inputs = [helper.make_tensor_value_info(k, TYPES[str(v.dtype)], list(v.shape))
              for k, v in feeds.items()]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", out_type, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _sim(model, feeds, profile=ORT_PROFILE):
    return Pipeline(import_onnx(model), profile, "native").run(feeds).outputs["y"]


def _run_both(nodes, feeds, inits, out_type):
    """(mrq's output under this host's profile, ORT's, the model)."""
    model = _model(nodes, feeds, inits, out_type)
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    return _sim(model, feeds), sess.run(None, feeds)[0], model


def _codes(rng, dtype, shape):
    """Mostly the saturating corners (255 x 127, 255 x -128), some random codes."""
    if dtype == "uint8":
        corner = rng.choice(np.array([250, 255], np.uint8), shape)
        rand = rng.integers(0, 256, shape).astype(np.uint8)
    else:
        corner = rng.choice(np.array([-128, -100, 100, 127], np.int8), shape)
        rand = rng.integers(-128, 128, shape).astype(np.int8)
    return np.where(rng.random(shape) < 0.8, corner, rand)


def _saturating(x_dtype, w_dtype, depthwise=False):
    return (x_dtype, w_dtype) == ("uint8", "int8") and not depthwise and \
        load_profile(ORT_PROFILE).accumulator.pair_sums == "saturate_int16"


CONV_CASES = [  # (c_in, c_out, group, kernel, pads, w_zp: one, or one per channel), ORT's path
    (8, 16, 1, 3, 1, 0),     # MlasConvSym
    (8, 16, 1, 1, 0, 0),     # MlasConvSym, direct input
    (8, 16, 1, 3, 1, 5),     # W_zp != 0: QGEMM
    (3, 16, 1, 3, 1, 0),     # C % 4 != 0: QGEMM, pairs across taps
    (5, 8, 1, 3, 0, 0),      # M < 16: QGEMM
    (8, 32, 2, 3, 1, 0),     # grouped: QGEMM per group
    (16, 16, 16, 3, 1, 0),   # depthwise, 16 groups: MlasConvSymDepthwise
    (17, 17, 17, 3, 1, 0),   # depthwise: MlasConvDepthwise
    (4, 8, 4, 3, 1, 0),      # two outputs per group: QGEMM per group
    (8, 8, 8, 3, 1, (-88, 127, -31, 5, 0, 1, 2, 3)),   # depthwise, zero points differ: QGEMM
    (16, 16, 16, 3, 1, (3,) * 16),                       # depthwise, one zero point: exact
]


@pytest.mark.parametrize("w_dtype", ["int8", "uint8"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_qlinear_conv_paths_equal_ort(case, w_dtype):
    c_in, c_out, group, k, pad, wzp = case
    rng = np.random.default_rng(c_in * 100 + c_out + k)
    x = _codes(rng, "uint8", (2, c_in, 6, 5))
    w = _codes(rng, w_dtype, (c_out, c_in // group, k, k))
    # a fine output grid: a pair's saturation moves the output by many codes
    wzp = np.broadcast_to(np.asarray(wzp, np.int64), (c_out,)) + (w_dtype == "uint8") * 128
    inits = {"xs": np.array(0.5, np.float32), "xzp": np.array(131, np.uint8), "w": w,
             "ws": np.full(c_out, 0.25, np.float32), "wzp": wzp.astype(np.dtype(w_dtype)),
             "ys": np.array(400.0, np.float32), "yzp": np.array(128, np.uint8),
             "b": rng.integers(-5000, 5000, c_out).astype(np.int32)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xzp", "w", "ws", "wzp", "ys", "yzp", "b"],
                            ["y"], pads=[pad] * 4, group=group)
    got, want, model = _run_both([node], {"x": x}, inits, TensorProto.UINT8)
    np.testing.assert_array_equal(got, want)
    # the inputs saturate pairs: the exact sums (profile onnxruntime-cpu) differ from ORT's
    # exactly where this host's profile saturates them
    exact = _sim(model, {"x": x}, "onnxruntime-cpu")
    depthwise = c_in == c_out == group and len(set(wzp.tolist())) == 1
    assert np.array_equal(exact, want) != _saturating("uint8", w_dtype, depthwise)


@pytest.mark.parametrize("w_dtype", ["int8", "uint8"])
def test_conv_integer_is_exact_and_equals_ort(w_dtype):
    rng = np.random.default_rng(3)
    x = _codes(rng, "uint8", (1, 8, 5, 5))
    w = _codes(rng, w_dtype, (16, 8, 3, 3))
    node = helper.make_node("ConvInteger", ["x", "w", "xzp", "wzp"], ["y"], pads=[1, 1, 1, 1])
    inits = {"w": w, "xzp": np.array(9, np.uint8), "wzp": np.array(0, np.dtype(w_dtype))}
    got, want, _ = _run_both([node], {"x": x}, inits, TensorProto.INT32)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("b_dtype", ["int8", "uint8"])
@pytest.mark.parametrize("b_const", [True, False])
@pytest.mark.parametrize("m,k", [(1, 40), (3, 7), (4, 33)])
def test_matmul_integer_equals_ort(m, k, b_const, b_dtype):
    rng = np.random.default_rng(m * 10 + k)
    a = _codes(rng, "uint8", (m, k))
    b = _codes(rng, b_dtype, (k, 6))
    inits = {"azp": np.array(7, np.uint8), "bzp": np.array(3, np.dtype(b_dtype))}
    feeds = {"a": a}
    if b_const:
        inits["b"] = b
    else:
        feeds["b"] = b
    node = helper.make_node("MatMulInteger", ["a", "b", "azp", "bzp"], ["y"])
    got, want, _ = _run_both([node], feeds, inits, TensorProto.INT32)
    np.testing.assert_array_equal(got, want)
    ideal = (a.astype(np.int64) - 7) @ (b.astype(np.int64) - 3)
    assert np.array_equal(ideal, want) != _saturating("uint8", b_dtype)


@pytest.mark.parametrize("b_dtype", ["int8", "uint8"])
def test_qlinear_matmul_equals_ort(b_dtype):
    rng = np.random.default_rng(8)
    a = _codes(rng, "uint8", (2, 3, 24))
    b = _codes(rng, b_dtype, (24, 8))
    inits = {"as": np.array(0.5, np.float32), "azp": np.array(100, np.uint8), "b": b,
             "bs": np.array(0.25, np.float32), "bzp": np.array(0, np.dtype(b_dtype)),
             "ys": np.array(300.0, np.float32), "yzp": np.array(128, np.uint8)}
    node = helper.make_node("QLinearMatMul", ["a", "as", "azp", "b", "bs", "bzp", "ys", "yzp"],
                            ["y"])
    got, want, model = _run_both([node], {"a": a}, inits, TensorProto.UINT8)
    np.testing.assert_array_equal(got, want)
    exact = _sim(model, {"a": a}, "onnxruntime-cpu")
    assert np.array_equal(exact, want) != _saturating("uint8", b_dtype)


@pytest.mark.parametrize("clamp,zero_point,fused", [
    (None, 0, True),            # Relu, Q's zero point at the type's minimum: redundant
    (None, 3, False),           # Relu that Q does not hold
    ((0.0, 1000.0), 0, True),   # Clip covering Q's range
    ((0.4, 1000.0), 0, True),   # 0.4 / 0.8 = 0.5 quantizes (RNE) to code 0: dropped
    ((0.41, 1000.0), 0, False),
    ((-2.4, 1000.0), 3, True),  # -3 + 3 = 0
    ((-2.0, 1000.0), 3, False),  # RNE(-2.5) + 3 = 1
    ((0.0, 203.6), 0, False),   # RNE(254.5) = 254
    ((0.0, 203.61), 0, True),
])
def test_a_clamp_ort_keeps_in_float_keeps_the_sums_exact(clamp, zero_point, fused):
    """DQ -> Conv -> Relu/Clip -> Q: ORT drops a clamp Q already holds and fuses a QLinearConv
    (pair sums); otherwise it runs the float Conv + clamp, whose sums never saturate
    (mrq/ort_qdq_fusion.py, the importer's ``ort_float`` mark)."""
    _check_clamp_chain([clamp], zero_point, fused)


@pytest.mark.parametrize("chain,zero_point,fused", [
    # FuseReluClip merges a Relu into the Clip after it; the Clip alone is then made
    # redundant by Q (RNE(254.51) = 255), though not dropped by ClipQuantFusion (not within eps)
    ([None, (0.0, 203.61)], 0, True),
    ([None, (0.0, 203.6)], 0, False),      # RNE(254.5) = 254: the merged Clip is not redundant
    ([None, (-5.0, 203.61)], 3, False),    # merged to Clip(0, ...): 0 quantizes to code 3
    # no Clip-Clip fusion: ClipQuantFusion keeps the last (not within eps), two clamps stay
    ([(0.0, 1000.0), (0.0, 203.61)], 0, False),
    # the last Clip reaches past the grid: dropped, then the first is made redundant by Q
    ([(0.0, 203.61), (0.0, 1000.0)], 0, True),
    ([(0.0, 203.61), None], 0, True),      # ReluQuantFusion drops the Relu (zero point 0)
    ([(-5.0, 1000.0), None], 3, False),    # a Relu Q does not hold: two clamps stay
    ([None, None], 0, True),
])
def test_clamp_chains_follow_orts_fusions(chain, zero_point, fused):
    """Chains of Relu/Clip between the Conv and Q: ORT's FuseReluClip, ReluQuantFusion /
    ClipQuantFusion and the QDQ selector's one-clamp rule decide together whether the Conv is
    an integer kernel (pair sums) or a float one."""
    _check_clamp_chain(chain, zero_point, fused)


def _check_clamp_chain(chain, zero_point, fused):
    """``chain``: Relu (None) or Clip (lo, hi) nodes between the Conv and Q, in order."""
    rng = np.random.default_rng(4)
    x = rng.uniform(3.0, 4.0, (1, 8, 6, 6)).astype(np.float32)   # codes near 255
    w = rng.choice(np.array([-128, 127], np.int8), (16, 8, 3, 3))
    inits = {"s": np.array(4.0 / 255, np.float32), "z": np.array(0, np.uint8), "w": w,
             "ws": np.array(0.01, np.float32), "wz": np.array(0, np.int8),
             "s2": np.array(0.8, np.float32), "z2": np.array(zero_point, np.uint8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["c0"], pads=[1, 1, 1, 1])]
    for i, clamp in enumerate(chain):
        if clamp is None:
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"c{i + 1}"]))
        else:
            nodes.append(helper.make_node("Clip", [f"c{i}", f"lo{i}", f"hi{i}"], [f"c{i + 1}"]))
            inits.update({f"lo{i}": np.array(clamp[0], np.float32),
                          f"hi{i}": np.array(clamp[1], np.float32)})
    nodes.append(helper.make_node("QuantizeLinear", [f"c{len(chain)}", "s2", "z2"], ["y"]))
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]),
        opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(_sim(model, {"x": x}), want)
    exact = _sim(model, {"x": x}, "onnxruntime-cpu")
    assert np.array_equal(exact, want) != (fused and _saturating("uint8", "int8"))
