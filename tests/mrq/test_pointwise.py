"""A pointwise op added through mrq/pointwise.py alone (LeakyRelu) runs end to end: ONNX QDQ
import, a 256-entry table lowered with the profile's quantizer, bit-exact against ONNX Runtime,
and exported again by the re-quantizer."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.ort_host import ORT_PROFILE

ort = pytest.importorskip("onnxruntime")


def _float_model(alpha):
    rng = np.random.default_rng(4)
    w1 = numpy_helper.from_array(rng.normal(0, 0.4, (6, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (5, 6, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("LeakyRelu", ["c1"], ["l1"], alpha=alpha),
             helper.make_node("Conv", ["l1", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "leaky", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 3, 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 5, 8, 8])], initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.batches = iter([{"x": rng.normal(0, 1, (4, 3, 8, 8)).astype(np.float32)}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    path = tmp_path_factory.mktemp("leaky") / "leaky_qdq.onnx"
    quantize_static(_float_model(0.1), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    return path


def test_leaky_relu_is_a_table_and_bit_exact_against_onnxruntime(quantized):
    from mrq.api import prepare, simulate
    lowered = prepare(str(quantized), ORT_PROFILE, layout="native")
    assert [s.kind for s in lowered.program.steps].count("lut") == 1
    rng = np.random.default_rng(7)
    x = (rng.normal(0, 1.5, (16, 3, 8, 8))).astype(np.float32)
    got = simulate(str(quantized), ORT_PROFILE, {"x": x}, fidelity=False).outputs["y"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    want = ort.InferenceSession(str(quantized), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    assert got.shape == want.shape
    assert int(np.count_nonzero(got != want)) == 0


def test_leaky_relu_table_follows_the_profile_quantizer(quantized):
    """nna-sym8 quantizes by multiplication with round half up, ORT by division with round half
    to even: the tables are each profile's own."""
    from mrq.api import prepare
    tables = {}
    for name in (ORT_PROFILE, "nna-sym8"):
        steps = prepare(str(quantized), name, layout="native").program.steps
        (lut,) = [s for s in steps if s.kind == "lut"]
        tables[name] = np.asarray(lut.params["table"])
    assert tables[ORT_PROFILE].shape == (256,)
    # negative inputs are scaled by alpha: the table is monotone and not the identity
    assert np.all(np.diff(tables[ORT_PROFILE].astype(np.int64)) >= 0)


def test_leaky_relu_survives_requant_and_export(quantized, tmp_path):
    from mrq.api import simulate
    from mrq.commands.check import check_model
    from mrq.onnx_export import export_onnx
    from mrq.onnx_import import load_model
    from mrq.requant import requantize
    graph = load_model(str(quantized))
    new, _ = requantize(graph, "nna-sym8", None)
    model = export_onnx(new)
    assert any(n.op_type == "LeakyRelu" for n in model.graph.node)
    out = tmp_path / "leaky_sym8.onnx"
    onnx.save(model, str(out))
    lines, _, _ = check_model(str(out), "nna-sym8")
    assert not [line for line in lines if "LeakyRelu" in line], lines
    x = np.random.default_rng(3).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    assert simulate(str(out), "nna-sym8", {"x": x}, fidelity=True).layers
