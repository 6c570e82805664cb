"""Sweep of mrq's ORT float-island kernels against ONNX Runtime's CPU provider, float32 bit for bit:
LayerNormalization (simulator/kernels/ort_layernorm.py) over row lengths 1..N, with and without
bias, several axes, on random, offset (large mean, tiny spread), constant (zero variance) and
extreme inputs; ConvTranspose with float weights (simulator/kernels/ort_convtranspose.py) over
kernel sizes, strides, pads, dilations, output padding and channel counts past MLAS's K slice.

    python bench/ort_islands_parity.py            # prints one line per family, exit 1 on any mismatch
    python bench/ort_islands_parity.py --max-n 300

Counts are of float32 output elements whose bit patterns differ (+0.0 and -0.0 count as equal).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from simulator.kernels.ort_convtranspose import convtranspose_ort
from simulator.kernels.ort_layernorm import layernorm_ort

F32 = np.float32


def _session(node, x_shape, inits):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _differ(a, b) -> int:
    return int(((a != b) | (np.signbit(a) != np.signbit(b)) & (a != 0)).sum())


def _inputs(shape, rng):
    yield "random", (rng.standard_normal(shape) * 3).astype(F32)
    yield "offset", (rng.standard_normal(shape) * 0.01 + 1000).astype(F32)
    yield "constant", np.full(shape, -2.75, F32)
    yield "extreme", np.where(rng.random(shape) < 0.5, F32(-3e4), F32(2.5e4)).astype(F32)


def layernorm_sweep(max_n: int, rng) -> tuple[int, int]:
    bad = total = 0
    cases = [((4, n), -1) for n in range(1, max_n + 1)] + [((2, 3, 4, 5), 1), ((2, 3, 4, 5), 2),
                                                          ((2, 6, 7), -2), ((3, 2, 2, 3), -3)]
    for shape, axis in cases:
        norm = shape[axis % len(shape):]
        for bias in (True, False):
            scale = rng.standard_normal(norm).astype(F32)
            b = rng.standard_normal(norm).astype(F32) if bias else None
            inits = {"s": scale, **({"b": b} if bias else {})}
            node = helper.make_node("LayerNormalization", ["x", "s"] + (["b"] if bias else []), ["y"],
                                    axis=axis, epsilon=1e-5)
            sess = _session(node, shape, inits)
            for kind, x in _inputs(shape, rng):
                want = sess.run(None, {"x": x})[0]
                got = layernorm_ort(x, scale=scale, bias=b, epsilon=1e-5, axis=axis)
                n_bad = _differ(got, want)
                bad, total = bad + n_bad, total + want.size
                if n_bad:
                    print(f"  LayerNormalization {shape} axis {axis} bias {bias} {kind}: {n_bad}/{want.size}")
    return bad, total


def convtranspose_sweep(rng) -> tuple[int, int]:
    bad = total = 0
    for c, m, k, s, p, d, op, hw in [(16, 8, 2, 2, 0, 1, 0, 8), (5, 3, 3, 2, 1, 1, 1, 7), (4, 6, 3, 1, 0, 1, 0, 5),
                                     (3, 2, 4, 2, 1, 1, 0, 6), (7, 3, 3, 3, 0, 2, 1, 4), (130, 4, 3, 2, 1, 1, 1, 4),
                                     (300, 4, 2, 2, 0, 1, 0, 3), (600, 2, 2, 1, 0, 1, 0, 2), (40, 1, 1, 1, 0, 1, 0, 20),
                                     (200, 8, 3, 2, 1, 1, 1, 16)]:
        x_shape = (2, c, hw, hw)
        w = (rng.standard_normal((c, m, k, k)) * 0.3).astype(F32)
        b = rng.standard_normal(m).astype(F32)
        node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[s, s], pads=[p] * 4,
                                dilations=[d, d], output_padding=[op, op], kernel_shape=[k, k])
        sess = _session(node, x_shape, {"w": w, "b": b})
        size = ((hw - 1) * s + d * (k - 1) + 1 - 2 * p + op,) * 2
        for kind, x in _inputs(x_shape, rng):
            want = sess.run(None, {"x": x})[0]
            got = convtranspose_ort(x, weight=w, bias=b, strides=(s, s), pads=(p,) * 4, dilations=(d, d),
                                    output_size=size)
            n_bad = _differ(got, want)
            bad, total = bad + n_bad, total + want.size
            if n_bad:
                print(f"  ConvTranspose C={c} M={m} k={k} s={s} p={p} d={d} op={op} {kind}: {n_bad}/{want.size}")
    return bad, total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-n", type=int, default=80, help="longest LayerNormalization row")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    ln = layernorm_sweep(a.max_n, rng)
    ct = convtranspose_sweep(rng)
    print(f"LayerNormalization: {ln[0]} of {ln[1]} float32 elements differ from ORT {ort.__version__}")
    print(f"ConvTranspose:      {ct[0]} of {ct[1]} float32 elements differ from ORT {ort.__version__}")
    return 1 if ln[0] or ct[0] else 0


if __name__ == "__main__":
    sys.exit(main())
