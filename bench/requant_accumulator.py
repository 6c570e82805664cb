"""Accumulator-aware re-quantization on the QAT MobileNetV2: Fashion-MNIST accuracy of the model
re-quantized for 16-, 18- and 20-bit saturating accumulators, executed by the bit-exact
simulator (which clamps the accumulator after every addition, in the profile's order).

Rows (each a set of passes switched on; 512 calibration images from the training split):

    naive                    round onto the new grids, no accumulator_budget
    +accumulator budget      naive + per-channel scales chosen for the accumulator
    +weight correction       ... + sequential rounding (inside the accumulator's L1 budget)
    +error folding           ... + expected output shift folded into the (budgeted) bias
    full                     ... + scale selection (everything on)
    full - accumulator budget   ablation: everything except accumulator_budget
    full, guarantee measured    full with the profile's accumulator.guarantee switched to the
                                other value (proof <-> measured)

Each cell is accuracy % on the test images (change vs the input model, run under
onnxruntime-cpu in the same simulator), plus the accumulator elements that saturated while
simulating them and the re-quantization time.

    python bench/requant_accumulator.py [--test-images 10000] [--profiles nna-sym8-acc16 ...]
                                        [--rows naive full] [--json out.json] [--markdown out.md]

Needs Debian's dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import fashion_mnist

from mrq.api import bind_inputs, prepare, resolve_profile
from mrq.onnx_import import load_model
from mrq.passes.base import Options
from mrq.requant import requantize
from simulator.run import run

MODEL = os.path.join(HERE, "models", "fmnist_mnv2_qat_qdq.onnx")
PROFILES = ["nna-sym8-acc16", "nna-sym8-acc18", "nna-sym8-acc20"]
OFF = frozenset({"accumulator_budget"})
ROWS = {
    "naive": Options(weight_correction=False, error_folding=False, scale_selection=False, disabled=OFF),
    "+accumulator budget": Options(weight_correction=False, error_folding=False, scale_selection=False),
    "+weight correction": Options(weight_correction=True, error_folding=False, scale_selection=False),
    "+error folding": Options(weight_correction=True, error_folding=True, scale_selection=False),
    "full": Options(),
    "full - accumulator budget": Options(disabled=OFF),
    "full, other guarantee": Options(),
}
TARGETS = {"nna-sym8-acc16": 2.0, "nna-sym8-acc18": 0.5, "nna-sym8-acc20": 0.0}


def other_guarantee(profile_name: str, folder: str) -> tuple[str, str]:
    """A copy of the profile with accumulator.guarantee switched (proof <-> measured)."""
    prof = resolve_profile(profile_name)
    with open(prof.source) as f:
        data = yaml.safe_load(f)
    other = "proof" if prof.accumulator.guarantee == "measured" else "measured"
    data["accumulator"]["guarantee"] = other
    data["name"] = f"{prof.name}-{other}"
    path = os.path.join(folder, data["name"] + ".yaml")
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path, other


def accuracy(graph, profile, images, labels, batch=500) -> tuple[float, int]:
    """(top-1 %, accumulator elements that left the profile's width)."""
    lowered = prepare(graph, profile)
    name = graph.inputs[0]
    correct = overflow = 0
    for start in range(0, len(images), batch):
        feeds = {name: images[start:start + batch]}
        program, bound = bind_inputs(lowered, feeds)
        result = run(program, bound)
        out = result.outputs[graph.outputs[0]]
        correct += int(np.sum(np.asarray(out).reshape(len(feeds[name]), -1).argmax(axis=1)
                              == labels[start:start + batch]))
        overflow += sum(int(s.get("acc_overflow", 0)) for s in (result.stats or {}).values())
    return 100.0 * correct / len(images), overflow


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--profiles", nargs="+", default=PROFILES)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)

    calib, images, labels = fashion_mnist.calibration_and_test(args.calib_images, args.test_images)
    graph = load_model(MODEL)
    base, _ = accuracy(graph, "onnxruntime-cpu", images, labels)
    print(f"input model (onnxruntime-cpu): {base:.2f}% on {len(images)} test images", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for profile in args.profiles:
            guarantee = resolve_profile(profile).accumulator.guarantee
            for row in args.rows:
                target, label = profile, guarantee
                if row == "full, other guarantee":
                    target, label = other_guarantee(profile, tmp)
                t0, c0 = time.perf_counter(), time.process_time()
                new, report = requantize(graph, target, {graph.inputs[0]: calib}, ROWS[row])
                seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
                acc, overflow = accuracy(new, profile, images, labels)
                results.setdefault(profile, {})[row] = {
                    "accuracy": acc, "change": acc - base, "overflowed_accumulators": overflow,
                    "requant_seconds": seconds, "requant_cpu_seconds": cpu, "guarantee": label,
                    "layers": report.accumulators}
                print(f"{profile:<16} {row:<26} ({label:>8}) {acc:6.2f}% ({acc - base:+.2f})  "
                      f"saturated accumulators {overflow:>9d}  requant {seconds:5.1f} s wall, {cpu:5.1f} s CPU",
                      flush=True)

    lines = [(f"Fashion-MNIST test accuracy (%), {len(images)} images, bit-exact simulator; "
              f"{args.calib_images} calibration images; input model {base:.2f}% (change in brackets; "
              f"accumulator elements that saturated on the test images after the slash)."), "",
             "| method | " + " | ".join(args.profiles) + " |", "|---|" + "---|" * len(args.profiles)]
    for row in args.rows:
        cells = []
        for p in args.profiles:
            r = results[p][row]
            cells.append(f"{r['accuracy']:.2f} ({r['change']:+.2f}) / {r['overflowed_accumulators']}")
        name = row if row != "full, other guarantee" else "full, guarantee " + \
            "/".join(sorted({results[p][row]["guarantee"] for p in args.profiles}))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| target (full) | " + " | ".join(
        f"≤ {TARGETS[p]:.1f} lost" if p in TARGETS else "-" for p in args.profiles) + " |")
    table = "\n".join(lines)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"input_accuracy": base, "test_images": len(images), "results": results}, f, indent=2,
                      default=float)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
