"""`mrq compare`: several profiles, one self-contained HTML report with an embedded plot."""
from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import DEMO_MODEL, ROOT, cnn_inputs, demo_feeds, make_cnn, run_cli
from mrq import compare as cmp

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


@pytest.fixture(scope="module")
def demo_result():
    feeds = demo_feeds(12)
    labels = np.arange(12) % 10
    return cmp.run_compare(DEMO_MODEL, ["onnxruntime-cpu", "nna-sym8"], feeds, labels=labels,
                           batch_size=5, progress=False)


def test_result_numbers(demo_result):
    r = demo_result
    assert r.n_samples == 12 and r.has_labels and 0.0 <= r.float_accuracy <= 1.0
    ort, nna = r.profiles
    assert ort.profile == "onnxruntime-cpu" and not ort.requantized and not ort.violations
    assert nna.requantized and nna.violations_before and nna.violations == []
    for p in r.profiles:
        assert p.error is None and 0.0 <= p.top1_agreement <= 1.0 and p.accuracy is not None
        names = [row.layer for row in p.layers]
        assert names[0] == "input_QuantizeLinear" and names[-1] == "classifier"
        assert p.output_layer == "classifier" and p.output_max_err_lsb > 0
        assert p.weight_bytes > 0 and p.acc_overflow == 0
        for row in p.layers:
            assert row.n_elements > 0 and row.max_lsb_single >= 0 and row.max_lsb_accumulated >= 0
            assert not math.isnan(row.sqnr_single) and not math.isnan(row.sqnr_accumulated)
        first = p.layers[0]
        assert first.sqnr_single == first.sqnr_accumulated          # the input quantizer sees the reference
    # weight memory of the input model: int8 weights + int32 biases of every conv/gemm
    from mrq.onnx_import import load_model
    g = load_model(DEMO_MODEL)
    expected = sum(np.asarray(g.tensors[n.inputs[1]].data).size + 4 * np.asarray(g.tensors[n.inputs[2]].data).size
                   for n in g.nodes if n.op in ("Conv", "Gemm"))
    assert ort.weight_bytes == expected


def test_single_vs_accumulated_shows_compounding(demo_result):
    """Deep layers see upstream error in the accumulated run, not in the single run: on average
    the accumulated SQNR is lower."""
    ort = demo_result.profiles[0]
    deep = [row for row in ort.layers[3:] if not math.isinf(row.sqnr_single)]
    assert sum(row.compounding_db for row in deep) / len(deep) > 0.5
    stem = next(row for row in ort.layers if row.layer == "stem_conv")
    assert abs(stem.sqnr_single - stem.sqnr_accumulated) < 0.05   # fed the same quantized input


def test_batching_does_not_change_the_numbers():
    feeds = demo_feeds(6)
    a = cmp.run_compare(DEMO_MODEL, ["tflite-int8"], feeds, batch_size=6, progress=False).profiles[0]
    b = cmp.run_compare(DEMO_MODEL, ["tflite-int8"], feeds, batch_size=4, progress=False).profiles[0]
    for x, y in zip(a.layers, b.layers):
        assert x.layer == y.layer and x.n_diff == y.n_diff and x.max_lsb_accumulated == y.max_lsb_accumulated
        assert x.sqnr_accumulated == pytest.approx(y.sqnr_accumulated, rel=1e-9, abs=1e-9)
    assert a.top1_agreement == b.top1_agreement


def test_html_is_self_contained_with_the_plot(demo_result):
    html = cmp.render_html(demo_result)
    assert html.startswith("<!DOCTYPE html>") and "</html>" in html
    assert not re.search(r"(src|href)=['\"](https?:|//|file:)", html)
    m = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    png = base64.b64decode(m.group(1))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000
    for text in ("onnxruntime-cpu", "nna-sym8", "top-1 agreement", "SQNR single", "SQNR accumulated",
                 "acc overflows", "weight memory", "re-quantized", "profile violation"):
        assert text in html


