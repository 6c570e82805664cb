"""What third-party quantized ONNX models need from the importer (bench/onnx_third_party_parity.py
measures the models themselves; they are not shipped): QuantizeLinear of a float constant
(exporters quantize weights at run time), a Cast between QuantizeLinear and DequantizeLinear that
keeps the type (pytorch-quantization's export), Reshape targets computed by Shape/Gather/Concat
chains (shape inference with data propagation), 1-D Conv/MaxPool (run as 2-D on a height of 1)
Reshape's allowzero=1 without a 0 in the target (torch.export), and Concat of integer codes on
one grid (tf2onnx). Each is checked element for element against ONNX
Runtime's CPU provider. The models themselves (not redistributable: most state no licence) are
re-checked by ``python bench/onnx_third_party_parity.py --models DIR``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

from mrq.api import simulate
from mrq.errors import MrqError, UnsupportedOpError
from mrq.ir import QParams
from mrq.onnx_import import _quantize_constant
from tests.ort_host import ORT_PROFILE
from tests.parity.ort_runner import run_ort

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "bench" / "third_party_onnx.json"


def _c(value, name):
    return numpy_helper.from_array(np.asarray(value), name)


def _save(tmp_path, nodes, inputs, outputs, inits, opset=19) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def _assert_same(ref: dict, got: dict):
    assert set(got) >= set(ref)
    for name, a in ref.items():
        b = np.asarray(got[name])
        assert b.dtype == a.dtype and b.shape == a.shape, name
        bad = int(np.count_nonzero(a != b))
        assert bad == 0, f"{name}: {bad}/{a.size} differ"


def _tricky_floats(rng, shape, scale, zp):
    """Random values plus exact ties (k + 0.5 codes), values far outside the range, and zeros."""
    x = (rng.standard_normal(shape) * 80 * scale).astype(np.float32)
    flat = x.reshape(-1)
    n = flat.size
    flat[: n // 4] = ((rng.integers(-140, 140, n // 4) + 0.5) * scale).astype(np.float32)
    flat[n // 4: n // 4 + 8] = np.float32([1e9, -1e9, 0.0, -0.0, 3e38, -3e38, scale / 2, -scale / 2])
    return x


@pytest.mark.parametrize("dtype,axis", [("int8", None), ("uint8", None), ("int8", 0),
                                        ("uint8", 1), ("int16", None)])
def test_quantize_constant_is_ort_quantize_linear(dtype, axis):
    """The folded codes are what ORT's QuantizeLinear kernel gives the same values at run time
    (ties to even, saturation, per-axis grids)."""
    rng = np.random.default_rng(3)
    shape = (4, 3, 5)
    npd = np.dtype(dtype)
    channels = shape[axis] if axis is not None else 1
    scale = (rng.uniform(0.01, 0.3, channels)).astype(np.float32)
    info = np.iinfo(npd)
    zp = rng.integers(info.min // 4, info.max // 4 + 1, channels).astype(npd)
    if dtype.startswith("u"):
        zp = rng.integers(0, 200, channels).astype(npd)
    x = _tricky_floats(rng, shape, float(scale.min()), 0)
    attrs = {"axis": axis} if axis is not None else {}
    s_init = scale if axis is not None else scale[0]
    z_init = zp if axis is not None else zp[0]
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs)
    model = helper.make_model(helper.make_graph(
        [node], "q", [helper.make_tensor_value_info("x", TP.FLOAT, shape)],
        [helper.make_tensor_value_info("q", helper.np_dtype_to_tensor_dtype(npd), shape)],
        [_c(s_init, "s"), _c(z_init, "z")]), opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})[0]
    qp = QParams(scale, zp.astype(np.int64), dtype, axis=axis if channels > 1 else None)
    got = _quantize_constant(x, qp, node)
    assert got.dtype == ref.dtype
    assert np.array_equal(got, ref)


def test_quantize_constant_refuses_non_float32():
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="qw")
    qp = QParams(np.float32([0.1]), np.int64([0]), "int8")
    with pytest.raises(UnsupportedOpError, match="'QuantizeLinear' at node 'qw'"):
        _quantize_constant(np.float16([1.0]), qp, node)
    with pytest.raises(UnsupportedOpError, match="finite"):
        _quantize_constant(np.float32([np.nan]), qp, node)


def _conv_with_runtime_weight_quant(tmp_path, per_channel: bool) -> Path:
    """x -Q-> DQ -> Conv(DQ(Q(float W))) -> Q -> DQ: the weight is quantized by the graph."""
    rng = np.random.default_rng(5)
    w = _tricky_floats(rng, (6, 3, 3, 3), 0.02, 0)
    w[:, :, 1, 1] = 0.3   # not all saturated
    ws = (rng.uniform(0.01, 0.03, 6) if per_channel else np.float32(0.02)).astype(np.float32)
    wz = np.zeros(6 if per_channel else (), np.int8)
    axis = {"axis": 0} if per_channel else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], **axis),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], **axis),
             helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "s2", "z2"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s2", "z2"], ["y"])]
    inits = [_c(np.float32(0.05), "s"), _c(np.uint8(128), "z"), _c(w, "w"), _c(ws, "ws"),
             _c(wz, "wz"), _c(np.float32(0.2), "s2"), _c(np.uint8(100), "z2")]
    return _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TP.FLOAT, [None, 3, 6, 6])],
                 [helper.make_tensor_value_info("y", TP.FLOAT, None),
                  helper.make_tensor_value_info("yq", TP.UINT8, None)], inits)


@pytest.mark.parametrize("per_channel", [False, True])
def test_weights_quantized_by_the_graph_match_ort(tmp_path, per_channel):
    path = _conv_with_runtime_weight_quant(tmp_path, per_channel)
    x = (np.random.default_rng(1).standard_normal((2, 3, 6, 6)) * 4).astype(np.float32)
    x[1] = 100.0   # a saturated input
    _assert_same(run_ort(path, {"x": x}), simulate(str(path), ORT_PROFILE, {"x": x},
                                                     fidelity=False).outputs)


def _cast_model(tmp_path, to) -> Path:
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("Cast", ["xq"], ["xc"], to=to, name="the_cast"),
             helper.make_node("DequantizeLinear", ["xc", "s", "z"], ["xd"]),
             helper.make_node("Relu", ["xd"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["yq"]),
             helper.make_node("Cast", ["yq"], ["yc"], to=to),
             helper.make_node("DequantizeLinear", ["yc", "s", "z"], ["y"])]
    inits = [_c(np.float32(0.03), "s"), _c(np.uint8(73), "z")]
    return _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TP.FLOAT, [None, 4, 5])],
                 [helper.make_tensor_value_info("y", TP.FLOAT, None)], inits)


def test_cast_to_the_same_type_is_an_identity(tmp_path):
    path = _cast_model(tmp_path, TP.UINT8)
    x = (np.random.default_rng(2).standard_normal((3, 4, 5)) * 3).astype(np.float32)
    _assert_same(run_ort(path, {"x": x}), simulate(str(path), ORT_PROFILE, {"x": x},
                                                     fidelity=False).outputs)


def test_cast_changing_the_type_is_one_clear_error(tmp_path):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("Cast", ["xq"], ["xc"], to=TP.INT32, name="the_cast"),
             helper.make_node("Identity", ["xc"], ["y"])]
    path = _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TP.FLOAT, [None, 4])],
                 [helper.make_tensor_value_info("y", TP.INT32, None)],
                 [_c(np.float32(0.03), "s"), _c(np.uint8(73), "z")])
    with pytest.raises(UnsupportedOpError, match="'Cast' at node 'the_cast'.*int32"):
        simulate(str(path), ORT_PROFILE, {"x": np.zeros((1, 4), np.float32)},
                 fidelity=False)


def test_reshape_target_from_shape_arithmetic(tmp_path):
    """Shape -> Gather -> Concat -> Reshape, then a Split that needs the reshaped static shape:
    only shape inference with data propagation knows it."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Shape", ["xd"], ["shp"]),
             helper.make_node("Gather", ["shp", "i01"], ["nc"], axis=0),
             helper.make_node("Concat", ["nc", "m1"], ["target"], axis=0),
             helper.make_node("Reshape", ["xd", "target"], ["r"]),
             helper.make_node("Split", ["r", "sizes"], ["a", "b"], axis=2),
             helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"]),
             helper.make_node("QuantizeLinear", ["b", "s", "z"], ["bq"])]
    inits = [_c(np.float32(0.05), "s"), _c(np.int8(-3), "z"), _c(np.int64([0, 1]), "i01"),
             _c(np.int64([-1]), "m1"), _c(np.int64([10, 14]), "sizes")]
    path = _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TP.FLOAT, [1, 4, 6, 4])],
                 [helper.make_tensor_value_info("aq", TP.INT8, None),
                  helper.make_tensor_value_info("bq", TP.INT8, None)], inits)
    x = (np.random.default_rng(4).standard_normal((1, 4, 6, 4)) * 3).astype(np.float32)
    _assert_same(run_ort(path, {"x": x}), simulate(str(path), ORT_PROFILE, {"x": x},
                                                     fidelity=False).outputs)


