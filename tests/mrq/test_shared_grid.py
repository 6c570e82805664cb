"""ops.shared_grid: profiles whose hardware concatenates / adds raw codes need one grid on the
inputs and output of those ops; the re-quantizer ties them and `mrq check` reports violations."""
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mrq.api import profile_violations, resolve_profile
from mrq.errors import HwProfileError
from mrq.float_ref import FloatReference
from mrq.lower import arithmetic_from_profile, lower
from mrq.metrics import sqnr_db
from mrq.onnx_export import export_onnx
from mrq.onnx_import import load_model
from mrq.passes.grid_classes import shared_grid_violations
from mrq.requant import requantize

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
NNA = os.path.join(ROOT, "hw_profiles", "nna-sym8.yaml")


def _profile(tmp_path, shared="[Concat, Add]"):
    text = open(NNA).read().replace("name: nna-sym8\n", "name: nna-sym8-shared\n")
    text = text.replace("  softmax: float", f"  softmax: float\n  shared_grid: {shared}")
    path = tmp_path / "nna-sym8-shared.yaml"
    path.write_text(text)
    return str(path)


def _float_model(rng):
    """x -> conv a (ReLU) and conv b (no ReLU, larger range) -> Concat -> conv -> + skip -> y."""
    def conv(name, cin, cout, scale):
        w = (rng.standard_normal((cout, cin, 3, 3)) * scale).astype(np.float32)
        return numpy_helper.from_array(w, name)
    inits = [conv("wa", 3, 4, 0.3), conv("wb", 3, 4, 1.5), conv("wc", 8, 8, 0.2),
             conv("wd", 3, 8, 0.4)]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a0"], ["a"]),
        helper.make_node("Conv", ["x", "wb"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wd"], ["d"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "d"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    ort_q = pytest.importorskip("onnxruntime.quantization")
    rng = np.random.default_rng(3)
    tmp = tmp_path_factory.mktemp("shared")
    src, dst = tmp / "f.onnx", tmp / "q.onnx"
    onnx.save(_float_model(rng), str(src))

    class Reader(ort_q.CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(16)])

        def get_next(self):
            return next(self.items, None)

    ort_q.quantize_static(str(src), str(dst), Reader(), quant_format=ort_q.QuantFormat.QDQ,
                          activation_type=ort_q.QuantType.QUInt8, weight_type=ort_q.QuantType.QInt8,
                          per_channel=True)
    return load_model(str(dst))


def test_profile_field_parses_and_is_validated(tmp_path):
    prof = resolve_profile(_profile(tmp_path))
    assert prof.ops.shared_grid == ("Concat", "Add")
    assert resolve_profile("nna-sym8").ops.shared_grid == ()
    with pytest.raises(HwProfileError, match=r"ops\.shared_grid\[0\].*Concat, Add.*'Conv'"):
        resolve_profile(_profile(tmp_path, "[Conv]"))


def test_requant_ties_concat_and_add_grids(quantized, tmp_path):
    profile = resolve_profile(_profile(tmp_path))
    assert shared_grid_violations(quantized, profile.ops.shared_grid)  # the input model breaks it
    calib = {"x": np.random.default_rng(5).standard_normal((32, 3, 8, 8)).astype(np.float32)}
    new, _ = requantize(quantized, profile, calib)
    assert shared_grid_violations(new, profile.ops.shared_grid) == []
    assert profile_violations(new, profile) == []
    assert any("shared grid" in line for line in profile_violations(quantized, profile))
    for op in ("Concat", "Add"):
        node = next(n for n in new.nodes if n.op == op)
        grids = [new.tensors[t].qparams for t in node.inputs + node.outputs]
        assert all(g.same_grid(grids[0]) for g in grids)
    # Concat then needs no rescale step in the integer program
    assert _rescales(new, profile) == []
    # ... and the model still computes the same function (tied grids cover every member's range)
    old = FloatReference(quantized, fake_quant=True).run(calib)["y"]
    got = FloatReference(new, fake_quant=True).run(calib)["y"]
    assert sqnr_db(old, got) > 25
    # the tie survives the ONNX round trip
    path = tmp_path / "out.onnx"
    onnx.save(export_onnx(new), str(path))
    assert shared_grid_violations(load_model(str(path)), profile.ops.shared_grid) == []


def test_without_the_field_concat_inputs_keep_their_own_grids(quantized):
    calib = {"x": np.random.default_rng(5).standard_normal((32, 3, 8, 8)).astype(np.float32)}
    new, _ = requantize(quantized, "nna-sym8", calib)
    node = next(n for n in new.nodes if n.op == "Concat")
    a, b = (new.tensors[t].qparams for t in node.inputs)
    assert not a.same_grid(b)
    assert _rescales(new, resolve_profile("nna-sym8"))  # the integer rescale the tie avoids


def _rescales(graph, profile):
    program = lower(graph, arithmetic_from_profile(profile)).program
    return [s for s in program.steps if s.kind == "rescale"]
