"""A lower bound for MLPerf Tiny AD01 at batch 1: the time to read its weights once.

AD01 is ten fully connected layers (640-128-128-128-128-8-128-128-128-128-640, int8 weights).
At batch 1 every weight byte is used once per inference, so no implementation can be faster
than reading them once from the caches. This script measures that read (the weight bytes
summed with 64-byte vector loads, the file's own weights, warm L2) next to LiteRT's
``BUILTIN_REF`` time per inference, and prints the largest "REF / simulator" ratio any exact
implementation could reach on this machine:

    python bench/ad01_floor.py
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo


def _weights():
    from mrq.api import prepare

    program = prepare(zoo.MODELS["ad01"][0], zoo.MODELS["ad01"][1])
    program = program.program
    arrays = [np.ascontiguousarray(s.params["weight"]).reshape(-1).view(np.uint8)
              for s in program.steps if "weight" in getattr(s, "params", {})]
    return np.concatenate(arrays)


def main():
    from numba import njit

    from simulator.kernels.simd import vadd_i32, vload, vstore, vzero

    @njit
    def read_once(w, out, n):
        for _ in range(n):
            a0 = vzero()
            a1 = vzero()
            for i in range(0, w.shape[0] - 127, 128):
                a0 = vadd_i32(a0, vload(w, i))
                a1 = vadd_i32(a1, vload(w, i + 64))
            vstore(out, 0, vadd_i32(a0, a1))

    w = _weights()
    w = np.concatenate([w, np.zeros(-len(w) % 128, np.uint8)])
    out = np.zeros(16, np.int32)
    read_once(w, out, 1)
    best = min(_time(lambda: read_once(w, out, 200)) / 200 for _ in range(20))
    ref = zoo.litert("ad01", 1, reference=True)
    ref_s = min(_time(ref) for _ in range(200))
    print(f"AD01 weights: {len(w) / 1024:.0f} KiB; reading them once: {best * 1e6:.2f} us")
    print(f"LiteRT BUILTIN_REF per inference: {ref_s * 1e6:.1f} us")
    print(f"largest possible REF / implementation ratio here: {ref_s / best:.1f}x")


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
