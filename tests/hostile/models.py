"""Tiny valid models for the hostile-input corpus, each built with named knobs so one case can
change one relation (a scale length, a stride, a dimension) and keep everything else valid."""
from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tflite"))
from tflite_builder import ModelBuilder

OPSET = 17
IR_VERSION = 8


def _f(v):
    return np.asarray(v, np.float32)


def _model(nodes, inits, inputs, outputs, opset=OPSET, ir_version=IR_VERSION, name="g"):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def _io(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def conv_qdq(*, cin=4, cout=3, k=(3, 3), hw=(6, 6), w_scale_len=None, w_zp_len=None,
             bias_len=None, bias_scale_len=None, w_in=None, w_rank=4, w_axis=0,
             strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1), group=1,
             x_scale=0.05, x_scale_len=None, y_scale_len=None, in_shape=None) -> onnx.ModelProto:
    """x[N,cin,h,w] -> Q -> DQ -> Conv(DQ(w) per channel, DQ(bias)) -> Q -> DQ -> y."""
    rng = np.random.default_rng(0)
    w_in = cin // group if w_in is None else w_in
    w_shape = (cout, w_in) + tuple(k) if w_rank == 4 else (cout, w_in, k[0])
    w = rng.integers(-100, 100, w_shape).astype(np.int8)
    ws = _f(np.linspace(0.01, 0.02, w_scale_len or cout))
    wz = np.zeros(w_zp_len or (w_scale_len or cout), np.int8)
    bias = rng.integers(-500, 500, bias_len or cout).astype(np.int32)
    bs = _f(np.full(bias_scale_len or bias_len or cout, 0.05 * 0.015))
    bz = np.zeros(bs.size, np.int32)
    xs = _f(x_scale if x_scale_len is None else np.full(x_scale_len, x_scale))
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (xs, "x_s"), (np.array(128 if x_scale_len is None else [128] * x_scale_len, np.uint8), "x_zp"),
        (w, "w"), (ws, "w_s"), (wz, "w_zp"), (bias, "b"), (bs, "b_s"), (bz, "b_zp"),
        (_f(0.1 if y_scale_len is None else np.full(y_scale_len, 0.1)), "y_s"),
        (np.array(128 if y_scale_len is None else [128] * y_scale_len, np.uint8), "y_zp"))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"], name="quant_x"),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xf"], name="dequant_x"),
             helper.make_node("DequantizeLinear", ["w", "w_s", "w_zp"], ["wf"], name="dequant_w", axis=w_axis),
             helper.make_node("DequantizeLinear", ["b", "b_s", "b_zp"], ["bf"], name="dequant_b", axis=0),
             helper.make_node("Conv", ["xf", "wf", "bf"], ["yf"], name="conv0", strides=list(strides),
                              dilations=list(dilations), pads=list(pads), group=group),
             helper.make_node("QuantizeLinear", ["yf", "y_s", "y_zp"], ["yq"], name="quant_y"),
             helper.make_node("DequantizeLinear", ["yq", "y_s", "y_zp"], ["y"], name="dequant_y")]
    shape = in_shape if in_shape is not None else ["N", cin, hw[0], hw[1]]
    return _model(nodes, inits, [_io("x", shape)], [_io("y", None)])


def qlinear_conv(*, cin=2, cout=3, k=(3, 3), hw=(5, 5), w_scale_len=None, w_zp_len=None,
                 bias_len=None, strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0), group=1):
    """QOperator: x -> QuantizeLinear -> QLinearConv -> DequantizeLinear -> y."""
    rng = np.random.default_rng(1)
    w = rng.integers(-50, 50, (cout, cin // max(group, 1) or 1) + tuple(k)).astype(np.int8)
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (_f(0.05), "x_s"), (np.array(0, np.int8), "x_zp"), (w, "w"),
        (_f(np.full(w_scale_len or cout, 0.01)), "w_s"),
        (np.zeros(w_zp_len or (w_scale_len or cout), np.int8), "w_zp"),
        (_f(0.1), "y_s"), (np.array(0, np.int8), "y_zp"),
        (rng.integers(-99, 99, bias_len or cout).astype(np.int32), "b"))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"], name="quant_x"),
             helper.make_node("QLinearConv", ["xq", "x_s", "x_zp", "w", "w_s", "w_zp", "y_s", "y_zp", "b"],
                              ["yq"], name="qconv0", strides=list(strides), dilations=list(dilations),
                              pads=list(pads), group=group),
             helper.make_node("DequantizeLinear", ["yq", "y_s", "y_zp"], ["y"], name="dequant_y")]
    return _model(nodes, inits, [_io("x", ["N", cin, hw[0], hw[1]])], [_io("y", None)])


