"""DQ -> Conv (float initializer weight and bias) -> Q as ONNX Runtime 1.32 runs it: its
WeightBiasQuantization transform quantizes the weight (int8, per tensor, asymmetric) and the bias
(int32) itself and its QDQ fusion then makes the group a QLinearConv, an integer conv whose
u8 x s8 pair sums saturate to int16 on AVX2 hosts without VNNI (profile accumulator.pair_sums).
mrq imports that graph as the integer Conv ORT runs (mrq/onnx_import_float.py) with the
constants ORT folds (mrq/onnx_import_islands.py); where ORT leaves the group unfused it stays a
float Conv of the dequantized constants.

The folded constants are checked against the ones ORT writes into its optimized model; the
simulated conv under ``onnxruntime-cpu`` (exact sums) and ``onnxruntime-cpu-avx2`` (saturated
pair sums) against a plain integer reference of QLinearConv; the live ORT of this host under
this host's profile."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mrq.errors import MrqError
from mrq.onnx_export import export_onnx
from mrq.onnx_import import import_onnx
from mrq.onnx_import_islands import ort_cast_to_int32, ort_weight_bias_codes
from mrq.pipeline import Pipeline
from mrq.requant import requantize
from tests.ort_host import ORT_PROFILE
from tests.parity.ort_runner import session_options

F32 = np.float32
U8, S8 = TensorProto.UINT8, TensorProto.INT8
_NP = {U8: np.uint8, S8: np.int8}
XS, YS = F32(0.05), F32(0.03)


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _conv_model(w, b, geo, c, hw=(11, 9), xt=U8, yt=U8, xz=128, yz=128, mids=(), q_zp=True):
    """DQ(x) -> Conv(float w, b) -> [Relu/Clip ...] -> Q. ``mids``: (op, min, max) triples."""
    inits = [numpy_helper.from_array(XS, "xs"), numpy_helper.from_array(_NP[xt](xz), "xz"),
             numpy_helper.from_array(YS, "ys"), numpy_helper.from_array(_NP[yt](yz), "yz"),
             numpy_helper.from_array(w, "w")]
    conv_in = ["xf", "w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "b"))
        conv_in.append("b")
    k = w.shape[2]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
             helper.make_node("Conv", conv_in, ["y"], kernel_shape=[k, k], strides=[geo["stride"]] * 2,
                              pads=[geo["pad"]] * 4, dilations=[geo["dil"]] * 2, group=geo["group"])]
    last = "y"
    for i, (op, lo, hi) in enumerate(mids):
        ins = [last]
        if op == "Clip":
            for j, v in enumerate((lo, hi)):
                if v is not None:
                    inits.append(numpy_helper.from_array(F32(v), f"clip{i}_{j}"))
                ins.append("" if v is None else f"clip{i}_{j}")
        nodes.append(helper.make_node(op, ins, [f"m{i}"]))
        last = f"m{i}"
    nodes.append(helper.make_node("QuantizeLinear", [last, "ys", "yz"] if q_zp else [last, "ys"], ["q"]))
    graph = helper.make_graph(nodes, "g", [_vi("x", xt, [1, c, *hw])], [_vi("q", yt if q_zp else U8, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort_session(model, optimized=None):
    return ort.InferenceSession(model.SerializeToString(), session_options(optimized),
                                providers=["CPUExecutionProvider"])


def _ort_optimized(model, tmp_path) -> onnx.ModelProto:
    path = tmp_path / "optimized.onnx"
    _ort_session(model, path)
    return onnx.load(str(path))


def _ort_folded(model, tmp_path) -> dict:
    """The constants ORT's WeightBiasQuantization and constant folding wrote (by role)."""
    inits = {t.name: numpy_helper.to_array(t) for t in _ort_optimized(model, tmp_path).graph.initializer}
    role = {"w": "_weight_q", "ws": "_weight_scale", "wz": "_weight_zp", "b": "_bias_int32"}
    return {k: next(v for n, v in inits.items() if n.endswith(suffix)) for k, suffix in role.items()
            if any(n.endswith(suffix) for n in inits)}


