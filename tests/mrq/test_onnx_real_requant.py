"""`mrq requant` on the committed real-architecture models (tests/data/onnx_real): an NNA profile
refuses the ops it lacks in one line naming node and op; with those ops on the host
(``host_ops``) the re-quantized model passes `mrq check` and runs in ONNX Runtime close to the
input model. bench/onnx_real_requant.py runs every generated model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mrq.hw_profile import load_profile
from tests.parity.ort_runner import run_ort

DATA = Path(__file__).resolve().parents[1] / "data" / "onnx_real"


def cli(*args):
    from cli_in_process import mrq_in_process
    return mrq_in_process(*args)


def _host_profile(tmp_path, ops) -> Path:
    """nna-sym8 with those of ``ops`` it does not run itself on the host (onnxruntime-cpu)."""
    base = load_profile("nna-sym8")
    doc = base.to_dict()
    doc["name"] = "nna-sym8-host"
    host = {op: "onnxruntime-cpu" for op in ops if op not in base.supported_ops}
    if host:
        doc["host_ops"] = host
    path = tmp_path / "nna-sym8-host.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _real(graph, name, values):
    qp = graph.tensors[name].qparams
    return np.asarray(values, np.float64) if qp is None else qp.dequantize(values)


def _calib(tmp_path, shape, count, seed=0) -> Path:
    path = tmp_path / f"calib{count}.npz"
    np.savez(path, input=np.random.default_rng(seed).standard_normal((count,) + shape).astype(np.float32))
    return path


@pytest.mark.parametrize("model, op, node", [   # (nna-sym8 runs ConvTranspose since issue 13)
    ("mobilenetv3_block.qop.s8s8pc", "HardSigmoid", "HardSigmoid__inlfunc_HardSwish_HS_X"),
    ("vit_block.qop.u8s8", "LayerNormalization", "/ln1/LayerNormalization")])
def test_nna_profile_refuses_an_op_it_lacks_in_one_line(tmp_path, model, op, node):
    r = cli("requant", DATA / f"{model}.onnx", "--profile", "nna-sym8", "-o", tmp_path / "out.onnx")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"unsupported op {op!r} at node {node!r}" in lines[0], r.stderr
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("model, host_ops, shape, count, min_sqnr", [
    # ConvTranspose (its weights are weights, not activations, for requant and check)
    ("unet_convt.qdq.s8s8pc", ["ConvTranspose"], (3, 16, 16), 2, 30.0),
    # MatMul of two activations, Gemm over tokens with a bias, Softmax; the Reshape targets hold
    # batch 1, so one calibration sample
    ("vit_nonorm.qop.u8s8", ["Mean"], (3, 16, 16), 1, 15.0)])
def test_requant_with_host_ops_passes_check_and_runs_in_ort(tmp_path, model, host_ops, shape, count, min_sqnr):
    profile = _host_profile(tmp_path, host_ops)
    out = tmp_path / "out.onnx"
    r = cli("requant", DATA / f"{model}.onnx", "--profile", profile, "-o", out,
            "--calib", _calib(tmp_path, shape, count))
    assert r.returncode == 0, r.stderr
    sqnr = float(r.stdout.split("end-to-end SQNR vs the input model on the calibration data:")[1]
                 .split("dB")[0].split()[-1])
    assert sqnr > min_sqnr, r.stdout
    assert cli("check", out, "--profile", profile, "-q").returncode == 0
    # ONNX Runtime loads and runs the written model; its outputs follow the input model's
    x = np.random.default_rng(1).standard_normal((1,) + shape).astype(np.float32)
    got = run_ort(out, {"input": x})
    want = run_ort(DATA / f"{model}.onnx", {"input": x})
    assert set(got) == set(want)
    from mrq.onnx_import import load_model
    new, old = load_model(str(out)), load_model(str(DATA / f"{model}.onnx"))
    for name in want:
        real_new, real_old = _real(new, name, got[name]), _real(old, name, want[name])
        err = np.sum((real_new - real_old) ** 2) / np.sum(real_old.astype(np.float64) ** 2)
        assert 10 * np.log10(1 / err) > min_sqnr - 6


def test_batch_fixed_by_a_reshape_is_a_one_line_error(tmp_path):
    """ORT's quantizer bakes batch 1 into Reshape targets ([16, 32] for [1, 16, 32]); ONNX
    Runtime refuses a batch of 2 on the model too, so mrq says why instead of failing inside."""
    r = cli("requant", DATA / "vit_nonorm.qop.u8s8.onnx", "--profile", _host_profile(tmp_path, ["Mean"]),
            "-o", tmp_path / "out.onnx", "--calib", _calib(tmp_path, (3, 16, 16), 2))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "a batch of 2 samples, but the model takes one at a time" in lines[0]
    assert "Reshape node" in lines[0] and "[16, 32]" in lines[0]
    x = np.zeros((2, 3, 16, 16), np.float32)
    with pytest.raises(Exception, match="(?i)invalid dimensions|index: 0"):
        run_ort(DATA / "vit_nonorm.qop.u8s8.onnx", {"input": x})
    r = cli("sim", DATA / "vit_nonorm.qop.u8s8.onnx", "--profile", "onnxruntime-cpu",
            "--inputs", _calib(tmp_path, (3, 16, 16), 2), "-o", tmp_path / "o.npz")
    assert r.returncode == 2 and "takes one at a time" in r.stderr, r.stderr


@pytest.mark.parametrize("model, host_ops, shape", [
    ("unet_convt.qdq.s8s8pc", ["ConvTranspose"], (3, 16, 16)),      # ConvTranspose
    ("vit_nonorm.qop.u8s8", ["Mean"], (3, 16, 16))])                # MatMul of activations, Gemm over tokens
def test_written_model_reads_back_bit_identical(tmp_path, model, host_ops, shape):
    """The ONNX QDQ that `mrq requant` writes for these ops re-imports as the model it simulated."""
    import onnx

    from mrq.api import Pipeline
    from mrq.onnx_export import export_onnx
    from mrq.onnx_import import load_model
    from mrq.requant import requantize
    profile = load_profile(str(_host_profile(tmp_path, host_ops)))
    rng = np.random.default_rng(3)
    new, _ = requantize(load_model(str(DATA / f"{model}.onnx")), profile,
                        {"input": rng.standard_normal((1,) + shape).astype(np.float32)})
    onnx.save(export_onnx(new), str(tmp_path / "out.onnx"))
    back = load_model(str(tmp_path / "out.onnx"))
    x = {"input": rng.standard_normal((1,) + shape).astype(np.float32)}
    want = Pipeline(new, profile, "native").run(x).outputs
    got = Pipeline(back, profile, "native").run(x).outputs
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