def _conv1d_model(tmp_path, opset: int, per_channel: bool) -> Path:
    """x -Q-> DQ -> Conv1d (stride, dilation, pads) -> Relu -> Q -> DQ -> MaxPool1d ->
    AveragePool1d -> Q -> DQ -> Reshape (allowzero=1, as torch.export writes it)."""
    rng = np.random.default_rng(8)
    w = rng.integers(-127, 128, (5, 3, 3)).astype(np.int8)
    ws = (rng.uniform(0.002, 0.01, 5) if per_channel else np.float32(0.006)).astype(np.float32)
    axis = {"axis": 0} if per_channel else {}
    reshape = helper.make_node("Reshape", ["p", "flat"], ["y"], **(
        {"allowzero": 1} if opset >= 14 else {}))
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], **axis),
             helper.make_node("DequantizeLinear", ["b", "bs"], ["bd"]),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], strides=[2], dilations=[2],
                              pads=[2, 1], kernel_shape=[3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s2", "z2"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s2", "z2"], ["cd"]),
             helper.make_node("MaxPool", ["cd"], ["p0"], kernel_shape=[2], strides=[2]),
             helper.make_node("AveragePool", ["p0"], ["a"], kernel_shape=[3], pads=[1, 1],
                              count_include_pad=0),
             helper.make_node("QuantizeLinear", ["a", "s3", "z2"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "s3", "z2"], ["p"]),
             reshape]
    bs = (np.float32(0.05) * ws).astype(np.float32)
    inits = [_c(np.float32(0.05), "s"), _c(np.uint8(128), "z"), _c(w, "w"), _c(ws, "ws"),
             _c(np.zeros(5 if per_channel else (), np.int8), "wz"),
             _c(rng.integers(-500, 500, 5).astype(np.int32), "b"),
             _c(bs if per_channel else np.float32(bs), "bs"),
             _c(np.float32(0.04), "s2"), _c(np.uint8(3), "z2"), _c(np.int64([1, -1]), "flat"),
             _c(np.float32(0.03), "s3")]
    if per_channel:   # a per-axis bias grid needs its axis
        nodes[3] = helper.make_node("DequantizeLinear", ["b", "bs"], ["bd"], axis=0)
    return _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TP.FLOAT, [1, 3, 23])],
                 [helper.make_tensor_value_info("y", TP.FLOAT, None),
                  helper.make_tensor_value_info("cq", TP.UINT8, None)], inits, opset=opset)