def gemm_qdq(*, k_in=8, k_w=8, n=5, w_scale_len=None, w_zp_len=None, bias_len=None, w_rank=2,
             trans_b=0, w_axis=1):
    """x[N,k_in] -> Q -> DQ -> Gemm(DQ(w[k_w,n]) per column, DQ(bias)) -> Q -> DQ -> y."""
    rng = np.random.default_rng(2)
    shape = (k_w, n) if w_rank == 2 else (k_w, n, 1)
    if trans_b:
        shape = (n, k_w)
    w = rng.integers(-90, 90, shape).astype(np.int8)
    ws = _f(np.full(w_scale_len or n, 0.02))
    inits = [numpy_helper.from_array(a, nm) for a, nm in (
        (_f(0.05), "x_s"), (np.array(0, np.int8), "x_zp"), (w, "w"), (ws, "w_s"),
        (np.zeros(w_zp_len or ws.size, np.int8), "w_zp"),
        (rng.integers(-99, 99, bias_len or n).astype(np.int32), "b"),
        (_f(np.full(bias_len or n, 0.001)), "b_s"), (np.zeros(bias_len or n, np.int32), "b_zp"),
        (_f(0.1), "y_s"), (np.array(0, np.int8), "y_zp"))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"], name="quant_x"),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xf"], name="dequant_x"),
             helper.make_node("DequantizeLinear", ["w", "w_s", "w_zp"], ["wf"], name="dequant_w", axis=w_axis),
             helper.make_node("DequantizeLinear", ["b", "b_s", "b_zp"], ["bf"], name="dequant_b", axis=0),
             helper.make_node("Gemm", ["xf", "wf", "bf"], ["yf"], name="gemm0", transB=trans_b),
             helper.make_node("QuantizeLinear", ["yf", "y_s", "y_zp"], ["yq"], name="quant_y"),
             helper.make_node("DequantizeLinear", ["yq", "y_s", "y_zp"], ["y"], name="dequant_y")]
    return _model(nodes, inits, [_io("x", ["N", k_in])], [_io("y", None)])


def unary_qdq(op: str, *, in_shape=("N", 2, 6, 6), inits=(), extra_inputs=(), **attrs):
    """x -> Q -> DQ -> OP(attrs) -> Q -> DQ -> y, the op named ``op0``."""
    base = [numpy_helper.from_array(_f(0.05), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    base += [numpy_helper.from_array(np.asarray(a), n) for n, a in inits]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="quant_x"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"], name="dequant_x"),
             helper.make_node(op, ["xf"] + list(extra_inputs), ["yf"], name="op0", **attrs),
             helper.make_node("QuantizeLinear", ["yf", "s", "z"], ["yq"], name="quant_y"),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"], name="dequant_y")]
    return _model(nodes, base, [_io("x", list(in_shape))], [_io("y", None)])


def concat_qdq(axis: int):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="quant_x"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"], name="dequant_x"),
             helper.make_node("Concat", ["xf", "xf"], ["yf"], name="op0", axis=axis),
             helper.make_node("QuantizeLinear", ["yf", "s", "z"], ["yq"], name="quant_y"),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"], name="dequant_y")]
    inits = [numpy_helper.from_array(_f(0.05), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    return _model(nodes, inits, [_io("x", ["N", 2, 3, 3])], [_io("y", None)])


def write_onnx(model: onnx.ModelProto, path) -> str:
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return str(path)


# ------------------------------------------------------------------------------------ TFLite

def conv_tflite(*, w_scale_len=2, bias_len=2, stride=(1, 1), dilation=(1, 1), x_shape=(1, 5, 7, 3),
                w_shape=(2, 3, 3, 3), y_shape=(1, 3, 5, 2), padding="VALID") -> bytes:
    """One int8 CONV_2D, x[1,5,7,3] -> y[1,3,5,2]; its weights hold the bytes 0x5A.. (a marker)."""
    b = ModelBuilder()
    x = b.tensor("x", list(x_shape), "int8", scale=0.05, zero_point=3)
    ws = np.full(w_scale_len, 0.01, np.float32)
    n_w = int(np.prod(w_shape))
    w = b.tensor("w", list(w_shape), "int8", scale=ws, zero_point=[0] * w_scale_len,
                 quantized_dimension=0, data=np.full(n_w, 0x5A, np.int8))
    bias = b.tensor("b", [bias_len], "int32", scale=np.full(bias_len, 0.0005, np.float32),
                    zero_point=[0] * bias_len, data=np.arange(bias_len, dtype=np.int32))
    y = b.tensor("y", list(y_shape), "int8", scale=0.1, zero_point=-4)
    b.op("CONV_2D", [x, w, bias], [y], options=("Conv2DOptions", {
        "padding": padding, "stride_w": stride[1], "stride_h": stride[0], "dilation_w_factor": dilation[1],
        "dilation_h_factor": dilation[0], "fused_activation_function": "NONE"}))
    return b.finish([x], [y])


def tflite_weight_len_past_eof(data: bytes) -> bytes:
    """The weight buffer's length prefix made to claim 2 GiB: the vector runs past the file end."""
    marker = bytes([0x5A]) * 54
    at = data.index(marker)
    return data[:at - 4] + (0x7FFFFFF0).to_bytes(4, "little") + data[at:]
