"""`mrq sim` contract: outputs, report, and one clear line + exit code 2 for every user error,
with no output file left behind."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import pytest
from cli_in_process import mrq_in_process
from onnx import TensorProto, helper, numpy_helper

from mrq.demo import DEMO_MODEL, demo_inputs


def mrq(*args):
    """A real process: the tests of the contract's first cases run the entry point itself."""
    return subprocess.run([sys.executable, "-m", "mrq.cli", *args], capture_output=True, text=True,
                          check=False)


cli = mrq_in_process


@pytest.fixture()
def inputs(tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, **demo_inputs(4))
    return path


def test_sim_writes_outputs_report_and_dump(tmp_path, inputs):
    out, report = tmp_path / "out.npz", tmp_path / "r.json"
    r = mrq("sim", DEMO_MODEL, "--profile", "onnxruntime-cpu", "--inputs", str(inputs), "--out", str(out),
            "--report", str(report), "--dump-all")
    assert r.returncode == 0, r.stderr
    assert "SQNR" in r.stdout and "stem_conv" in r.stdout
    with np.load(out) as data:
        assert data["logits"].dtype == np.float32 and data["logits"].shape == (4, 10)
        assert len(data.files) > 5                      # --dump-all: every intermediate tensor
    rep = json.loads(report.read_text())
    assert rep["profile"] == "onnxruntime-cpu" and rep["layers"][1]["layer"] == "stem_conv"


def test_integer_inputs_are_taken_as_codes(tmp_path):
    feeds = demo_inputs(3)
    from mrq.api import simulate
    float_out = simulate(DEMO_MODEL, "tflite-int8", feeds, fidelity=False, trace=True)
    q_name = next(k for k in float_out.trace if k.startswith("input_QuantizeLinear"))
    codes = float_out.trace[q_name]
    path, out = tmp_path / "codes.npz", tmp_path / "o.npz"
    np.savez(path, input=codes)
    # in this process: how inputs are read is the command's code (the entry point is run above)
    r = cli("sim", DEMO_MODEL, "--profile", "tflite-int8", "--inputs", str(path), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    with np.load(out) as data:
        np.testing.assert_array_equal(data["logits"], float_out.outputs["logits"])


def _assert_user_error(r, out, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".mrq-")]


def test_missing_and_corrupt_model(tmp_path, inputs):
    out = tmp_path / "o.npz"
    _assert_user_error(mrq("sim", str(tmp_path / "nope.onnx"), "--profile", "nna-sym8", "--inputs", str(inputs),
                           "--out", str(out)), out, "nope.onnx", "no such file")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x12\x34not a model\xff")
    # in this process: the entry point's user-error exit is the missing model's case above
    _assert_user_error(cli("sim", str(bad), "--profile", "nna-sym8", "--inputs", str(inputs), "--out", str(out)),
                       out, "bad.onnx")


def test_float_model(tmp_path, inputs):
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["y"])], "f",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path, out = tmp_path / "float.onnx", tmp_path / "o.npz"
    onnx.save(helper.make_model(g), str(path))
    _assert_user_error(cli("sim", str(path), "--profile", "nna-sym8", "--inputs", str(inputs), "--out", str(out)),
                       out, "not quantized")


def test_unsupported_op_names_node(tmp_path, inputs):
    model = onnx.load(DEMO_MODEL)
    node = next(n for n in model.graph.node if n.op_type == "MaxPool")
    node.op_type = "LpPool"
    path, out = tmp_path / "lp.onnx", tmp_path / "o.npz"
    onnx.save(model, str(path))
    _assert_user_error(cli("sim", str(path), "--profile", "onnxruntime-cpu", "--inputs", str(inputs),
                           "--out", str(out)), out, "LpPool", node.name)


def test_malformed_profile_names_file_and_field(tmp_path, inputs):
    prof = tmp_path / "bad.yaml"
    text = pathlib.Path(DEMO_MODEL.replace("mrq/data/demo_cnn.onnx",
                                           "hw_profiles/nna-sym8.yaml")).read_text()
    prof.write_text(text.replace("overflow: wrap", "overflow: wrapp"))
    out = tmp_path / "o.npz"
    _assert_user_error(cli("sim", DEMO_MODEL, "--profile", str(prof), "--inputs", str(inputs), "--out", str(out)),
                       out, "bad.yaml", "accumulator.overflow", "wrap, saturate, error")
    _assert_user_error(cli("sim", DEMO_MODEL, "--profile", "no-such-profile", "--inputs", str(inputs),
                           "--out", str(out)), out, "no-such-profile")