@pytest.mark.parametrize("opset,per_channel", [(11, False), (19, True)])
def test_1d_conv_and_pools_run_as_2d(tmp_path, opset, per_channel):
    path = _conv1d_model(tmp_path, opset, per_channel)
    rng = np.random.default_rng(9)
    for x in (rng.standard_normal((1, 3, 23)) * 3, np.full((1, 3, 23), 50.0)):
        x = x.astype(np.float32)
        _assert_same(run_ort(path, {"x": x}), simulate(str(path), ORT_PROFILE, {"x": x},
                                                         fidelity=False).outputs)


def test_qlinearconv_1d_runs_as_2d(tmp_path):
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("QLinearConv", ["xq", "s", "z", "w", "ws", "wz", "s2", "z2", "b"],
                              ["yq"], pads=[1, 2], strides=[2], kernel_shape=[4]),
             helper.make_node("DequantizeLinear", ["yq", "s2", "z2"], ["y"])]
    inits = [_c(np.float32(0.05), "s"), _c(np.uint8(120), "z"),
             _c(rng.integers(-127, 128, (6, 3, 4)).astype(np.int8), "w"),
             _c(rng.uniform(0.002, 0.01, 6).astype(np.float32), "ws"), _c(np.zeros(6, np.int8), "wz"),
             _c(np.float32(0.08), "s2"), _c(np.uint8(7), "z2"),
             _c(rng.integers(-800, 800, 6).astype(np.int32), "b")]
    path = _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TP.FLOAT, [1, 3, 19])],
                 [helper.make_tensor_value_info("y", TP.FLOAT, None),
                  helper.make_tensor_value_info("yq", TP.UINT8, None)], inits, opset=13)
    x = (rng.standard_normal((1, 3, 19)) * 4).astype(np.float32)
    _assert_same(run_ort(path, {"x": x}), simulate(str(path), ORT_PROFILE, {"x": x},
                                                     fidelity=False).outputs)