def test_violations_are_reported_when_the_requantizer_is_missing(monkeypatch):
    """Without mrq.requant the model is simulated on its own grids and the report says so."""
    monkeypatch.setitem(sys.modules, "mrq.requant", None)
    res = cmp.run_compare(DEMO_MODEL, ["nna-sym8"], demo_feeds(2), progress=False)
    p = res.profiles[0]
    assert not p.requantized and "not available" in p.note and len(p.violations) > 0
    html = cmp.render_html(res)
    assert "as is (violates)" in html and "not available" in html
    assert "zero point -128 but the profile is symmetric" in html


def test_accumulator_overflow_counts_on_a_generated_model(tmp_path):
    import yaml
    g = make_cnn(0, big_weights=True, channels=(32, 16, 16))
    calib = cnn_inputs(g, batch=3)
    feeds = {"x": np.abs(calib["x"]) * 3}
    # guarantee measured, calibrated on inputs a third as large as the ones simulated: the
    # re-quantized model keeps a saturating accumulator that these inputs overflow (with the
    # default proof, re-quantization removes every possible overflow)
    data = yaml.safe_load((ROOT / "hw_profiles" / "nna-sym8-acc20.yaml").read_text())
    data["accumulator"]["guarantee"] = "measured"
    (tmp_path / "acc20m.yaml").write_text(yaml.safe_dump(data))
    res = cmp.run_compare(g, ["nna-sym8", str(tmp_path / "acc20m.yaml")], feeds, progress=False, calib=calib)
    acc32, acc20 = res.profiles
    assert acc32.acc_overflow == 0 and acc20.acc_overflow > 0
    assert next(r for r in acc20.layers if r.layer == "conv1").acc_overflow > 0
    assert "20" in cmp.format_table(res)


def test_cli_compare_table_report_json_and_progress(tmp_path):
    np.savez(tmp_path / "in.npz", **demo_feeds(6))
    np.save(tmp_path / "labels.npy", np.array([1, 2, 3, 4, 5, 6]))
    r = run_cli("compare", DEMO_MODEL, "--profiles", "onnxruntime-cpu", "tflite-int8", "--inputs",
                tmp_path / "in.npz", "--labels", tmp_path / "labels.npy", "-o", tmp_path / "r.html",
                "--json", tmp_path / "r.json", "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    assert "top-1 agree" in r.stdout and "tflite-int8" in r.stdout and "accuracy" in r.stdout
    assert "mrq compare" in r.stderr and "batch" in r.stderr           # the tqdm progress bar
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") == 1
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [p["profile"] for p in rep["profiles"]] == ["onnxruntime-cpu", "tflite-int8"]
    np.save(tmp_path / "bad.npy", np.arange(3))
    r = run_cli("compare", DEMO_MODEL, "--profiles", "onnxruntime-cpu", "--inputs", tmp_path / "in.npz",
                "--labels", tmp_path / "bad.npy", "-o", tmp_path / "r2.html", "--no-progress")
    assert r.returncode == 2 and "3 labels for 6" in r.stderr and not (tmp_path / "r2.html").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_the_plot_visible(demo_result, tmp_path):
    """Render the report in headless Chromium; the screenshot must show the plot (pixels in the
    matplotlib line colours)."""
    import matplotlib.image as mpimg
    page = tmp_path / "report.html"
    cmp.write_report(demo_result, str(page))
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,1600",
                    page.as_uri()], capture_output=True, timeout=180)
    assert shot.exists()
    img = mpimg.imread(str(shot))[..., :3]
    blue = np.all(np.abs(img - np.array([0x1f, 0x77, 0xb4]) / 255.0) < 0.08, axis=-1)   # C0 line colour
    orange = np.all(np.abs(img - np.array([0xff, 0x7f, 0x0e]) / 255.0) < 0.08, axis=-1)  # C1
    assert blue.sum() > 200 and orange.sum() > 200
    rows = np.nonzero(blue.any(axis=1))[0]
    assert 150 < rows.min() < 1400                       # the plot is on the first screen


def test_docs_screenshot_exists():
    p = ROOT / "docs" / "images" / "compare_report.png"
    assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
