"""Low-bit re-quantization table: Fashion-MNIST accuracy of the QAT MobileNetV2 re-quantized to
4-bit weights with 4-bit (nna-w4a4) and 8-bit (nna-w4a8) activations, executed by the bit-exact
simulator, with the methods switched on one by one and then left out one at a time:

    naive                  round everything onto the new grids
    +weight correction     sequential rounding with error feedback (target: the input model's weights)
    +error folding         expected output shift folded into the bias
    +scale selection       clipping search (consumer-weighted error; 0.2-1.0 of the range below 8 bits)
    +input-error target    weight correction rounds the least-squares fit of the input model's
                           layer output on the new model's (coarse) input (error folding then
                           leaves those layers alone: see mrq/passes/error_folding.py)
    +activation offsets    ReLU outputs feeding unpadded Conv/Gemm layers shifted to use all 16
                           codes of the signed 4-bit grid
    full                   + output grids: the class scores' grid (below 8 bits) chosen by argmax
                           agreement with the input model instead of MSE
    full - X               full with one method off
    full + output-error    opt-in pass scale_search (Options.output_error_scales): each 4-bit
      scales               activation clip re-chosen by the network output's error on 64
                           calibration images

512 calibration images from the training split; the input model's accuracy is the simulator
under onnxruntime-cpu.

    python bench/requant_lowbit.py [--test-images 10000] [--profiles nna-w4a4 nna-w4a8]
                                   [--json out.json] [--markdown out.md]

``--oracle``: where the loss is. For each conv/gemm layer, the full method under a scratch copy
of the profile whose only change is that layer's output activations at ``--oracle-bits`` (a
``layers:`` override by name; the first layer's override also covers the graph input, which
its Quantize belongs to), ranked by the accuracy gained over the unchanged profile on
``--held-out`` training images that are not calibration images (the test set is left alone for
choices; ``--test-images`` is not used)::

    python bench/requant_lowbit.py --oracle --profiles nna-w4a4 [--held-out 6000] [--oracle-bits 8]
                                   [--layers 'stem*' 'last*']   (globs on layer names; default all)

Needs Debian's dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fashion_mnist
from requant_headline import accuracy

from mrq.api import profile_violations, resolve_profile
from mrq.fileio import save_json, save_text
from mrq.onnx_import import load_model
from mrq.passes.base import Options
from mrq.requant import requantize

MODEL = os.path.join(HERE, "models", "fmnist_mnv2_qat_qdq.onnx")
PROFILES = ["nna-w4a4", "nna-w4a8"]
_NO_OFFSETS = frozenset({"activation_offsets", "output_grids"})
_NO_OUTPUT_GRIDS = frozenset({"output_grids"})
_OFF = {"weight_correction": False, "error_folding": False, "scale_selection": False, "input_error_target": False,
        "disabled": _NO_OFFSETS}
ROWS = {
    "naive": Options(**_OFF),
    "+weight correction": Options(**{**_OFF, "weight_correction": True}),
    "+error folding": Options(**{**_OFF, "weight_correction": True, "error_folding": True}),
    "+scale selection": Options(input_error_target=False, disabled=_NO_OFFSETS),
    "+input-error target": Options(disabled=_NO_OFFSETS),
    "+activation offsets": Options(disabled=_NO_OUTPUT_GRIDS),
    "full (+output grids)": Options(),
    "full - scale selection": Options(scale_selection=False),
    "full - error folding": Options(error_folding=False),
    "full - weight correction (and its target)": Options(weight_correction=False),
    "full - input-error target": Options(input_error_target=False),
    "full - activation offsets": Options(disabled=frozenset({"activation_offsets"})),
    "full - output grids": Options(disabled=_NO_OUTPUT_GRIDS),
    "full + output-error scales": Options(output_error_scales=True),
}
FULL = "full (+output grids)"
TARGETS = {"nna-w4a4": 3.0, "nna-w4a8": 1.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--profiles", nargs="+", default=PROFILES)
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--oracle", action="store_true", help="per-layer activation-bits oracle on held-out data")
    ap.add_argument("--oracle-bits", type=int, default=8)
    ap.add_argument("--held-out", type=int, default=6000)
    ap.add_argument("--layers", nargs="+", default=["*"], help="--oracle: only these layers (globs)")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)
    if args.oracle:
        return oracle(args)

    calib_images, images, labels = fashion_mnist.calibration_and_test(args.calib_images, args.test_images)

    graph = load_model(MODEL)
    base = accuracy(graph, "onnxruntime-cpu", images, labels)
    calib = {graph.inputs[0]: calib_images}
    results = {"model": os.path.relpath(MODEL, os.path.dirname(HERE)), "input_accuracy_sim": base,
               "test_images": args.test_images, "calib_images": args.calib_images, "profiles": {}}
    for profile in args.profiles:
        rows = {}
        for row in args.rows:
            same = next((r for r in rows if ROWS[r] == ROWS[row]), None)
            if same is not None:   # an ablation that equals a build-up row: measured once
                rows[row] = rows[same]
                continue
            t0 = time.perf_counter()
            new, _ = requantize(graph, profile, calib, ROWS[row])
            seconds = time.perf_counter() - t0
            violations = profile_violations(new, resolve_profile(profile))
            acc = accuracy(new, profile, images, labels)
            rows[row] = {"accuracy": acc, "drop": base - acc, "requant_seconds": seconds,
                         "violations": len(violations)}
            print(f"{profile:<10} {row:<44} {acc:6.2f}% ({acc - base:+.2f})  requant {seconds:5.1f} s  "
                  f"violations {len(violations)}", file=sys.stderr, flush=True)
        results["profiles"][profile] = rows

    lines = [(f"Fashion-MNIST test accuracy (%), {args.test_images} images, bit-exact simulator; "
              f"{args.calib_images} calibration images; input model {base:.2f}% (simulator, onnxruntime-cpu)."),
             "", "| method | " + " | ".join(args.profiles) + " |", "|---|" + "---|" * len(args.profiles)]
    for row in args.rows:
        cells = [f"{results['profiles'][p][row]['accuracy']:.2f} ({-results['profiles'][p][row]['drop']:+.2f})"
                 for p in args.profiles]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("| target drop (full) | " + " | ".join(f"≤ {TARGETS.get(p, float('nan')):.2f}" for p in args.profiles) + " |")
    if FULL in args.rows:
        secs = [results["profiles"][p][FULL]["requant_seconds"] for p in args.profiles]
        lines.append("| re-quantization time, full (s) | " + " | ".join(f"{s:.2f}" for s in secs) + " |")
    return _emit(args, results, lines)


def held_out(calib_images: int, n: int, seed: int = 0):
    """``n`` training images (and labels) drawn (seed 1) from those the calibration draw of
    fashion_mnist.calibration_and_test (seed ``seed``) left out."""
    train_x, train_y = fashion_mnist.load("train")
    calib_idx = np.random.default_rng(seed).choice(len(train_x), calib_images, replace=False)
    rest = np.setdiff1d(np.arange(len(train_x)), calib_idx)
    idx = np.random.default_rng(1).choice(rest, n, replace=False)
    return fashion_mnist.to_float(train_x[idx]), train_y[idx].astype(np.int64)


def oracle(args) -> int:
    import fnmatch
    import tempfile

    calib_images, _, _ = fashion_mnist.calibration_and_test(args.calib_images, 1)
    images, labels = held_out(args.calib_images, args.held_out)
    graph = load_model(MODEL)
    calib = {graph.inputs[0]: calib_images}
    layers = [n.name for n in graph.nodes if n.op in ("Conv", "Gemm")
              and any(fnmatch.fnmatchcase(n.name, pattern) for pattern in args.layers)]
    if not layers:
        raise SystemExit(f"--layers {' '.join(args.layers)}: no conv/gemm layer matches")
    results = {"held_out_images": args.held_out, "oracle_bits": args.oracle_bits, "profiles": {}}
    lines = []
    for profile in args.profiles:
        resolved = resolve_profile(profile)
        text = _profile_text(resolved)
        base_new, _ = requantize(graph, profile, calib, Options())
        base = accuracy(base_new, profile, images, labels)
        print(f"{profile:<10} {'(unchanged)':<24} {base:6.2f}%", file=sys.stderr, flush=True)
        rows = {}
        with tempfile.TemporaryDirectory() as tmp:
            for layer in layers:
                scratch = os.path.join(tmp, "oracle.yaml")
                save_text(scratch, text.replace(f"name: {resolved.name}", f"name: {resolved.name}-oracle", 1) +
                          f"\nlayers:\n  - name: \"{layer}\"\n    activations: {{bits: {args.oracle_bits}}}\n")
                new, _ = requantize(graph, scratch, calib, Options())
                acc = accuracy(new, scratch, images, labels)
                rows[layer] = acc
                print(f"{profile:<10} {layer:<24} {acc:6.2f}% ({acc - base:+.2f})", file=sys.stderr, flush=True)
        results["profiles"][profile] = {"unchanged": base, "layers": rows}
        lines += [(f"{profile}: held-out accuracy {base:.2f}% ({args.held_out} training images outside the "
                   f"calibration set); one layer's output at {args.oracle_bits} bits:"), "",
                  "| layer | accuracy | gain |", "|---|---|---|"]
        lines += [f"| {layer} | {acc:.2f} | {acc - base:+.2f} |"
                  for layer, acc in sorted(rows.items(), key=lambda kv: -kv[1])]
        lines.append("")
    return _emit(args, results, lines)


def _emit(args, results, lines) -> int:
    """Print the table; write ``--json`` and ``--markdown`` where asked."""
    table = "\n".join(lines)
    print(table)
    if args.json:
        save_json(args.json, results)
    if args.markdown:
        save_text(args.markdown, table + "\n")
    return 0


def _profile_text(profile) -> str:
    """The YAML text of a loaded profile, which the oracle's scratch copies extend."""
    with open(profile.source, encoding="utf-8") as f:
        text = f.read()
    if "\nlayers:" in text:
        raise SystemExit(f"--oracle: {profile.name} already has layer overrides; give a profile without them")
    return text


if __name__ == "__main__":
    sys.exit(main())
