"""MLPerf Tiny int8 TFLite models re-quantized to nna-sym8 and nna-sym8-pow2: output SQNR vs the
float TFLite model and top-1 agreement with it, naive vs full method.

Inputs: random int8 inputs (seeded; Gaussian around the input zero point with a standard deviation
of 32 codes, clipped: uniform codes over the whole int8 range drive the float and int8 models far
out of distribution, where even the input int8 model agrees with the float one on only ~30% of
KWS inputs; 64 for calibration, --test for evaluation) and, for AD01, every window of the real
features file (calibrated on the even windows, evaluated on the odd ones). The float model runs in LiteRT on the real values of the
same codes; the int8 model runs in the bit-exact simulator (tflite-int8, identical to LiteRT's
reference kernels); re-quantized models run in the simulator under their profile.

    python bench/tflite_requant_table.py [--test 200] [--markdown out.md]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from mrq.api import simulate
from mrq.metrics import sqnr_db
from mrq.onnx_import import load_model
from mrq.passes.base import Options, feeds_for_new_graph
from mrq.requant import naive_options, requantize

MODELS_DIR = os.environ.get("MRQ_MLPERF_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models", "mlperf_tiny"))
MODELS = {
    "ResNet-8 (CIFAR-10)": ("pretrainedResnet_quant.tflite", "pretrainedResnet.tflite", True),
    "DS-CNN KWS": ("kws_ref_model.tflite", "kws_ref_model_float32.tflite", True),
    "AD01 auto-encoder": ("ad01_int8.tflite", "ad01_fp32.tflite", False),
}
PROFILES = ["nna-sym8", "nna-sym8-pow2"]
METHODS = {"naive": naive_options(), "full": Options()}


def float_model_outputs(path: str, real_inputs: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=path)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    rows = []
    for x in real_inputs:
        data = x[None].astype(np.float32)
        if inp["dtype"] != np.float32:      # dynamic-range or int8-input float model
            s, z = inp["quantization"]
            data = np.clip(np.rint(data / s) + z, -128, 127).astype(inp["dtype"])
        interp.resize_tensor_input(inp["index"], data.shape)
        interp.allocate_tensors()
        interp.set_tensor(inp["index"], data)
        interp.invoke()
        y = interp.get_tensor(out["index"]).astype(np.float64)
        if out["dtype"] != np.float32:
            s, z = out["quantization"]
            y = (y - z) * s
        rows.append(y[0])
    return np.stack(rows)


def ad01_windows(path: str, qp) -> np.ndarray:
    feats = np.fromfile(path, dtype="<f4").reshape(-1, 128)
    windows = np.stack([feats[i:i + 5].reshape(-1) for i in range(len(feats) - 4)])
    return np.clip(np.rint(windows / qp.scale[0]) + qp.zero_point[0], -128, 127).astype(np.int8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)
    lines = ["| model | inputs | input model (tflite-int8) | " +
             " | ".join(f"{p} {m}" for p in PROFILES for m in METHODS) + " |",
             "|---|---|---|" + "---|" * (len(PROFILES) * len(METHODS))]
    for title, (q_file, f_file, classifier) in MODELS.items():
        q_path, f_path = os.path.join(MODELS_DIR, q_file), os.path.join(MODELS_DIR, f_file)
        if not os.path.exists(q_path):
            print(f"skipping {title}: {q_path} not found", file=sys.stderr)
            continue
        graph = load_model(q_path)
        name = graph.inputs[0]
        in_t = graph.tensors[name]
        rng = np.random.default_rng(0)
        shape = tuple(in_t.shape[1:])
        zp = float(in_t.qparams.zero_point[0])

        def random_codes(n):
            return np.clip(np.rint(rng.normal(zp, 32.0, (n,) + shape)), -128, 127).astype(np.int8)

        # (calibration codes, test codes) per input set; calibration never overlaps the test.
        sets = {"random": (random_codes(64), random_codes(args.test))}
        if "ad01" in q_file:
            real = ad01_windows(os.path.join(MODELS_DIR, "normal_id_01_00000000_hist_librosa.bin"), in_t.qparams)
            sets["real"] = (real[0::2], real[1::2])
        out_name = graph.outputs[0]
        for set_name, (calib_codes, codes) in sets.items():
            calib = {name: calib_codes}
            requantized = {(p, m): requantize(graph, p, calib, o)[0] for p in PROFILES for m, o in METHODS.items()}
            real = in_t.qparams.dequantize(codes)
            ref = float_model_outputs(f_path, real)

            def score(g, profile):
                out = simulate(g, profile, feeds_for_new_graph(graph, g, {name: codes}), fidelity=False).outputs[out_name]
                qp = g.tensors[out_name].qparams
                y = qp.dequantize(out) if qp is not None else out.astype(np.float64)
                y = y.reshape(ref.shape)
                cell = f"{sqnr_db(ref, y):.1f} dB"
                if classifier:
                    cell += f", {100 * np.mean(y.argmax(-1) == ref.argmax(-1)):.1f}%"
                return cell

            cells = [score(graph, "tflite-int8")]
            cells += [score(requantized[(p, m)], p) for p in PROFILES for m in METHODS]
            lines.append(f"| {title} | {set_name} ({len(codes)}) | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print("\nOutput SQNR vs the float TFLite model (and top-1 agreement with it, classifiers):\n")
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
