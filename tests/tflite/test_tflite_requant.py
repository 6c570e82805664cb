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
    return subprocess.run([sys.executable, "-m", "mrq.cli", *args], capture_output=True, text=True)


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
