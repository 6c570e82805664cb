"""ONNX import: QDQ and QOperator graphs into the IR, and clear errors for bad models."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mrq.errors import ModelError, UnsupportedOpError
from mrq.onnx_import import import_onnx, load_model
from mrq.demo import DEMO_MODEL


def _model(nodes, inits, inp=("x", TensorProto.FLOAT, ["N", 2, 4, 4]), out=("y", TensorProto.FLOAT, None)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*inp)],
                              [helper.make_tensor_value_info(*out)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _qdq_relu_model(extra_op="Relu"):
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(3, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node(extra_op, ["xd"], ["r"], name="the_node"),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"])]
    return _model(nodes, inits)


def test_demo_model_imports_into_quantized_ops():
    g = load_model(DEMO_MODEL)
    ops = [n.op for n in g.nodes]
    assert ops[0] == "Quantize" and ops[-1] == "Dequantize"
    assert ops.count("Conv") == 4 and "Add" in ops and "Gemm" in ops and "GlobalAveragePool" in ops
    conv = next(n for n in g.nodes if n.op == "Conv")
    w = g.tensors[conv.inputs[1]]
    assert w.data.dtype == np.int8 and w.qparams.per_channel and w.qparams.axis == 0
    assert g.outputs == ["logits"]


def test_relu_on_one_grid_becomes_a_clamp():
    g = import_onnx(_qdq_relu_model())
    clamp = next(n for n in g.nodes if n.op == "Clamp")
    assert clamp.attrs["lo"] == 0.0 and clamp.attrs["hi"] is None


def test_unsupported_op_names_node_and_op():
    with pytest.raises(UnsupportedOpError, match="'Sin'.*'the_node'"):
        import_onnx(_qdq_relu_model("Sin"))


def test_float_model_is_rejected_as_unquantized():
    inits = [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")]
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"])], inits)
    with pytest.raises(ModelError, match="not quantized"):
        import_onnx(model)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not protobuf\xff\xff")
    with pytest.raises(ModelError, match="bad.onnx"):
        load_model(str(bad))
    with pytest.raises(ModelError, match="no such file"):
        load_model(str(tmp_path / "missing.onnx"))
