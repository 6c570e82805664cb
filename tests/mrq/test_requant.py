"""Re-quantizer: every pass on small models; the profile is satisfied afterwards; lossless rewrites
are exact; weight correction and error folding reduce error; clamps survive; bad inputs."""
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from mrq.api import profile_violations, resolve_profile, simulate
from mrq.demo import DEMO_MODEL, demo_inputs
from mrq.errors import InputDataError, ModelError, UnsupportedOpError
from mrq.float_ref import FloatReference
from mrq.onnx_export import export_onnx
from mrq.onnx_import import import_onnx, load_model
from mrq.passes.base import Options
from mrq.passes.weight_correction import gptq_round
from mrq.requant import requantize

TARGETS = ["nna-sym8", "nna-sym8-pow2", "nna-w4a8", "nna-w4a8-pow2", "nna-a16w8", "tflite-int8"]


@pytest.fixture(scope="module")
def demo_graph():
    return load_model(DEMO_MODEL)


@pytest.fixture(scope="module")
def calib():
    return demo_inputs(32, seed=1)


@pytest.mark.parametrize("profile", TARGETS)
def test_result_satisfies_profile_and_round_trips_through_onnx(demo_graph, calib, profile, tmp_path):
    new, report = requantize(demo_graph, profile, calib)
    assert profile_violations(new, resolve_profile(profile)) == []
    model = export_onnx(new)                       # runs onnx.checker
    path = tmp_path / "out.onnx"
    onnx.save(model, str(path))
    reimported = load_model(str(path))
    assert profile_violations(reimported, resolve_profile(profile)) == []
    feeds = demo_inputs(4, seed=3)
    a = simulate(new, profile, feeds, fidelity=False).outputs
    b = simulate(reimported, profile, feeds, fidelity=False).outputs
    np.testing.assert_array_equal(a["logits"], b["logits"])
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, feeds)
    assert logits.shape == (4, 10)


def test_input_graph_is_not_modified(demo_graph, calib):
    before = {n: (t.qparams, None if t.data is None else t.data.copy()) for n, t in demo_graph.tensors.items()}
    requantize(demo_graph, "nna-w4a8-pow2", calib)
    for name, (qp, data) in before.items():
        t = demo_graph.tensors[name]
        assert t.qparams is qp
        if data is not None:
            np.testing.assert_array_equal(t.data, data)


def test_implied_relu_survives_symmetric_requantization(demo_graph, calib):
    # stem_conv's output grid is int8 with zero point -128: the grid *is* the ReLU (the Relu
    # node was deleted by the quantizer). After moving to symmetric int8 the codes must stay >= 0.
    out = next(n for n in demo_graph.nodes if n.name == "stem_conv").outputs[0]
    assert demo_graph.tensors[out].qparams.zero_point[0] == -128
    new, _ = requantize(demo_graph, "nna-sym8", calib)
    assert new.tensors[out].qparams.zero_point[0] == 0
    feeds = demo_inputs(8, seed=5)
    trace = simulate(new, "nna-sym8", feeds, fidelity=False, trace=True).trace
    assert trace[out].min() >= 0
    without = Options(disabled=frozenset({"explicit_clamps"}))
    unclamped, _ = requantize(demo_graph, "nna-sym8", calib, without)
    trace = simulate(unclamped, "nna-sym8", feeds, fidelity=False, trace=True).trace
    assert trace[out].min() < 0, "the test must be able to fail: without the pass the ReLU is lost"


@pytest.fixture(scope="module")
def uint8_model(tmp_path_factory):
    ort_q = pytest.importorskip("onnxruntime.quantization")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
    from make_demo_model import Reader, float_model
    tmp = tmp_path_factory.mktemp("u8")
    src, dst = tmp / "f.onnx", tmp / "q.onnx"
    onnx.save(float_model(np.random.default_rng(7)), str(src))
    ort_q.quantize_static(str(src), str(dst), Reader(np.random.default_rng(8)), quant_format=ort_q.QuantFormat.QDQ,
                          activation_type=ort_q.QuantType.QUInt8, weight_type=ort_q.QuantType.QInt8,
                          per_channel=True)
    return load_model(str(dst))


def test_uint8_to_int8_is_exactly_lossless(uint8_model):
    # ORT uint8 asymmetric activations -> TFLite int8 asymmetric: a zero-point shift of 128.
    new, report = requantize(uint8_model, "tflite-int8", None)
    acts = [c for c in report.changes if c.role == "activations"]
    assert acts and all(c.lossless for c in acts)
    assert all(new.tensors[c.tensor].qparams.dtype == "int8" for c in acts)
    feeds = demo_inputs(6, seed=9)
    old = FloatReference(uint8_model, fake_quant=True).run(feeds)
    fresh = FloatReference(new, fake_quant=True).run(feeds)
    for name in new.tensors:
        if name in old and name in fresh:
            np.testing.assert_array_equal(old[name], fresh[name])


