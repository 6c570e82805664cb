"""`mrq requant` then `mrq check` on real zoo models (/work/shared/models/tflite_zoo), one per
failure class that `bench/tflite_zoo_requant.py` found, through the CLI: exit codes, the
written model, and the one-line refusals of what an NNA profile cannot run or ONNX QDQ
cannot hold. The full table is that bench script."""
from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

ZOO = os.environ.get("MRQ_TFLITE_ZOO", "/work/shared/models/tflite_zoo")
SEANET = os.path.join(ZOO, "tflm_integration_int16", "tfmicro_seanet")

pytestmark = pytest.mark.skipif(not os.path.isdir(ZOO), reason=f"no model zoo at {ZOO}")


def mrq(capsys, *argv) -> tuple:
    from mrq.cli import main
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def profile_with_ops(tmp_path, base: str, ops: list) -> str:
    """The shipped ``base`` profile with ``ops`` added to its supported_ops (where missing)."""
    from mrq.hw_profile import load_profile
    with open(load_profile(base).source) as f:
        data = yaml.safe_load(f)
    data["name"] = f"{base}-plus"
    data["supported_ops"] = data["supported_ops"] + [op for op in ops if op not in data["supported_ops"]]
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_int16_to_int32_quantize_gets_a_multiplier_the_nna_holds(tmp_path, capsys):
    """SEANet quantize1: QUANTIZE int16 -> int32. Re-quantized to 8 bits, the input grid is ~2**18
    times the int32 output grid: a multiplier that needs a left shift nna-sym8 does not have (`mrq
    check` failed). The int32 output grid is raised instead, keeping its zero point, and the
    result equals the input model up to the 8-bit input grid."""
    model = os.path.join(SEANET, "quantize_quantize1.tflite")
    out = tmp_path / "q1.onnx"
    rng = np.random.default_rng(0)
    codes = np.clip(np.rint(rng.normal(0, 4096, (8, 2, 160, 2))), -32768, 32767).astype(np.int16)
    np.savez(tmp_path / "calib.npz", tensor_0=codes)
    for profile in ("nna-sym8", "nna-sym8-pow2"):
        code, stdout, err = mrq(capsys, "requant", model, "--profile", profile, "-o", out,
                                "--calib", tmp_path / "calib.npz")
        assert code == 0, err
        assert "still outside the limits" not in stdout
        assert mrq(capsys, "check", out, "--profile", profile, "-q")[0] == 0
    from mrq.api import simulate
    from mrq.onnx_import import load_model
    from mrq.passes.base import feeds_for_new_graph
    from mrq.tflite_import import import_tflite
    graph, written = import_tflite(model), load_model(str(out))
    assert written.tensors["tensor_1"].qparams.dtype == "int32"
    assert int(written.tensors["tensor_1"].qparams.zero_point[0]) == 0
    ref = simulate(graph, "tflite-int8", {"tensor_0": codes}, fidelity=False).outputs["tensor_1"]
    got = simulate(written, "nna-sym8-pow2", feeds_for_new_graph(graph, written, {"tensor_0": codes}),
                   fidelity=False).outputs["tensor_1"]
    real = lambda g, y: g.tensors["tensor_1"].qparams.dequantize(y)
    in_step = float(written.tensors["tensor_0_codes"].qparams.scale[0])
    assert np.max(np.abs(real(graph, ref) - real(written, got))) <= in_step / 2 + 1e-6


def test_integer_input_model_without_calibration_requantizes_and_checks(tmp_path, capsys):
    """The data-free path on an int8-input model (error folding once read ``<input>_codes``,
    which only calibration creates: KeyError on 11 of 30 real models)."""
    out = tmp_path / "hw.onnx"
    code, _, err = mrq(capsys, "requant", os.path.join(ZOO, "tfmicro", "hello_world_int8.tflite"),
                       "--profile", "nna-w4a8", "-o", out)
    assert code == 0, err
    assert mrq(capsys, "check", out, "--profile", "nna-w4a8", "-q")[0] == 0


@pytest.mark.parametrize("model, op, node", [
    ("coral/keras_lstm_mnist_ptq.tflite", "LSTM", "unidirectional_sequence_lstm_1"),
    ("tfmicro/keyword_scrambled.tflite", "Svdf", "svdf_1"),
])
def test_an_op_the_profile_lacks_is_a_one_line_refusal(tmp_path, capsys, model, op, node):
    # with the pass unroll_recurrent off (it writes these ops as per-step ops nna-sym8 runs)
    out = tmp_path / "x.onnx"
    code, _, err = mrq(capsys, "requant", os.path.join(ZOO, model), "--profile", "nna-sym8", "-o", out,
                       "--disable", "unroll_recurrent")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert f"unsupported op '{op}' at node '{node}'" in lines[0] and "'nna-sym8' does not support it" in lines[0]
    assert not out.exists()


