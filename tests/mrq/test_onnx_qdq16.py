"""16-bit QDQ models as ONNX Runtime executes them: ORT fuses QDQ groups into integer kernels
only for 8-bit activations, so a Conv/Gemm/Add with int16/uint16 activations runs as
``DequantizeLinear -> float kernel -> QuantizeLinear`` (mrq/lower_islands.py). The float kernels
(simulator/kernels/ort_conv.py) against ORT's own float Conv/Gemm on every MLAS path, then
single-node 16-bit QDQ models against ORT on random and extreme codes, the committed model, and
the NNA profile that keeps its integer arithmetic.

Host: x86-64 with AVX-512F/FMA3 (ORT 1.32 picks its SGEMM kernel by instruction set; the one-row
kernels are AVX on every x86-64 host)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

from mrq.api import prepare, simulate
from mrq.errors import UnsupportedOpError
from simulator.kernels.ort_conv import conv_ort, gemm_ort
from tests.ort_host import ORT_PROFILE
from tests.parity.ort_runner import run_ort, session_options

REPO = Path(__file__).resolve().parents[2]
F32 = np.float32


def _ort_float(nodes, inputs: dict, tmp_path):
    """Run a float graph whose weights are graph inputs (as in a QDQ island, where they come
    from DequantizeLinear: no constant folding, no NCHWc rewrite, no pre-packing)."""
    vis = [helper.make_tensor_value_info(k, TP.FLOAT, v.shape) for k, v in inputs.items()]
    g = helper.make_graph(nodes, "g", vis, [helper.make_tensor_value_info("y", TP.FLOAT, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]


def _values(rng, shape, kind):
    if kind == "extreme":   # large, tiny and exactly cancelling magnitudes, signed zeros
        pool = np.array([3e4, -3e4, 1e-3, -1e-3, 0.0, -0.0, 1.0, -1.0, 65504.0, 2.0**-20], F32)
        return rng.choice(pool, shape).astype(F32)
    return (rng.standard_normal(shape) * 4).astype(F32)


# (C, H, M, K, stride, pad, dilation, group): MLAS's paths with one thread
CONV_CASES = {
    "segmented": (16, 12, 16, 3, 1, 1, 1, 1),
    "segmented_k_slices": (200, 6, 24, 3, 1, 1, 1, 1),     # K = 1800 > one K slice
    "strided_stem": (3, 16, 8, 3, 2, 1, 1, 1),
    "expand_then_gemm": (64, 3, 128, 3, 1, 1, 1, 1),      # more filters than pixels
    "pointwise_direct": (24, 8, 16, 1, 1, 0, 1, 1),
    "pointwise_one_pixel": (300, 1, 7, 1, 1, 0, 1, 1),     # N == 1: MLAS flips the product
    "depthwise_m1": (16, 10, 16, 3, 1, 1, 1, 16),          # one-row AVX kernel
    "depthwise_5x5_strided": (8, 11, 8, 5, 2, 2, 1, 8),
    "grouped_dilated": (16, 9, 16, 3, 1, 2, 2, 4),
    "one_filter_k_slices": (1200, 2, 1, 1, 1, 0, 1, 1),    # M == 1 over K slices
}


@pytest.mark.parametrize("kind", ["random", "extreme"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_kernel_is_orts_float_conv(tmp_path, case, kind):
    c, h, m, k, s, p, d, g = CONV_CASES[case]
    rng = np.random.default_rng(len(case))
    x = _values(rng, (1, c, h, h), kind)
    w = _values(rng, (m, c // g, k, k), kind)
    b = _values(rng, (m,), kind)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[s, s], pads=[p] * 4,
                            dilations=[d, d], group=g)
    ref = _ort_float([node], {"x": x, "w": w, "b": b}, tmp_path)
    got = conv_ort(x, weight=w, bias=b, strides=(s, s), pads=(p,) * 4, dilations=(d, d), group=g)
    np.testing.assert_array_equal(got.view(np.int32), ref.view(np.int32))


# (M, K, N, transB, bias): multi-row FMA kernel, one-row kernels (row blocks of 4, 2, 1)
GEMM_CASES = {"rows": (5, 300, 20, 1, True), "m1_transb": (1, 1027, 11, 1, True),
              "m1_plain": (1, 50, 7, 0, True), "m1_no_bias": (1, 9, 3, 1, False),
              "column": (6, 33, 1, 0, True)}


@pytest.mark.parametrize("case", sorted(GEMM_CASES))
def test_gemm_kernel_is_orts_float_gemm(tmp_path, case):
    m, k, n, trans_b, bias = GEMM_CASES[case]
    rng = np.random.default_rng(len(case))
    a = _values(rng, (m, k), "random")
    w = _values(rng, (n, k) if trans_b else (k, n), "random")
    feeds = {"a": a, "w": w}
    if bias:
        feeds["b"] = _values(rng, (n,), "random")
    node = helper.make_node("Gemm", list(feeds), ["y"], transB=trans_b)
    ref = _ort_float([node], feeds, tmp_path)
    got = gemm_ort(a, weight=w.T if trans_b else w, bias=feeds.get("b"), trans_b=bool(trans_b))
    np.testing.assert_array_equal(got.view(np.int32), ref.view(np.int32))


# ------------------------------------------------------------------ 16-bit QDQ single nodes
def _qdq16_model(op: str, act: str, per_channel: bool, path: Path):
    """Integer input codes -> DQ -> Conv/Gemm/MatMul (DQ'd int8 weights, int32 bias) -> Q."""
    rng = np.random.default_rng(3)
    np_act, tp_act = (np.int16, TP.INT16) if act == "int16" else (np.uint16, TP.UINT16)
    zp = 0 if act == "int16" else 31000
    if op == "Gemm":
        x_shape, w_shape = (2, 40), (12, 40)
    elif op == "MatMul":   # [K, N] weight, per channel along N; leading axes fold into rows
        x_shape, w_shape = (1, 3, 40), (40, 12)
    else:
        c, m, k, g = {"Conv": (8, 12, 3, 1), "depthwise": (8, 8, 3, 8),
                      "pointwise": (8, 12, 1, 1)}[op]
        x_shape, w_shape = (1, c, 9, 9), (m, c // g, k, k)
    n_out = w_shape[1] if op == "MatMul" else w_shape[0]
    w_codes = rng.integers(-127, 128, w_shape).astype(np.int8)
    w_scale = (rng.uniform(0.5, 2, n_out) * 0.01).astype(F32) if per_channel else np.array(0.013, F32)
    x_scale, y_scale = F32(2e-4), F32(3e-3)
    b_scale = (x_scale * w_scale).astype(F32)
    b_codes = rng.integers(-50000, 50000, n_out).astype(np.int32)
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("w_q", w_codes), ("w_s", w_scale), ("w_z", np.zeros(w_scale.shape, np.int8)),
        ("b_q", b_codes), ("b_s", b_scale), ("b_z", np.zeros(b_scale.shape, np.int32)),
        ("x_s", np.array(x_scale)), ("x_z", np.array(zp, np_act)),
        ("y_s", np.array(y_scale)), ("y_z", np.array(zp, np_act))]]
    axis = {"axis": 0} if per_channel else {}
    nodes = [helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["xf"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wf"],
                              **({"axis": 1} if per_channel and op == "MatMul" else axis)),
             helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["bf"], **axis)]
    if op == "MatMul":
        nodes = nodes[:2] + [helper.make_node("MatMul", ["xf", "wf"], ["yf"])]
    elif op == "Gemm":
        nodes.append(helper.make_node("Gemm", ["xf", "wf", "bf"], ["yf"], transB=1))
    else:
        group = w_shape[0] if op == "depthwise" else 1
        pad = 1 if w_shape[-1] == 3 else 0
        nodes.append(helper.make_node("Conv", ["xf", "wf", "bf"], ["yf"], pads=[pad] * 4,
                                      group=group))
    nodes.append(helper.make_node("QuantizeLinear", ["yf", "y_s", "y_z"], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", tp_act, x_shape)],
                          [helper.make_tensor_value_info("y", tp_act, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    path.write_bytes(model.SerializeToString())
    info = np.iinfo(np_act)
    codes = {"random": rng.integers(info.min, int(info.max) + 1, x_shape).astype(np_act),
             "extreme": rng.choice(np.array([info.min, info.max, zp, zp + 1, zp - 1], np_act),
                                   x_shape)}
    return codes


@pytest.mark.parametrize("op,act,per_channel", [
    ("Conv", "int16", True), ("Conv", "uint16", False), ("depthwise", "int16", False),
    ("depthwise", "uint16", True), ("pointwise", "uint16", True), ("Gemm", "int16", True),
    ("Gemm", "uint16", False)])
def test_qdq16_node_matches_ort(tmp_path, op, act, per_channel):
    path = tmp_path / "m.onnx"
    feeds_by_kind = _qdq16_model(op, act, per_channel, path)
    for kind, codes in feeds_by_kind.items():
        ref = run_ort(path, {"x": codes})["y"]
        got = simulate(str(path), ORT_PROFILE, {"x": codes}, fidelity=False).outputs["y"]
        assert got.dtype == ref.dtype, kind
        np.testing.assert_array_equal(got, ref, err_msg=f"{op} {act} {kind}")


def test_qdq16_matmul_that_ort_rewrites_to_matmulnbits_is_refused(tmp_path):
    """ORT 1.32 fuses DQ(int8 constant) -> MatMul into MatMulNBits (8 bits, accuracy level 4)
    when the activations are 16-bit: another kernel, refused with a one-line error."""
    path = tmp_path / "m.onnx"
    codes = _qdq16_model("MatMul", "int16", True, path)["random"]
    with pytest.raises(UnsupportedOpError, match="MatMulNBits"):
        simulate(str(path), ORT_PROFILE, {"x": codes}, fidelity=False)


def test_committed_qdq16_cnn_matches_ort_with_float_islands():
    path = REPO / "tests" / "data" / "onnx_real" / "cnn16.qdq.u16s8pc.onnx"
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 3, 16, 16)) * 2).astype(F32)
    ref = run_ort(path, {"input": x})
    sim = simulate(str(path), ORT_PROFILE, {"input": x}, fidelity=False)
    for name, value in ref.items():
        np.testing.assert_array_equal(sim.outputs[name], value)
    kinds = {s.kind for s in sim.lowered.program.steps}
    assert {"conv_ort", "gemm_ort"} <= kinds and "conv" not in kinds


def test_nna_profile_keeps_integer_arithmetic_for_16_bit_models():
    path = REPO / "tests" / "data" / "onnx_real" / "cnn16.qdq.u16s8pc.onnx"
    kinds = {s.kind for s in prepare(str(path), "nna-a16w8").program.steps}
    assert "conv" in kinds and not kinds & {"conv_ort", "gemm_ort"}
