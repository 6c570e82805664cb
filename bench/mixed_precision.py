"""Mixed precision per layer on the QAT MobileNetV2: all layers at 4 bits (nna-w4a4), the first
and last layers at 8 bits (nna-w4a4-fl8), and the automatic choice of `mrq requant --budget`
under a weight-memory budget (default 60% of the 8-bit model's weight bytes), each re-quantized
with 512 calibration images (training split) and run in the bit-exact simulator on the test set.

    python bench/mixed_precision.py [--test-images 10000] [--budget weight_bytes=60%] \\
        [--json out.json] [--markdown out.md]

Rows: naive (round onto the new grids) and full re-quantization of each profile; nna-sym8 (every
layer at 8 bits) for reference. Columns: weight bytes (weights + biases, 4-bit codes packed),
their share of the 8-bit model's, end-to-end SQNR against the input model on the calibration
images, test accuracy and its change against the input model. Then the frontier the budget
search explored (weight bytes vs SQNR, measured on its calibration subset).

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

import fashion_mnist
from requant_headline import accuracy  # the simulator's top-1 on the test images

from mrq.api import profile_violations, resolve_profile, simulate
from mrq.compare import weight_bytes
from mrq.float_ref import FloatReference
from mrq.metrics import sqnr_db
from mrq.onnx_import import load_model
from mrq.passes.base import Options, feeds_for_new_graph
from mrq.precision_search import parse_budget, search
from mrq.requant import naive_options, requantize

MODEL = os.path.join(HERE, "models", "fmnist_mnv2_qat_qdq.onnx")
METHODS = {"naive": naive_options(),
           "full": Options()}



def calib_sqnr(graph, new, profile, calib, reference) -> float:
    sim = simulate(new, profile, feeds_for_new_graph(graph, new, calib), fidelity=False)
    out = graph.outputs[0]
    qp = new.tensors[out].qparams
    got = qp.dequantize(sim.outputs[out]) if qp is not None else np.asarray(sim.outputs[out], np.float64)
    return float(sqnr_db(reference[out], got))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--budget", default="weight_bytes=60%")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)

    calib_images, images, labels = fashion_mnist.calibration_and_test(args.calib_images, args.test_images)
    graph = load_model(MODEL)
    calib = {graph.inputs[0]: calib_images}
    reference = FloatReference(graph, fake_quant=True).run(calib)
    base = accuracy(graph, "onnxruntime-cpu", images, labels)
    eight_bit = weight_bytes(graph, resolve_profile("nna-sym8"))

    t0 = time.perf_counter()
    found = search(graph, resolve_profile("nna-w4a4"), calib, parse_budget(args.budget), 8,
                   progress=lambda what: print(f"  search: {what}", file=sys.stderr, flush=True))
    search_seconds = time.perf_counter() - t0
    targets = [("nna-sym8", resolve_profile("nna-sym8")), ("nna-w4a4", resolve_profile("nna-w4a4")),
               ("nna-w4a4-fl8", resolve_profile("nna-w4a4-fl8")),
               (f"nna-w4a4, auto {args.budget}", found.profile)]
    rows = []
    for label, profile in targets:
        for method, options in METHODS.items():
            if label == "nna-sym8" and method == "naive":
                continue
            t0 = time.perf_counter()
            new, _ = requantize(graph, profile, calib, options)
            seconds = time.perf_counter() - t0
            nbytes = weight_bytes(new, profile)
            row = {"profile": label, "method": method, "weight_bytes": nbytes,
                   "share_of_8bit": nbytes / eight_bit,
                   "high_layers": sum(1 for _, _, w, _ in _rows(new, profile) if w >= 8),
                   "sqnr_db": calib_sqnr(graph, new, profile, calib, reference),
                   "accuracy": accuracy(new, profile, images, labels), "requant_seconds": seconds,
                   "violations": len(profile_violations(new, profile))}
            row["change"] = row["accuracy"] - base
            rows.append(row)
            print(f"  {label} {method}: {row['accuracy']:.2f}% ({row['change']:+.2f}), "
                  f"{nbytes} B, {row['sqnr_db']:.2f} dB", file=sys.stderr, flush=True)

    lines = [(f"Mixed precision, QAT MobileNetV2 (Fashion-MNIST), {args.calib_images} calibration images, "
             f"{args.test_images} test images, bit-exact simulator. Input model: {base:.2f}%. "
             f"Weight bytes: conv/gemm weights + int32 biases (4-bit codes packed); 8-bit model "
             f"(nna-sym8): {eight_bit} B. SQNR: end-to-end vs the input model on the calibration images."),
             "", "| profile | method | layers at 8 bits | weight bytes | % of 8-bit | SQNR (dB) | accuracy (%) | change |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['profile']} | {r['method']} | {r['high_layers']} | {r['weight_bytes']} | "
                     f"{100 * r['share_of_8bit']:.1f} | {r['sqnr_db']:.2f} | {r['accuracy']:.2f} | "
                     f"{r['change']:+.2f} |")
    lines += ["", (f"Frontier explored by `--budget {args.budget}` ({search_seconds:.0f} s; greedy by "
              f"SQNR gain per byte, each point a naive re-quantization measured on {found.samples} "
              f"calibration images; * = chosen):"), "",
              "| | layers at 8 bits | added layer | weight bytes | % of 8-bit | SQNR (dB) |", "|---|---|---|---|---|---|"]
    for i, p in enumerate(found.frontier):
        added = p.high_layers[-1] if i and p.high_layers else "-"
        lines.append(f"| {'*' if p.chosen else ''} | {len(p.high_layers)} | {added} | {p.weight_bytes} | "
                     f"{100 * p.weight_bytes / eight_bit:.1f} | {p.sqnr_db:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"input_accuracy": base, "eight_bit_bytes": eight_bit, "rows": rows,
                       "search": found.as_dict(), "search_seconds": search_seconds,
                       "test_images": args.test_images, "calib_images": args.calib_images}, f, indent=1)
    return 0


def _rows(graph, profile):
    from mrq.mixed_precision import LayerFormats
    return LayerFormats.of(graph, profile).rows()


if __name__ == "__main__":
    sys.exit(main())