def _concat_codes_model(tmp_path, same_grid: bool) -> Path:
    """tf2onnx's detector heads: Q -> Transpose -> Reshape (integer codes) -> Concat -> DQ."""
    nodes = [helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"]),
             helper.make_node("QuantizeLinear", ["b", "s" if same_grid else "s_b", "z"], ["bq"]),
             helper.make_node("Transpose", ["aq"], ["at"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["bq"], ["bt"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["at", "shape"], ["ar"]),
             helper.make_node("Reshape", ["bt", "shape"], ["br"]),
             helper.make_node("Concat", ["ar", "br"], ["c"], axis=1, name="the_concat"),
             helper.make_node("DequantizeLinear", ["c", "s", "z"], ["y"])]
    inits = [_c(np.float32(0.0245), "s"), _c(np.float32(0.031), "s_b"), _c(np.int8(-62), "z"),
             _c(np.int64([1, -1, 4]), "shape")]
    return _save(tmp_path, nodes, [helper.make_tensor_value_info("a", TP.FLOAT, [1, 8, 4, 4]),
                                   helper.make_tensor_value_info("b", TP.FLOAT, [1, 8, 2, 2])],
                 [helper.make_tensor_value_info("y", TP.FLOAT, None),
                  helper.make_tensor_value_info("c", TP.INT8, None)], inits)


def test_concat_of_codes_on_one_grid(tmp_path):
    path = _concat_codes_model(tmp_path, same_grid=True)
    rng = np.random.default_rng(10)
    feeds = {"a": (rng.standard_normal((1, 8, 4, 4)) * 4).astype(np.float32),
             "b": (rng.standard_normal((1, 8, 2, 2)) * 4).astype(np.float32)}
    _assert_same(run_ort(path, feeds), simulate(str(path), ORT_PROFILE, feeds,
                                                fidelity=False).outputs)


def test_concat_of_codes_on_two_grids_is_refused(tmp_path):
    path = _concat_codes_model(tmp_path, same_grid=False)
    feeds = {"a": np.zeros((1, 8, 4, 4), np.float32), "b": np.zeros((1, 8, 2, 2), np.float32)}
    with pytest.raises(MrqError, match="the_concat"):
        simulate(str(path), ORT_PROFILE, feeds, fidelity=False)
