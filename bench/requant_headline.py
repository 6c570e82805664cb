"""The re-quantizer's headline table: Fashion-MNIST accuracy of re-quantized models, executed by
the bit-exact simulator on all 10k test images.

For each input model (the QAT MobileNetV2 and the ORT quantize_static one) and each target
profile, the model is re-quantized with 512 calibration images (from the training split) with
the methods switched on one by one:

    naive              round everything onto the new grids
    +weight correction sequential rounding with error feedback
    +error folding     expected output shift folded into the bias
    full               + scale selection

and the result runs on the simulator under that profile. The input model's own accuracy is the
simulator under onnxruntime-cpu (identical to ONNX Runtime, which the script also runs).

    python bench/requant_headline.py [--test-images 10000] [--json out.json] [--markdown out.md]

Needs Debian's dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fashion_mnist  # noqa: E402

from mrq.api import bind_inputs, prepare, profile_violations, resolve_profile  # noqa: E402
from mrq.onnx_import import load_model  # noqa: E402
from mrq.passes.base import Options  # noqa: E402
from mrq.requant import naive_options, requantize  # noqa: E402
from simulator.run import run  # noqa: E402

MODELS = {
    "QAT MobileNetV2 (uint8 asym, per-tensor asym weights)": os.path.join(HERE, "models", "fmnist_mnv2_qat_qdq.onnx"),
    "ORT quantize_static MobileNetV2 (uint8 asym, per-channel int8)": os.path.join(HERE, "models", "fmnist_mnv2_ort_qdq.onnx"),
}
PROFILES = ["nna-sym8", "nna-sym8-pow2", "nna-w4a8", "nna-w4a8-pow2"]
ROWS = {
    "naive": naive_options(),
    "+weight correction": Options(weight_correction=True, error_folding=False, scale_selection=False),
    "+error folding": Options(weight_correction=True, error_folding=True, scale_selection=False),
    "full (+scale selection)": Options(),
}
TARGETS = {"nna-sym8": 0.05, "nna-sym8-pow2": 0.10, "nna-w4a8": 1.0, "nna-w4a8-pow2": 2.0}


def accuracy(graph, profile, images, labels, batch=1000) -> float:
    lowered = prepare(graph, profile)
    name = graph.inputs[0]
    correct = 0
    for start in range(0, len(images), batch):
        feeds = {name: images[start:start + batch]}
        program, bound = bind_inputs(lowered, feeds)
        out = run(program, bound).outputs[graph.outputs[0]]
        correct += int(np.sum(np.asarray(out).reshape(len(feeds[name]), -1).argmax(axis=1) == labels[start:start + batch]))
    return 100.0 * correct / len(images)


def ort_accuracy(path, images, labels) -> float:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    preds = np.concatenate([sess.run(None, {name: images[i:i + 1000]})[0].argmax(1) for i in range(0, len(images), 1000)])
    return 100.0 * float(np.mean(preds == labels))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--profiles", nargs="+", default=PROFILES)
    ap.add_argument("--models", nargs="+", choices=["qat", "ort"], default=["qat", "ort"])
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)
    from tqdm import tqdm

    calib_images, images, labels = fashion_mnist.calibration_and_test(args.calib_images, args.test_images)

    models = {k: v for k, v in MODELS.items() if ("qat" if "QAT" in k else "ort") in args.models}
    results = []
    jobs = [(m, p, r) for m in models for p in args.profiles for r in ROWS]
    bar = tqdm(total=len(jobs) + len(models), desc="headline", unit="run")
    for model_name, path in models.items():
        graph = load_model(path)
        base = accuracy(graph, "onnxruntime-cpu", images, labels)
        ort_acc = ort_accuracy(path, images, labels)
        bar.update(1)
        entry = {"model": model_name, "path": os.path.relpath(path, os.path.dirname(HERE)),
                 "input_accuracy_sim": base, "input_accuracy_ort": ort_acc, "profiles": {}}
        calib = {graph.inputs[0]: calib_images}
        for profile in args.profiles:
            rows = {}
            for row, options in ROWS.items():
                t0 = time.perf_counter()
                new, report = requantize(graph, profile, calib, options)
                seconds = time.perf_counter() - t0
                violations = profile_violations(new, resolve_profile(profile))
                acc = accuracy(new, profile, images, labels)
                rows[row] = {"accuracy": acc, "drop": base - acc, "requant_seconds": seconds,
                             "violations": len(violations)}
                bar.set_postfix_str(f"{profile} {row}: {acc:.2f}%")
                bar.update(1)
            entry["profiles"][profile] = rows
        results.append(entry)
    bar.close()

    lines = [f"Fashion-MNIST test accuracy (%), {args.test_images} images, bit-exact simulator; "
             f"{args.calib_images} calibration images. Drop = input model accuracy - re-quantized accuracy.", ""]
    for entry in results:
        lines.append(f"**{entry['model']}**: input model {entry['input_accuracy_sim']:.2f}% "
                     f"(simulator, onnxruntime-cpu; ONNX Runtime itself: {entry['input_accuracy_ort']:.2f}%)")
        lines.append("")
        lines.append("| method | " + " | ".join(args.profiles) + " |")
        lines.append("|---|" + "---|" * len(args.profiles))
        for row in ROWS:
            cells = [f"{entry['profiles'][p][row]['accuracy']:.2f} ({-entry['profiles'][p][row]['drop']:+.2f})"
                     for p in args.profiles]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("| target drop (full) | " + " | ".join(f"≤ {TARGETS.get(p, float('nan')):.2f}" for p in args.profiles) + " |")
        secs = [entry['profiles'][p]['full (+scale selection)']['requant_seconds'] for p in args.profiles]
        lines.append("| re-quantization time, full (s) | " + " | ".join(f"{s:.2f}" for s in secs) + " |")
        lines.append("")
    table = "\n".join(lines)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