def _imported_conv(model):
    graph = import_onnx(model)
    assert not [n for n in graph.nodes if n.op == "FloatConv"]
    (conv,) = [n for n in graph.nodes if n.op == "Conv"]
    w = graph.tensors[conv.inputs[1]]
    b = graph.tensors[conv.inputs[2]] if len(conv.inputs) > 2 else None
    return w, b


# ------------------------------------------------------------------ plain references
def _pair_saturated_sum(products: np.ndarray) -> int:
    """vpmaddubsw: adjacent products summed two at a time, each pair saturated to int16."""
    p = [int(v) for v in products] + [0] * (len(products) % 2)
    return sum(max(-32768, min(32767, p[i] + p[i + 1])) for i in range(0, len(p), 2))


def _qlinear_conv_reference(x, wq, wzp, bq, ws, geo, yz, saturate: bool) -> np.ndarray:
    """ORT's QLinearConv (u8 activations, s8 weights, u8 output) written out: the raw dot
    product of codes in MLAS's im2col order (kh, kw, input channel) per group, pair-saturated
    when ``saturate`` (not for a depthwise conv, whose kernel widens first); the zero points'
    corrections from exact row and column sums; ``f32(f32(acc + bias) * f32(f32(xs * ws) / ys))``
    clamped, rounded half to even, plus the output zero point."""
    _, c, h, w_ = x.shape
    m, cg, kh, kw = wq.shape
    group, s, p, d = geo["group"], geo["stride"], geo["pad"], geo["dil"]
    mg = m // group
    depthwise = cg == 1 and mg == 1
    xz = 128
    xp = np.full((c, h + 2 * p, w_ + 2 * p), xz, np.int64)
    xp[:, p:p + h, p:p + w_] = x[0]
    oh, ow = (h + 2 * p - d * (kh - 1) - 1) // s + 1, (w_ + 2 * p - d * (kw - 1) - 1) // s + 1
    mult = F32(F32(XS * F32(ws)) / YS)
    y = np.zeros((1, m, oh, ow), np.uint8)
    for g in range(group):
        for i in range(oh):
            for j in range(ow):
                col = [int(xp[g * cg + ci, i * s + a * d, j * s + e * d])
                       for a in range(kh) for e in range(kw) for ci in range(cg)]
                for o in range(mg):
                    oc = g * mg + o
                    wv = [int(wq[oc, ci, a, e]) for a in range(kh) for e in range(kw) for ci in range(cg)]
                    prods = np.array([u * v for u, v in zip(col, wv)], np.int64)
                    raw = _pair_saturated_sum(prods) if saturate and not depthwise else int(prods.sum())
                    acc = raw - wzp * sum(col) - xz * sum(wv) + len(col) * xz * wzp
                    v = F32(F32(acc + int(bq[oc])) * mult)
                    v = min(max(v, F32(0 - yz)), F32(255 - yz))
                    y[0, oc, i, j] = int(np.rint(v)) + yz
    return y


GEOMETRIES = [   # c, m, k, stride, pad, dil, group (tests/onnx/test_float_matmul_conv.py's)
    (3, 8, 3, 1, 1, 1, 1),
    (20, 16, 3, 2, 1, 1, 1),
    (32, 32, 3, 1, 2, 2, 2),
    (16, 16, 3, 1, 1, 1, 16),   # depthwise: exact on every host
    (144, 16, 1, 1, 0, 1, 1),
    (12, 12, 3, 1, 1, 1, 3),
]


