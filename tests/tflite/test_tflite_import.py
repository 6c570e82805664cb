"""mrq.tflite_import: the IR it builds from .tflite files, and its errors."""
from __future__ import annotations

import os
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from mrq.errors import ModelError, UnsupportedOpError  # noqa: E402
from mrq.tflite_import import import_tflite, import_tflite_bytes  # noqa: E402
from tests.reference import tflite_ref  # noqa: E402
from tflite_builder import ModelBuilder  # noqa: E402
from tflite_helpers import MODELS_DIR, model_path  # noqa: E402

have_models = pytest.mark.skipif(not os.path.exists(model_path("kws")), reason="MLPerf Tiny models not found")


def _conv_model(act="RELU", padding="SAME"):
    r = np.random.default_rng(0)
    b = ModelBuilder()
    x = b.tensor("x", [1, 5, 7, 3], "int8", scale=0.05, zero_point=3)
    ws = np.array([0.01, 0.02], np.float32)
    w = b.tensor("w", [2, 3, 3, 3], "int8", scale=ws, zero_point=[0, 0], quantized_dimension=0,
                 data=r.integers(-127, 128, (2, 3, 3, 3)))
    bias = b.tensor("b", [2], "int32", scale=ws * np.float32(0.05), zero_point=[0, 0], data=[10, -20])
    y = b.tensor("y", [1, 3, 4, 2], "int8", scale=0.1, zero_point=-4)
    b.op("CONV_2D", [x, w, bias], [y], options=("Conv2DOptions", dict(
        padding=padding, stride_w=2, stride_h=2, fused_activation_function=act)))
    return b.finish([x], [y])


def test_conv_ir_conventions():
    data = _conv_model()
    g = import_tflite_bytes(data)
    (node,) = g.nodes
    raw = tflite_ref.RefModel(data)
    assert node.op == "Conv" and node.attrs["layout"] == "NHWC" and node.attrs["group"] == 1
    assert node.attrs["tflite_op"] == "CONV_2D" and node.attrs["tflite_index"] == 0
    assert node.attrs["strides"] == (2, 2) and node.attrs["dilations"] == (1, 1)
    # SAME: out 3x4 from 5x7 with k=3, s=2: total pads H=2 (1,1), W=2 (1,1)
    assert node.attrs["pads"] == (1, 1, 1, 1)
    assert node.attrs["clamp"] == (0.0, None)
    x, w, b = (g.tensors[n] for n in node.inputs)
    assert x.name == "x" and x.shape == (None, 5, 7, 3) and x.qparams.zero_point[0] == 3
    assert np.array_equal(w.data, raw.tensors[1]["data"].transpose(0, 3, 1, 2))   # OHWI -> OIHW
    assert w.qparams.axis == 0 and np.array_equal(w.qparams.scale, np.array([0.01, 0.02], np.float32))
    assert b.data.dtype == np.int64 and list(b.data) == [10, -20]
    assert np.array_equal(b.qparams.scale, (np.float32(0.05) * np.array([0.01, 0.02], np.float32)).astype(np.float32))
    assert g.inputs == ["x"] and g.outputs == ["y"] and g.meta["format"] == "tflite"