def test_sequential_rounding_beats_round_to_nearest():
    rng = np.random.default_rng(0)
    k, m = 48, 12
    mix = rng.standard_normal((k, k))
    x = rng.standard_normal((4000, k)) @ mix / np.sqrt(k)          # correlated inputs
    w = rng.standard_normal((m, k)) * 0.1
    scale = np.abs(w).max(axis=1) / 7                               # 4-bit symmetric
    h = (x.T @ x / len(x))[None]
    codes = gptq_round(w[None], h, scale[None], np.zeros((1, m)), -7, 7)[0]
    rtn = np.clip(np.rint(w / scale[:, None]), -7, 7)

    def out_mse(q):
        return float(np.mean(np.square(x @ (q * scale[:, None] - w).T)))
    assert out_mse(codes) < 0.7 * out_mse(rtn)


def test_weight_correction_and_error_folding_reduce_layer_error(demo_graph, calib):
    _, report = requantize(demo_graph, "nna-w4a8", calib)
    wc = report.layer_errors["weight_correction"]
    assert all(after <= before for before, after in wc.values())
    assert sum(a for _, a in wc.values()) < 0.8 * sum(b for b, _ in wc.values())
    folding = report.layer_errors["error_folding"]
    assert sum(a for _, a in folding.values()) < sum(b for b, _ in folding.values())


def test_full_method_beats_naive_end_to_end(demo_graph, calib):
    feeds = demo_inputs(32, seed=11)
    target = FloatReference(demo_graph, fake_quant=True).run(feeds)["logits"]
    errors = {}
    for label, opts in {"naive": Options(False, False, False), "full": Options()}.items():
        new, _ = requantize(demo_graph, "nna-w4a8-pow2", calib, opts)
        out = simulate(new, "nna-w4a8-pow2", feeds, fidelity=False).outputs["logits"]
        errors[label] = float(np.mean(np.square(out - target)))
    assert errors["full"] < 0.5 * errors["naive"]


def test_data_free_error_folding_runs_without_calibration(demo_graph):
    new, report = requantize(demo_graph, "nna-sym8-pow2", None)
    assert any("data-free" in n for n in report.notes)
    assert profile_violations(new, resolve_profile("nna-sym8-pow2")) == []


def test_float_model_is_rejected(tmp_path):
    from onnx import TensorProto, helper, numpy_helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "f",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(ModelError, match="not quantized"):
        import_onnx(helper.make_model(g))


def test_unsupported_op_for_profile_names_the_node(demo_graph, tmp_path):
    text = open(os.path.join(os.path.dirname(__file__), "..", "..", "hw_profiles", "nna-sym8.yaml")).read()
    text = text.replace("supported_ops: [Conv, Gemm, MatMul, Add,", "supported_ops: [Conv, Gemm, MatMul,")
    text = text.replace("\n  add: fixed ", "\n  # add: fixed ")  # a profile states no mode for an op it lacks
    path = tmp_path / "no-add.yaml"
    path.write_text(text.replace("name: nna-sym8", "name: no-add"))
    with pytest.raises(UnsupportedOpError, match="residual_add"):
        requantize(demo_graph, str(path), None)


def test_calibration_with_wrong_names_or_shapes_is_named(demo_graph):
    with pytest.raises(InputDataError, match="'images'.*'input'"):
        requantize(demo_graph, "nna-sym8", {"images": np.zeros((2, 3, 16, 16), np.float32)})
    with pytest.raises(InputDataError, match=r"'input'.*\(N, 3, 16, 16\).*\(2, 3, 8, 8\)"):
        requantize(demo_graph, "nna-sym8", {"input": np.zeros((2, 3, 8, 8), np.float32)})


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mrq.cli", *args], capture_output=True, text=True, cwd=cwd)


def _cli_in_process(*args):
    from cli_in_process import mrq_in_process
    return mrq_in_process(*args)


def test_cli_never_overwrites_the_input_and_writes_atomically(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(DEMO_MODEL, model)
    before = model.read_bytes()
    r = _cli_in_process("requant", str(model), "--profile", "nna-sym8", "-o", str(model))
    assert r.returncode == 2 and "overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert model.read_bytes() == before
    bad_calib = tmp_path / "calib.npz"
    np.savez(bad_calib, wrong=np.zeros((1, 3, 16, 16), np.float32))
    out = tmp_path / "out.onnx"
    r = _cli_in_process("requant", str(model), "--profile", "nna-sym8", "-o", str(out), "--calib", str(bad_calib))
    assert r.returncode == 2 and "'wrong'" in r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".mrq-")]


def test_cli_requant_then_check_and_sim(tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, **demo_inputs(16, seed=1))
    out, report = tmp_path / "w4.onnx", tmp_path / "report.json"
    r = _cli("requant", DEMO_MODEL, "--profile", "nna-w4a8", "-o", str(out), "--calib", str(calib),
             "--report", str(report))
    assert r.returncode == 0, r.stderr
    assert "end-to-end SQNR" in r.stdout and "lossy" in r.stdout
    import json
    data = json.loads(report.read_text())
    assert data["violations"] == [] and data["changes"]
    sim_out = tmp_path / "o.npz"
    r = _cli("sim", str(out), "--profile", "nna-w4a8", "--inputs", str(calib), "--out", str(sim_out))
    assert r.returncode == 0, r.stderr
