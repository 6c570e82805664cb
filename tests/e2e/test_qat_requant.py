"""End to end on the committed QAT MobileNetV2 (Fashion-MNIST): re-quantize it to NNA profiles
with calibration images, run the result bit-exactly, and bound the accuracy lost."""
import os

import numpy as np
import pytest

from mrq.api import bind_inputs, prepare, profile_violations, resolve_profile
from mrq.onnx_import import load_model
from mrq.requant import requantize
from simulator.run import run

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
MODEL = os.path.join(ROOT, "bench", "models", "fmnist_mnv2_qat_qdq.onnx")
DATA = os.path.join(ROOT, "tests", "data", "fmnist_test_1000.npz")
CALIB = 128          # images 0..127 calibrate; the remaining 872 are the test set


@pytest.fixture(scope="module")
def data():
    with np.load(DATA) as d:
        images = d["images"].astype(np.float32) / 255.0
        labels = d["labels"]
    return images[:CALIB], images[CALIB:], labels[CALIB:]


@pytest.fixture(scope="module")
def qat_graph():
    return load_model(MODEL)


def accuracy(graph, profile, images, labels) -> float:
    program, bound = bind_inputs(prepare(graph, profile), {"input": images})
    logits = run(program, bound).outputs["logits"]
    return 100.0 * float(np.mean(logits.argmax(axis=1) == labels))


@pytest.fixture(scope="module")
def baseline(qat_graph, data):
    _, images, labels = data
    return accuracy(qat_graph, "onnxruntime-cpu", images, labels)


@pytest.mark.slow
@pytest.mark.parametrize("profile,max_drop", [("nna-sym8", 0.5), ("nna-w4a8-pow2", 1.5)])
def test_qat_model_requantized_keeps_accuracy(qat_graph, data, baseline, profile, max_drop):
    calib, images, labels = data
    new, report = requantize(qat_graph, profile, {"input": calib})
    assert profile_violations(new, resolve_profile(profile)) == []
    acc = accuracy(new, profile, images, labels)
    print(f"{profile}: {baseline:.2f}% -> {acc:.2f}%")
    assert baseline - acc <= max_drop, f"{profile}: {baseline:.2f}% -> {acc:.2f}%"
    # The QAT model's ReLU6s are implied by its uint8 grids (no Clip nodes); they must survive.
    clamped = [n for n in new.nodes if n.op == "Conv" and n.attrs.get("clamp") and n.attrs["clamp"][0] == 0.0]
    assert len(clamped) >= 10