def test_depthwise_and_fc_layouts():
    r = np.random.default_rng(1)
    b = ModelBuilder()
    x = b.tensor("x", [1, 4, 4, 2], "int8", scale=0.05, zero_point=0)
    ws = np.array([0.01, 0.02, 0.03, 0.04], np.float32)
    wd = r.integers(-127, 128, (1, 3, 3, 4))
    w = b.tensor("w", [1, 3, 3, 4], "int8", scale=ws, zero_point=[0] * 4, quantized_dimension=3, data=wd)
    y = b.tensor("y", [1, 2, 2, 4], "int8", scale=0.1, zero_point=0)
    b.op("DEPTHWISE_CONV_2D", [x, w, -1], [y], options=("DepthwiseConv2DOptions", dict(
        padding="VALID", stride_w=1, stride_h=1, depth_multiplier=2)))
    fw = r.integers(-127, 128, (3, 16))
    f = b.tensor("f", [3, 16], "int8", scale=0.02, zero_point=0, data=fw)
    z = b.tensor("z", [1, 3], "int8", scale=0.2, zero_point=1)
    b.op("FULLY_CONNECTED", [y, f, -1], [z], options=("FullyConnectedOptions", dict(fused_activation_function="RELU6")))
    g = import_tflite_bytes(b.finish([x], [z]))
    dw, flat, gemm = g.nodes
    assert dw.op == "Conv" and dw.attrs["group"] == 2 and dw.attrs["depth_multiplier"] == 2
    wt = g.tensors[dw.inputs[1]]
    assert wt.data.shape == (4, 1, 3, 3) and np.array_equal(wt.data, wd.transpose(3, 0, 1, 2))
    assert wt.qparams.axis == 0 and len(dw.inputs) == 2
    assert flat.op == "Reshape" and flat.attrs["shape"] == (-1, 16)
    assert gemm.op == "Gemm" and gemm.attrs["clamp"] == (0.0, 6.0)
    assert np.array_equal(g.tensors[gemm.inputs[1]].data, fw.T)


@have_models
def test_mlperf_models_import():
    expected = {
        "kws": (["Conv"] * 9 + ["AveragePool", "Reshape", "Gemm", "Softmax"], (None, 49, 10, 1), (None, 12)),
        "resnet8": (["Conv"] * 3 + ["Add"] + ["Conv"] * 3 + ["Add"] + ["Conv"] * 3 + ["Add", "AveragePool",
                                                                                 "Reshape", "Gemm", "Softmax"],
                    (None, 32, 32, 3), (None, 10)),
        "ad01": (["Gemm"] * 10, (None, 640), (None, 640)),
    }
    for key, (ops, in_shape, out_shape) in expected.items():
        path = model_path(key)
        g = import_tflite(path)
        assert [n.op for n in g.nodes] == ops, key
        assert g.tensors[g.inputs[0]].shape == in_shape and g.tensors[g.inputs[0]].dtype == "int8"
        assert g.tensors[g.outputs[0]].shape == out_shape
        raw = tflite_ref.RefModel(open(path, "rb").read())
        names = {t["name"] for t in raw.tensors}
        for n in g.nodes:
            assert n.outputs[0] in names, n.outputs[0]          # IR names are the TFLite names


