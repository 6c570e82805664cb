"""Wall time of ``requantize()`` on the QAT MobileNetV2 with 512 calibration images (training
split), per target profile, after one warm-up run (JIT cache loaded):

    python bench/requant_time.py [MODEL.onnx] [--runs 3]

Needs Debian's dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist).
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fashion_mnist  # noqa: E402

from mrq.onnx_import import load_model  # noqa: E402
from mrq.requant import requantize  # noqa: E402

PROFILES = ["nna-sym8", "nna-sym8-pow2", "nna-w4a8", "nna-w4a8-pow2"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=os.path.join(HERE, "models", "fmnist_mnv2_qat_qdq.onnx"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calib-images", type=int, default=512)
    args = ap.parse_args(argv)
    train_x, _ = fashion_mnist.load("train")
    idx = np.random.default_rng(0).choice(len(train_x), args.calib_images, replace=False)
    graph = load_model(args.model)
    calib = {graph.inputs[0]: fashion_mnist.to_float(train_x[idx])}
    requantize(graph, PROFILES[0], calib)  # warm-up: loads the JIT cache
    for profile in PROFILES:
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            requantize(graph, profile, calib)
            times.append(time.perf_counter() - t0)
        print(f"{profile:<15} best {min(times):.2f} s   runs: {', '.join(f'{t:.2f}' for t in times)}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