def test_an_op_onnx_qdq_cannot_hold_is_a_one_line_refusal(tmp_path, capsys):
    """A profile that lists LSTM gets past the op check; the integer LSTM has no ONNX QDQ form,
    so writing the result is refused (was an AttributeError in the exporter)."""
    prof = profile_with_ops(tmp_path, "nna-sym8", ["LSTM"])
    out = tmp_path / "lstm.onnx"
    code, _, err = mrq(capsys, "requant", os.path.join(ZOO, "coral", "keras_lstm_mnist_ptq.tflite"),
                       "--profile", prof, "-o", out)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "unsupported op 'LSTM' at node 'unidirectional_sequence_lstm_1'" in lines[0]
    assert "ONNX QDQ" in lines[0]
    assert not out.exists()


def _mean_model(tmp_path) -> str:
    """A generated int8 MEAN over H and W (tf2 MobileNetV2's head), no zoo model small enough."""
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from tflite_builder import ModelBuilder
    b = ModelBuilder()
    x = b.tensor("x", [1, 5, 6, 8], "int8", scale=0.05, zero_point=-3)
    ax = b.tensor("axes", [2], "int32", data=np.array([1, 2], np.int32))
    y = b.tensor("y", [1, 8], "int8", scale=0.02, zero_point=9)
    b.op("MEAN", [x, ax], [y], options=("ReducerOptions", {"keep_dims": False}))
    path = tmp_path / "mean.tflite"
    path.write_bytes(b.finish([x], [y]))
    return str(path)


@pytest.mark.parametrize("model, ops, op", [
    ("pad_pad1.tflite", ["Pad"], "Pad"),                             # PAD, int16
    ("strided_slice_strided_slice1.tflite", ["Slice"], "Take"),     # STRIDED_SLICE, int16
    (None, ["Mean"], "Mean"),                                        # MEAN, int8
])
def test_pad_mean_and_data_movement_are_written_and_read_back_unchanged(tmp_path, capsys, model, ops, op):
    """With the op in supported_ops, the re-quantized model is written (the exporter had no Pad,
    Mean or Take) and the file simulates exactly as the re-quantized graph before writing."""
    from mrq.api import simulate
    from mrq.onnx_import import load_model
    from mrq.passes.base import feeds_for_new_graph
    from mrq.requant import requantize
    from mrq.tflite_import import import_tflite
    path = os.path.join(SEANET, model) if model else _mean_model(tmp_path)
    prof = profile_with_ops(tmp_path, "nna-sym8", ops)
    out = tmp_path / "m.onnx"
    code, _, err = mrq(capsys, "requant", path, "--profile", prof, "-o", out)
    assert code == 0, err
    assert mrq(capsys, "check", out, "--profile", prof, "-q")[0] == 0
    graph = import_tflite(path)
    new, _ = requantize(graph, prof)
    written = load_model(str(out))
    assert [n.op for n in written.nodes if n.op == op] == [n.op for n in new.nodes if n.op == op] == [op]
    rng = np.random.default_rng(1)
    feeds = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        lo, hi = np.iinfo(np.dtype(t.dtype)).min, np.iinfo(np.dtype(t.dtype)).max
        feeds[name] = rng.integers(lo, hi + 1, (3,) + tuple(t.shape[1:])).astype(t.dtype)
        feeds[name].reshape(3, -1)[0, :2] = (lo, hi)    # the extreme codes
    before = simulate(new, prof, feeds_for_new_graph(graph, new, feeds), fidelity=False).outputs
    after = simulate(written, prof, feeds_for_new_graph(graph, written, feeds), fidelity=False).outputs
    for name in graph.outputs:
        np.testing.assert_array_equal(before[name], after[name])


def test_int16_activations_become_the_profiles_8_bits(tmp_path, capsys):
    """``--profile nna-sym8`` on a 16x8 model (SEANet conv20: int16 activations, int8 weights,
    int64 bias) means 8-bit activations: every activation of the written model is int8."""
    from mrq.onnx_import import load_model
    from mrq.tflite_import import import_tflite
    model = os.path.join(SEANET, "conv_conv20.tflite")
    graph = import_tflite(model)
    assert {graph.tensors[n].dtype for n in graph.nodes[0].outputs} == {"int16"}
    out = tmp_path / "c.onnx"
    code, _, err = mrq(capsys, "requant", model, "--profile", "nna-sym8", "-o", out)
    assert code == 0, err
    assert mrq(capsys, "check", out, "--profile", "nna-sym8", "-q")[0] == 0
    written = load_model(str(out))
    acts = {written.tensors[o].dtype for n in written.nodes for o in n.outputs
            if written.tensors[o].qparams is not None}
    assert acts == {"int8"}


@pytest.mark.parametrize("model", ["tfmicro/mnist_lstm_int8.tflite", "tfmicro/keyword_scrambled.tflite"])
def test_recurrent_zoo_models_requantize_unrolled_and_pass_check(tmp_path, capsys, model):
    """The zoo's integer LSTM and SVDF models on an NNA profile that runs neither: the pass
    unroll_recurrent writes them as per-step ops the profile has, and the result passes check."""
    out = tmp_path / "rq.onnx"
    code, _, err = mrq(capsys, "requant", os.path.join(ZOO, model), "--profile", "nna-sym8", "-o", out)
    assert code == 0, err
    code, _, err = mrq(capsys, "check", out, "--profile", "nna-sym8")
    assert code == 0, err
    import onnx
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert not ops & {"LSTM", "Svdf"} and ops & {"Gemm", "MatMul", "QLinearMatMul"}, ops