@have_models
def test_load_model_dispatches_tflite():
    from mrq.onnx_import import load_model
    g = load_model(model_path("ad01"))
    assert g.meta["format"] == "tflite" and len(g.nodes) == 10


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        import_tflite(str(tmp_path / "missing.tflite"))
    bad = tmp_path / "garbage.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="not a TFLite flatbuffer"):
        import_tflite(str(bad))
    data = bytearray(_conv_model())
    trunc = tmp_path / "truncated.tflite"
    trunc.write_bytes(bytes(data[:len(data) // 3]))
    with pytest.raises(ModelError):
        import_tflite(str(trunc))
    data[40:200] = b"\xff" * 160
    smashed = tmp_path / "smashed.tflite"
    smashed.write_bytes(bytes(data))
    with pytest.raises(ModelError):
        import_tflite(str(smashed))


@have_models
def test_float_and_hybrid_models_are_not_quantized():
    with pytest.raises(ModelError, match="not quantized"):
        import_tflite(os.path.join(MODELS_DIR, "ad01_fp32.tflite"))
    with pytest.raises(ModelError, match="dynamic-range"):
        import_tflite(os.path.join(MODELS_DIR, "kws_ref_model_float32.tflite"))


def test_float_builder_model_is_not_quantized():
    b = ModelBuilder()
    x = b.tensor("x", [1, 4], "float32")
    y = b.tensor("y", [1, 4], "float32")
    b.op("LOGISTIC", [x], [y])
    with pytest.raises(ModelError, match="not quantized"):
        import_tflite_bytes(b.finish([x], [y]))


def test_unsupported_op_names_index_and_builtin():
    b = ModelBuilder()
    x = b.tensor("x", [1, 8], "int8", scale=0.1, zero_point=0)
    y = b.tensor("y", [1, 8], "int8", scale=0.1, zero_point=0)
    z = b.tensor("z", [1, 8], "int8", scale=1 / 128, zero_point=0)
    b.op("RESHAPE", [x], [y], options=("ReshapeOptions", dict(new_shape=[1, 8])))
    b.op("EXP", [y], [z])
    with pytest.raises(UnsupportedOpError) as info:
        import_tflite_bytes(b.finish([x], [z]))
    msg = str(info.value)
    assert "'EXP'" in msg and "operator 1" in msg


def test_unsupported_fused_activation():
    with pytest.raises(UnsupportedOpError, match="TANH") as info:
        import_tflite_bytes(_conv_model(act="TANH"))
    assert "operator 0" in str(info.value) and "CONV_2D" in str(info.value)


def test_maxpool_fused_activation_becomes_clamp():
    b = ModelBuilder()
    x = b.tensor("x", [1, 4, 4, 2], "int8", scale=0.1, zero_point=-10)
    y = b.tensor("y", [1, 2, 2, 2], "int8", scale=0.1, zero_point=-10)
    b.op("MAX_POOL_2D", [x], [y], options=("Pool2DOptions", dict(
        padding="VALID", stride_w=2, stride_h=2, filter_width=2, filter_height=2,
        fused_activation_function="RELU6")))
    g = import_tflite_bytes(b.finish([x], [y]))
    pool, clamp = g.nodes
    assert pool.op == "MaxPool" and clamp.op == "Clamp" and clamp.outputs == ["y"]
    assert (clamp.attrs["lo"], clamp.attrs["hi"]) == (0.0, 6.0)


def test_mean_pad_logistic_ir():
    b = ModelBuilder()
    x = b.tensor("x", [1, 4, 4, 2], "int8", scale=0.1, zero_point=-10)
    p = b.tensor("p", [4, 2], "int32", data=np.array([[0, 0], [1, 1], [0, 2], [0, 0]], np.int32))
    xp = b.tensor("xp", [1, 6, 6, 2], "int8", scale=0.1, zero_point=-10)
    b.op("PAD", [x, p], [xp])
    ax = b.tensor("ax", [2], "int32", data=np.array([-3, 2], np.int32))
    m = b.tensor("m", [1, 2], "int8", scale=0.05, zero_point=0)
    b.op("MEAN", [xp, ax], [m], options=("ReducerOptions", dict(keep_dims=False)))
    s = b.tensor("s", [1, 2], "int8", scale=1 / 256, zero_point=-128)
    b.op("LOGISTIC", [m], [s])
    g = import_tflite_bytes(b.finish([x], [s]))
    pad, mean, logistic = g.nodes
    assert pad.op == "Pad" and pad.attrs["pads"] == ((0, 0), (1, 1), (0, 2), (0, 0)) and pad.attrs["value"] == 0.0
    assert mean.op == "Mean" and mean.attrs["axes"] == (1, 2) and mean.attrs["keep_dims"] is False
    assert logistic.op == "Logistic"


def test_int16_logistic_off_litert_output_scale_is_refused_when_lowered():
    """int16 activations import (16x8 mode, tests/tflite/test_tflite_int16.py); an int16
    LOGISTIC whose output scale is not 1/32768 (LiteRT refuses it) is refused, node named."""
    from mrq.api import resolve_profile
    from mrq.lower import arithmetic_from_profile, lower
    b = ModelBuilder()
    x = b.tensor("x", [1, 8], "int16", scale=0.001, zero_point=0)
    y = b.tensor("y", [1, 8], "int16", scale=1 / 256, zero_point=0)
    b.op("LOGISTIC", [x], [y])
    graph = import_tflite_bytes(b.finish([x], [y]))
    with pytest.raises(UnsupportedOpError, match="1/32768") as info:
        lower(graph, arithmetic_from_profile(resolve_profile("tflite-int8")))
    assert "logistic_0" in str(info.value)