@pytest.mark.parametrize("arrays,needles", [
    ({"images": np.zeros((2, 3, 16, 16), np.float32)}, ["'images'", "'input'"]),
    ({"input": np.zeros((2, 3, 8, 16), np.float32)}, ["'input'", "(N, 3, 16, 16)", "(2, 3, 8, 16)"]),
    ({"input": np.zeros((2, 3, 16, 16), np.uint8)}, ["'input'", "int8", "uint8"]),
    ({"input": np.zeros((2, 3, 16, 16), np.complex64)}, ["'input'", "complex64"]),
])
def test_wrong_inputs(tmp_path, arrays, needles):
    path, out = tmp_path / "in.npz", tmp_path / "o.npz"
    np.savez(path, **arrays)
    _assert_user_error(cli("sim", DEMO_MODEL, "--profile", "onnxruntime-cpu", "--inputs", str(path),
                           "--out", str(out)), out, *needles)


def test_unreadable_inputs_and_output_dir(tmp_path, inputs):
    out = tmp_path / "o.npz"
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    _assert_user_error(cli("sim", DEMO_MODEL, "--profile", "onnxruntime-cpu", "--inputs", str(junk),
                           "--out", str(out)), out, "junk.npz")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, input=np.array([object()], dtype=object))
    _assert_user_error(cli("sim", DEMO_MODEL, "--profile", "onnxruntime-cpu", "--inputs", str(pickled),
                           "--out", str(out)), out, "pickled.npz")
    r = cli("sim", DEMO_MODEL, "--profile", "onnxruntime-cpu", "--inputs", str(inputs),
            "--out", str(tmp_path / "missing_dir" / "o.npz"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_profiles_lists_every_shipped_profile():
    r = cli("profiles")
    assert r.returncode == 0
    for name in ("onnxruntime-cpu", "tflite-int8", "nna-sym8", "nna-sym8-pow2", "nna-a16w8", "nna-sym8-acc20"):
        assert name in r.stdout


def test_no_fidelity_runs_in_batches_with_the_same_outputs(tmp_path):
    """--no-fidelity (fast NHWC program, --batch-size chunks, progress bar) writes exactly the
    outputs of the full run."""
    feeds = demo_inputs(7, seed=4)
    path = tmp_path / "in.npz"
    np.savez(path, **feeds)
    full, fast = tmp_path / "full.npz", tmp_path / "fast.npz"
    r = cli("sim", DEMO_MODEL, "--profile", "nna-sym8", "--inputs", str(path), "--out", str(full), "-q")
    assert r.returncode == 0, r.stderr
    r = cli("sim", DEMO_MODEL, "--profile", "nna-sym8", "--inputs", str(path), "--out", str(fast),
            "--no-fidelity", "--batch-size", "3")
    assert r.returncode == 0, r.stderr
    assert "SQNR" not in r.stdout and "batch 7" in r.stdout
    with np.load(full) as a, np.load(fast) as b:
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("profile,compiles", [("nna-sym8", True), ("nna-sym8-acc20", False)])
def test_no_fidelity_compiled_program_same_outputs(tmp_path, profile, compiles):
    """--compile yes with batch 1: the whole program runs as one compiled function (or, when a
    step has no launch, step by step with a note) and writes the interpreter's outputs."""
    feeds = demo_inputs(5, seed=2)
    path = tmp_path / "in.npz"
    np.savez(path, **feeds)
    full, fast = tmp_path / "full.npz", tmp_path / "fast.npz"
    r = cli("sim", DEMO_MODEL, "--profile", profile, "--inputs", str(path), "--out", str(full), "-q")
    assert r.returncode == 0, r.stderr
    r = cli("sim", DEMO_MODEL, "--profile", profile, "--inputs", str(path), "--out", str(fast),
            "--no-fidelity", "--batch-size", "1", "--compile", "yes")
    assert r.returncode == 0, r.stderr
    if compiles:
        assert "compiled the program for batch 1" in r.stderr
    else:
        assert "does not compile" in r.stderr and "step by step" in r.stderr
    with np.load(full) as a, np.load(fast) as b:
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])


def test_no_fidelity_user_errors(tmp_path, inputs):
    out = tmp_path / "o.npz"
    r = cli("sim", DEMO_MODEL, "--profile", "nna-sym8", "--inputs", str(inputs), "--out", str(out),
            "--no-fidelity", "--dump-all")
    _assert_user_error(r, out, "--dump-all", "--no-fidelity")
    r = cli("sim", DEMO_MODEL, "--profile", "nna-sym8", "--inputs", str(inputs), "--out", str(out),
            "--no-fidelity", "--batch-size", "0")
    _assert_user_error(r, out, "--batch-size")
