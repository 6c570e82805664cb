"""`mrq requant MODEL.tflite`: a TFLite int8 model re-quantized to an NNA profile becomes an ONNX
QDQ model that satisfies the profile, loads in ONNX Runtime, and stays close to the input model."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

# the same location as the other TFLite tests (tflite_helpers.MODELS_DIR)
MLPERF = os.environ.get("MRQ_MLPERF_TINY", "/work/shared/models/mlperf_tiny")
KWS = os.path.join(MLPERF, "kws_ref_model.tflite")

pytestmark = pytest.mark.skipif(not os.path.exists(KWS), reason="MLPerf Tiny models not available")


def mrq(*args):
    """A real process: the first test runs requant and check through the entry point."""
    return subprocess.run([sys.executable, "-m", "mrq.cli", *args], capture_output=True, text=True,
                          check=False)


def cli(*args):
    """The other tests in this process (tests/cli_in_process.py): the same exit codes and
    output, without an interpreter start and its imports per command."""
    from cli_in_process import mrq_in_process
    return mrq_in_process(*args)


def test_requant_tflite_to_pow2_then_check_and_sim(tmp_path):
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_1=np.clip(np.rint(rng.normal(83, 32, (24, 49, 10, 1))), -128, 127).astype(np.int8))
    out, report = tmp_path / "kws.onnx", tmp_path / "r.json"
    r = mrq("requant", KWS, "--profile", "nna-sym8-pow2", "-o", str(out), "--calib", str(calib), "--report", str(report),
            "--float-model", os.path.join(MLPERF, "kws_ref_model_float32.tflite"))
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    assert data["violations"] == []
    # The int8 input became a float input quantized inside the model (lossless, reported).
    assert any(c["pass_name"] == "float_inputs" and c["lossless"] for c in data["changes"])
    assert float(data["end_to_end_sqnr_db"]["Identity"]) > 15.0
    rows = data["float_model_fidelity"]["tensors"]
    out_row = next(row for row in rows if row["tensor"] == "output Identity")
    assert float(out_row["requant_sqnr_db"]) > float(out_row["input_sqnr_db"]) - 3.0
    assert mrq("check", str(out), "--profile", "nna-sym8-pow2", "-q").returncode == 0
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    real = (np.load(calib)["input_1"].astype(np.float32) - 83) * np.float32(0.5847029089927673)
    (probs,) = sess.run(None, {"input_1": real})
    assert probs.shape == (24, 12)


RESNET8 = os.path.join(MLPERF, "pretrainedResnet_quant.tflite")


def _host_softmax_profile(tmp_path):
    """nna-sym8 as written, except that Softmax runs on the host (host_ops)."""
    import yaml
    from mrq.hw_profile import load_profile
    data = yaml.safe_load(open(load_profile("nna-sym8").source).read())
    data["name"] = "nna-sym8-host-softmax"
    data["supported_ops"] = [op for op in data["supported_ops"] if op != "Softmax"]
    data["ops"].pop("softmax", None)
    data["host_ops"] = ["Softmax"]
    path = tmp_path / "nna-sym8-host-softmax.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_resnet8_requant_to_nna_sym8_passes_check_and_softmax_runs_on_the_host(tmp_path):
    """MLPerf Tiny ResNet-8 (TFLite, int8 input) re-quantized to the shipped nna-sym8 passes
    `mrq check` with no edit to the profile; with Softmax in host_ops the lowered model places
    it on the host and the golden manifest says so."""
    out = tmp_path / "r8.onnx"
    r = cli("requant", RESNET8, "--profile", "nna-sym8", "-o", str(out))
    assert r.returncode == 0, r.stderr
    r = cli("check", str(out), "--profile", "nna-sym8", "-q")
    assert r.returncode == 0, r.stdout + r.stderr

    host = _host_softmax_profile(tmp_path)
    out_h = tmp_path / "r8_host.onnx"
    r = cli("requant", RESNET8, "--profile", str(host), "-o", str(out_h))
    assert r.returncode == 0, r.stderr
    assert cli("check", str(out_h), "--profile", str(host), "-q").returncode == 0
    from mrq.pipeline import Pipeline
    pipe = Pipeline(str(out_h), str(host), layout="native")
    host_steps = pipe.lowered.host_steps()
    assert host_steps and all(s.kind == "softmax" for s in pipe.program.steps
                              if s.name in host_steps)
    assert all(pipe.lowered.placement[s.name] == "npu" for s in pipe.program.steps
               if s.kind in ("conv", "gemm", "add"))
    feeds = tmp_path / "in.npz"
    rng = np.random.default_rng(1)
    np.savez(feeds, **{pipe.program.inputs[0].name: rng.normal(0, 1, (2, 32, 32, 3)).astype(np.float32)})
    gold = tmp_path / "golden"
    r = cli("golden", str(out_h), "--profile", str(host), "--inputs", str(feeds), "-o", str(gold))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((gold / "manifest.json").read_text())
    placements = {layer["kind"]: layer.get("placement") for layer in manifest["layers"]
                  if layer.get("kind") not in (None, "inputs")}
    assert placements.get("softmax") == "host" and placements.get("conv") == "npu"


def test_one_float_file_drives_the_tflite_model_and_its_requantized_variant(tmp_path):
    """The re-quantized KWS model keeps its input name; int8 codes made for the old input grid
    are refused with what to pass instead, and float values drive both models alike."""
    from mrq.api import simulate
    from mrq.errors import InputDataError
    from mrq.onnx_import import load_model
    out = tmp_path / "kws_sym8.onnx"
    r = cli("requant", KWS, "--profile", "nna-sym8", "-o", str(out))
    assert r.returncode == 0, r.stderr
    src, new = load_model(KWS), load_model(str(out))
    assert src.inputs == new.inputs
    name = src.inputs[0]
    qp = src.tensors[name].qparams
    rng = np.random.default_rng(2)
    codes = np.clip(np.rint(rng.normal(83, 32, (4, 49, 10, 1))), -128, 127).astype(np.int8)
    real = ((codes.astype(np.float32) - np.float32(qp.zero_point[0])) * np.float32(qp.scale[0]))
    with pytest.raises(InputDataError, match="moved this input off its original grid"):
        simulate(str(out), "nna-sym8", {name: codes}, fidelity=False)
    # the input model: float values land exactly on its codes
    a = simulate(KWS, "tflite-int8", {name: codes}, fidelity=False).outputs
    b = simulate(KWS, "tflite-int8", {name: real}, fidelity=False).outputs
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # the re-quantized model runs on the same float file and agrees with the input model
    c = simulate(str(out), "nna-sym8", {name: real}, fidelity=False).outputs
    k = next(iter(a))
    agree = np.mean(np.argmax(a[k], axis=-1) == np.argmax(c[k], axis=-1))
    assert agree >= 0.75
    # the command line refuses the old codes with exit 2 and one line
    feeds = tmp_path / "codes.npz"
    np.savez(feeds, **{name: codes})
    r = cli("sim", str(out), "--profile", "nna-sym8", "--inputs", str(feeds), "--out",
            str(tmp_path / "o.npz"), "--no-fidelity")
    assert r.returncode == 2 and "original grid" in r.stderr and "Traceback" not in r.stderr