@pytest.mark.parametrize("c,m,k,stride,pad,dil,group", GEOMETRIES)
@pytest.mark.parametrize("signs", ["mixed", "positive"])
def test_float_weight_conv_is_orts_integer_conv(tmp_path, c, m, k, stride, pad, dil, group, signs):
    """The imported Conv holds ORT's folded int8 weight and int32 bias; simulated under
    ``onnxruntime-cpu`` it equals the exact integer reference, under ``onnxruntime-cpu-avx2``
    the pair-saturated one (which differs from the exact one on every non-depthwise case), and
    under this host's profile the live ORT, for random codes and for codes of only 0 and 255
    (all-positive weights: zero point -128, the largest pair sums)."""
    rng = np.random.default_rng(c * 100 + m + (signs == "positive"))
    geo = dict(stride=stride, pad=pad, dil=dil, group=group)
    w = rng.standard_normal((m, c // group, k, k)).astype(F32)
    if signs == "positive":
        w = np.abs(w)
    b = rng.standard_normal(m).astype(F32)
    model = _conv_model(w, b, geo, c)
    folded = _ort_folded(model, tmp_path)
    wt, bt = _imported_conv(model)
    assert np.array_equal(wt.data, folded["w"]) and wt.data.dtype == np.int8
    assert np.array_equal(bt.data.reshape(-1), folded["b"])
    assert wt.qparams.scale[0] == folded["ws"] and wt.qparams.zero_point[0] == int(folded["wz"])
    depthwise = c == group == m
    feeds = [rng.integers(0, 256, (1, c, 11, 9), dtype=np.uint8),
             (rng.integers(0, 2, (1, c, 11, 9)) * 255).astype(np.uint8)]
    sess = _ort_session(model)
    graph = import_onnx(model)
    for x in feeds:
        exact = _qlinear_conv_reference(x, folded["w"], int(folded["wz"]), folded["b"], folded["ws"], geo, 128,
                                        saturate=False)
        paired = _qlinear_conv_reference(x, folded["w"], int(folded["wz"]), folded["b"], folded["ws"], geo, 128,
                                         saturate=True)
        assert depthwise or int(np.sum(exact != paired)) > 0
        for profile, want in (("onnxruntime-cpu", exact), ("onnxruntime-cpu-avx2", paired)):
            got = Pipeline(graph, profile, "native").run({"x": x}).outputs["q"]
            assert int(np.sum(got != want)) == 0, profile
        got = Pipeline(graph, ORT_PROFILE, "native").run({"x": x}).outputs["q"]
        assert int(np.sum(got != sess.run(None, {"x": x})[0])) == 0


@pytest.mark.parametrize("case", ["random", "positive", "negative", "zero", "constant", "huge_bias",
                                  "huge_negative_bias", "tiny_weights", "no_bias"])
def test_weight_bias_codes_equal_orts_folding(tmp_path, case):
    """ort_weight_bias_codes against the constants ORT's optimizer folds (its optimized model):
    range widened to 0, the zero point rounded half to even, a constant tensor (scale 1), biases
    beyond int32 (ORT's float -> int32 Cast gives -2**31 on x86, positive ones too)."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((6, 4, 3, 3)).astype(F32)
    b = rng.standard_normal(6).astype(F32)
    if case == "positive":
        w = np.abs(w) + F32(0.5)
    elif case == "negative":
        w = -np.abs(w) - F32(0.5)
    elif case == "zero":
        w = np.zeros_like(w)
    elif case == "constant":
        w = np.full_like(w, F32(0.37))
    elif case == "huge_bias":
        b = np.array([1e12, -1e12, 3e9, -3e9, 2.2e9 * 0, 1.0], F32)
    elif case == "huge_negative_bias":
        b = (-np.abs(b) * F32(1e10)).astype(F32)
    elif case == "tiny_weights":
        w = (w * F32(1e-30)).astype(F32)
    model = _conv_model(w, None if case == "no_bias" else b, dict(stride=1, pad=1, dil=1, group=1), 4, hw=(5, 5))
    folded = _ort_folded(model, tmp_path)
    got = ort_weight_bias_codes(w, None if case == "no_bias" else b, float(XS))
    assert np.array_equal(got.weight_codes, folded["w"]) and got.weight_codes.dtype == np.int8
    assert got.weight_scale == folded["ws"] and got.weight_zp == int(folded["wz"])
    if case == "no_bias":
        assert got.bias_codes is None and "b" not in folded
    else:
        assert np.array_equal(got.bias_codes, folded["b"]) and got.bias_codes.dtype == np.int32


def test_cast_to_int32_against_a_plain_reference():
    """ort_cast_to_int32 (x86's cvttps2dq) against Python: truncation inside the int32 range,
    -2**31 for NaN, infinities and everything outside it."""
    values = np.array([0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.0 ** 31 - 128, -2.0 ** 31, 2.0 ** 31, -2.0 ** 31 - 256,
                       1e20, -1e20, np.inf, -np.inf, np.nan, 123456.7, -123456.7], F32)
    values = np.concatenate([values, np.random.default_rng(3).standard_normal(200).astype(F32) * F32(3e9)])
    want = [int(v) if np.isfinite(v) and -2 ** 31 <= float(v) < 2 ** 31 else -2 ** 31 for v in values.tolist()]
    got = ort_cast_to_int32(values)
    assert got.dtype == np.int32 and got.tolist() == want


# ------------------------------------------------------------------ when ORT fuses
FUSION_CASES = {   # name: _conv_model keywords
    "u8": {},
    "s8": dict(xt=S8, yt=S8, xz=3, yz=-5),
    "u8_in_s8_out": dict(yt=S8, yz=0),
    "s8_in_u8_out": dict(xt=S8, xz=0),
    "no_q_zero_point": dict(q_zp=False),
    "relu_zp_qmin": dict(yz=0, mids=[("Relu", None, None)]),
    "relu_zp_mid": dict(mids=[("Relu", None, None)]),
    "two_relus_zp_qmin": dict(yz=0, mids=[("Relu", None, None)] * 2),
    "relu_no_q_zero_point": dict(q_zp=False, mids=[("Relu", None, None)]),
    "clip_wide": dict(mids=[("Clip", -10.0, 10.0)]),
    "clip_no_max": dict(mids=[("Clip", -10.0, None)]),
    "clip_no_max_no_q_zero_point": dict(q_zp=False, mids=[("Clip", -10.0, None)]),
    "clip_narrow": dict(mids=[("Clip", -1.0, 1.0)]),
    "clip_within_half_a_step": dict(mids=[("Clip", -128 * 0.03 + 0.01, 127 * 0.03 - 0.01)]),
    "clip_within_half_a_step_no_q_zero_point": dict(q_zp=False, mids=[("Clip", -0.01, 255 * 0.03 - 0.01)]),
    "relu_then_clip": dict(yz=0, mids=[("Relu", None, None), ("Clip", -1.0, 100.0)]),
    "clip_then_relu_zp_mid": dict(mids=[("Clip", -100.0, 100.0), ("Relu", None, None)]),
    # FuseReluClip makes one Clip(0, 7.64) of the two: not within eps of the grid's 7.65, but Q
    # makes it redundant (RNE(254.67) = 255)
    "relu_then_clip_redundant_by_q": dict(yz=0, mids=[("Relu", None, None), ("Clip", -1.0, 7.64)]),
    "relu_then_clip_zp_mid": dict(mids=[("Relu", None, None), ("Clip", -1.0, 100.0)]),
    "clip_then_clip_redundant_by_q": dict(yz=0, mids=[("Clip", -100.0, 100.0), ("Clip", -1.0, 7.64)]),
}


@pytest.mark.parametrize("name", sorted(FUSION_CASES))
def test_integer_conv_exactly_where_ort_fuses(tmp_path, name):
    """The importer makes the integer Conv exactly where ORT's optimized model holds a
    QLinearConv (same 8-bit type in and out, every Relu/Clip before Q one that ReluQuantFusion /
    ClipQuantFusion drop or Q makes redundant), else a float Conv of the dequantized constants;
    both equal the live ORT."""
    kw = FUSION_CASES[name]
    rng = np.random.default_rng(sorted(FUSION_CASES).index(name))
    w = rng.standard_normal((6, 8, 3, 3)).astype(F32)
    model = _conv_model(w, rng.standard_normal(6).astype(F32), dict(stride=1, pad=1, dil=1, group=1), 8,
                        hw=(7, 6), **kw)
    fused = "QLinearConv" in {n.op_type for n in _ort_optimized(model, tmp_path).graph.node}
    ops = [n.op for n in import_onnx(model).nodes]
    assert ("Conv" in ops and "FloatConv" not in ops) == fused, ops
    lo, hi = (0, 256) if kw.get("xt", U8) == U8 else (-128, 128)
    x = rng.integers(lo, hi, (1, 8, 7, 6)).astype(_NP[kw.get("xt", U8)])
    got = Pipeline(import_onnx(model), ORT_PROFILE, "native").run({"x": x}).outputs["q"]
    assert int(np.sum(got != _ort_session(model).run(None, {"x": x})[0])) == 0


def test_float_weight_conv_written_back_runs_the_same_in_ort():
    """``mrq requant``'s writer (mrq.onnx_export) gives the integer Conv as a QDQ Conv of ORT's
    own constants: ORT runs the file as it ran the float-weight original, code for code, and the
    file imports to the same Conv."""
    rng = np.random.default_rng(11)
    geo = dict(stride=1, pad=1, dil=1, group=2)
    w = rng.standard_normal((8, 6, 3, 3)).astype(F32)
    model = _conv_model(w, rng.standard_normal(8).astype(F32), geo, 12, hw=(9, 7))
    again = export_onnx(import_onnx(model))
    assert {"Conv", "DequantizeLinear"} <= {n.op_type for n in again.graph.node}
    x = rng.integers(0, 256, (1, 12, 9, 7), dtype=np.uint8)
    assert np.array_equal(_ort_session(again).run(None, {"x": x})[0], _ort_session(model).run(None, {"x": x})[0])
    (w0, b0), (w1, b1) = _imported_conv(model), _imported_conv(again)
    assert np.array_equal(w0.data, w1.data) and np.array_equal(b0.data, b1.data)
    got = Pipeline(import_onnx(again), ORT_PROFILE, "native").run({"x": x}).outputs["q"]
    assert np.array_equal(got, _ort_session(model).run(None, {"x": x})[0])
    # re-quantized for an NPU profile (weights re-gridded from ORT's codes), it still writes out
    new, _ = requantize(import_onnx(model), "nna-sym8")
    assert "Conv" in {n.op_type for n in export_onnx(new).graph.node}


# ------------------------------------------------------------------ a float bias alone
@pytest.mark.parametrize("weights,relu_zp", [("s8", None), ("s8_per_channel", None), ("u8", None),
                                             ("s8", 0), ("s8", 128), ("s8_per_channel", 128)])
def test_quantized_weight_with_float_bias_is_orts_conv(tmp_path, weights, relu_zp):
    """DQ -> Conv (DequantizeLinear weight, float bias) -> [Relu] -> Q (ORT's quantizer with
    ``QuantizeBias: False``): WeightBiasQuantization quantizes the bias alone, on
    ``f32(x_scale * w_scale)`` per output channel for a per-channel weight; the importer holds
    ORT's int32 codes, makes the integer Conv where ORT fuses a QLinearConv and the float Conv
    where it does not (a Relu that Q does not make redundant), and equals the live ORT."""
    rng = np.random.default_rng(len(weights) * 10 + (relu_zp or 1))
    c, m = 16, 8
    per_channel = weights.endswith("per_channel")
    if weights == "u8":
        wq, wz = rng.integers(0, 256, (m, c, 3, 3)).astype(np.uint8), np.uint8(120)
    else:
        wq = rng.integers(-128, 128, (m, c, 3, 3)).astype(np.int8)
        wz = np.zeros(m, np.int8) if per_channel else np.int8(0)
    ws = (rng.random(m) * 0.02 + 0.001).astype(F32) if per_channel else F32(0.01)
    yz = 128 if relu_zp is None else relu_zp
    inits = [numpy_helper.from_array(XS, "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(YS, "ys"), numpy_helper.from_array(np.uint8(yz), "yz"),
             numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(np.asarray(ws), "ws"),
             numpy_helper.from_array(np.asarray(wz), "wz"),
             numpy_helper.from_array(rng.standard_normal(m).astype(F32), "b")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wf"], axis=0),
             helper.make_node("Conv", ["xf", "wf", "b"], ["y"], kernel_shape=[3, 3], pads=[1] * 4)]
    last = "y"
    if relu_zp is not None:
        nodes.append(helper.make_node("Relu", ["y"], ["r"]))
        last = "r"
    nodes.append(helper.make_node("QuantizeLinear", [last, "ys", "yz"], ["q"]))
    model = helper.make_model(helper.make_graph(nodes, "g", [_vi("x", U8, [1, c, 9, 8])], [_vi("q", U8, None)],
                                                inits), opset_imports=[helper.make_opsetid("", 17)])
    optimized = _ort_optimized(model, tmp_path)
    fused = "QLinearConv" in {n.op_type for n in optimized.graph.node}
    assert fused == (relu_zp != 128)
    (bias_codes,) = [numpy_helper.to_array(t) for t in optimized.graph.initializer if t.name.endswith("_bias_int32")]
    graph = import_onnx(model)
    ops = [n.op for n in graph.nodes]
    if fused:
        (conv,) = [n for n in graph.nodes if n.op == "Conv"]
        assert "FloatConv" not in ops and np.array_equal(graph.tensors[conv.inputs[2]].data, bias_codes)
    else:
        assert "FloatConv" in ops and "Conv" not in ops
    for x in (rng.integers(0, 256, (1, c, 9, 8), dtype=np.uint8),
              (rng.integers(0, 2, (1, c, 9, 8)) * 255).astype(np.uint8)):
        got = Pipeline(graph, ORT_PROFILE, "native").run({"x": x}).outputs["q"]
        assert int(np.sum(got != _ort_session(model).run(None, {"x": x})[0])) == 0


# ------------------------------------------------------------------ Gemm
GEMM_YS = F32(0.25)   # wide enough that outputs mostly stay off the clamps at 64 products


def _gemm_model(rng, transB=0, bias=True, dq_weight=False, relu_zp=None, yt=U8, k=64, n=24, rows=3,
                positive=False):
    """DQ(x) -> Gemm (float weight, or a per-channel DequantizeLinear one; float bias) -> [Relu] -> Q."""
    w = rng.standard_normal((n, k) if transB else (k, n)).astype(F32)
    if positive:
        w = np.abs(w)
    yz = 128 if relu_zp is None else relu_zp
    inits = [numpy_helper.from_array(XS, "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(GEMM_YS, "ys"),
             numpy_helper.from_array(_NP[yt](yz if yt == U8 else 0), "yz")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"])]
    if dq_weight:
        inits += [numpy_helper.from_array(rng.integers(-128, 128, w.shape).astype(np.int8), "wq"),
                  numpy_helper.from_array((rng.random(n) * 0.02 + 0.001).astype(F32), "ws"),
                  numpy_helper.from_array(np.zeros(n, np.int8), "wz")]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0 if transB else 1))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    ins = ["xf", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(F32), "b"))
        ins.append("b")
    nodes.append(helper.make_node("Gemm", ins, ["y"], transB=transB))
    last = "y"
    if relu_zp is not None:
        nodes.append(helper.make_node("Relu", ["y"], ["r"]))
        last = "r"
    nodes.append(helper.make_node("QuantizeLinear", [last, "ys", "yz"], ["q"]))
    graph = helper.make_graph(nodes, "g", [_vi("x", U8, [rows, k])], [_vi("q", yt, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _qgemm_reference(a, wq, wzp, bq, ws, saturate: bool) -> np.ndarray:
    """ORT's QGemm (u8 x s8, per-tensor weight) written out: raw dot products of codes along
    K (pair-saturated when ``saturate``), exact zero-point corrections, the conv's requantization."""
    rows, depth = a.shape
    mult = F32(F32(XS * F32(ws)) / GEMM_YS)
    y = np.zeros((rows, wq.shape[1]), np.uint8)
    for r in range(rows):
        col = [int(v) for v in a[r]]
        for j in range(wq.shape[1]):
            wv = [int(v) for v in wq[:, j]]
            prods = np.array([u * v for u, v in zip(col, wv)], np.int64)
            raw = _pair_saturated_sum(prods) if saturate else int(prods.sum())
            acc = raw - wzp * sum(col) - 128 * sum(wv) + depth * 128 * wzp
            v = min(max(F32(F32(acc + int(bq[j])) * mult), F32(-128)), F32(127))
            y[r, j] = int(np.rint(v)) + 128
    return y


@pytest.mark.parametrize("transB,positive", [(0, False), (1, False), (0, True)])
def test_float_weight_gemm_is_orts_qgemm(tmp_path, transB, positive):
    """DQ -> Gemm (float weight and bias) -> Q: ORT quantizes weight and bias as for a Conv and
    runs a QGemm; the imported integer Gemm holds its constants and, under ``onnxruntime-cpu``
    and ``onnxruntime-cpu-avx2``, equals the exact and the pair-saturated integer reference
    (which differ), under this host's profile the live ORT."""
    rng = np.random.default_rng(transB * 2 + positive)
    model = _gemm_model(rng, transB=transB, positive=positive)
    folded = _ort_folded(model, tmp_path)
    graph = import_onnx(model)
    (gemm,) = [n for n in graph.nodes if n.op == "Gemm"]
    wq = folded["w"].T if transB else folded["w"]   # the IR holds [K, N]
    assert np.array_equal(graph.tensors[gemm.inputs[1]].data, wq)
    assert np.array_equal(graph.tensors[gemm.inputs[2]].data.reshape(-1), folded["b"])
    sess = _ort_session(model)
    for x in (rng.integers(0, 256, (3, 64), dtype=np.uint8), (rng.integers(0, 2, (3, 64)) * 255).astype(np.uint8)):
        exact, paired = (_qgemm_reference(x, wq, int(folded["wz"]), folded["b"], folded["ws"], saturate=s)
                         for s in (False, True))
        assert int(np.sum(exact != paired)) > 0
        for profile, want in (("onnxruntime-cpu", exact), ("onnxruntime-cpu-avx2", paired)):
            got = Pipeline(graph, profile, "native").run({"x": x}).outputs["q"]
            assert int(np.sum(got != want)) == 0, profile
        got = Pipeline(graph, ORT_PROFILE, "native").run({"x": x}).outputs["q"]
        assert int(np.sum(got != sess.run(None, {"x": x})[0])) == 0


GEMM_CASES = {
    "no_bias": dict(bias=False),
    "one_row": dict(rows=1),
    "relu_zp_qmin": dict(relu_zp=0),
    "relu_zp_mid": dict(relu_zp=128),   # FusedGemm in float: mrq refuses (no float Gemm)
    "u8_in_s8_out": dict(yt=S8),        # float Gemm: refused
    "per_channel_weight_float_bias": dict(dq_weight=True),
    "per_channel_weight_float_bias_transB": dict(dq_weight=True, transB=1),
}


@pytest.mark.parametrize("name", sorted(GEMM_CASES))
def test_gemm_imports_where_ort_makes_a_qgemm(tmp_path, name):
    """The integer Gemm exactly where ORT's optimized model holds a QGemm (equal to the live
    ORT), mrq's one-line refusal of a float Gemm where it does not."""
    kw = GEMM_CASES[name]
    rng = np.random.default_rng(sorted(GEMM_CASES).index(name) + 50)
    model = _gemm_model(rng, **kw)
    fused = "QGemm" in {n.op_type for n in _ort_optimized(model, tmp_path).graph.node}
    assert fused == (name not in ("relu_zp_mid", "u8_in_s8_out"))
    if not fused:
        with pytest.raises(MrqError, match="Gemm"):
            import_onnx(model)
        return
    assert "Gemm" in [n.op for n in import_onnx(model).nodes]
    rows = kw.get("rows", 3)
    for x in (rng.integers(0, 256, (rows, 64), dtype=np.uint8), (rng.integers(0, 2, (rows, 64)) * 255).astype(np.uint8)):
        got = Pipeline(import_onnx(model), ORT_PROFILE, "native").run({"x": x}).outputs["q"]
        assert int(np.sum(got != _ort_session(model).run(None, {"x": x})[0])) == 0


@pytest.mark.parametrize("transB", [0, 1])
def test_float_weight_gemm_written_back_runs_the_same_in_ort(transB):
    """The integer Gemm of ORT's constants written back (mrq.onnx_export) is a QDQ Gemm that ORT
    runs code for code as the float-weight original."""
    rng = np.random.default_rng(20 + transB)
    model = _gemm_model(rng, transB=transB)
    again = export_onnx(import_onnx(model))
    x = rng.integers(0, 256, (3, 64), dtype=np.uint8)
    assert np.array_equal(_ort_session(again).run(None, {"x": x})[0], _ort_session(model).run(None, {"x": x})[0])
