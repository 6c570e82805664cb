"""Time the portable path's dense kernels on the shapes the bench models use, in isolation.

    SIMULATOR_KERNELS=portable python bench/portable_kernels.py [--cpu]

Each case is one fast step (``prepare_conv`` / ``prepare_gemm``) whose kernel calls are looped
inside one jitted function (no Python between calls); the figure is the best time per step over
many short windows, so a loaded machine's preemptions drop out, followed by the time of each
call alone (the int16 image prepass, the dense kernel). Cases: ResNet-8's convolutions (3->16,
16->16 and 32->32 3x3, 16->32 1x1 stride 2; batch 16), a KWS-like 64->64 1x1 conv (batch 16),
AD01's 640->128 and 128->640 fully connected layers at batch 256 and at batch 1 (weights reused
from the cache), with the models' fp32 requantization. Prints GMAC/s per case: compare runs with
``SIMULATOR_KERNELS=portable`` and ``vnni``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rq(rng, n_out):
    """The models' requantization (``litert-default`` / ``onnxruntime-cpu``: fp32 multiplier,
    round half to even)."""
    return {"rq_mode": "fp32", "rq_multiplier": rng.uniform(1e-4, 1e-3, n_out).astype(np.float32),
            "rq_rounding": "half_even", "out_zero_point": -3, "out_dtype": "int8"}


def _case_conv(rng, batch, hw, cin, cout, k, pad, stride=1):
    from simulator.kernels.conv import prepare_conv

    w = rng.integers(-127, 128, (cout, cin, k, k)).astype(np.int8)
    rq = _rq(rng, cout)
    fast = prepare_conv(w, bias=rng.integers(-999, 999, cout), input_zero_point=-128,
                        strides=(stride, stride), pads=(pad,) * 4, layout="NHWC", requant=rq,
                        channel_axis=3)
    x = rng.integers(-128, 128, (batch, hw, hw, cin)).astype(np.int8)
    out_hw = (hw + 2 * pad - k) // stride + 1
    return fast, x, batch * out_hw * out_hw * cout * cin * k * k


def _case_gemm(rng, rows, depth, cols):
    from simulator.kernels.gemm import prepare_gemm

    w = rng.integers(-127, 128, (depth, cols)).astype(np.int8)
    rq = _rq(rng, cols)
    fast = prepare_gemm(w, bias=rng.integers(-999, 999, cols), input_zero_point=-128,
                        requant=rq)
    x = rng.integers(-128, 128, (rows, depth)).astype(np.int8)
    return fast, x, rows * depth * cols


def _looped(launch, x):
    """A jitted ``loop(n, x)`` running the launch's calls ``n`` times, and its argument list."""
    import numba

    from simulator.launch import In, Tmp

    temps = [np.empty(s, dtype=d) for s, d in launch.temps]
    args, lines, g = [], [], {}
    for i, call in enumerate(launch.calls):
        g[f"K{i}"] = call.fn
        names = []
        for a in call.args:
            if isinstance(a, (In, Tmp)):
                arr = x if isinstance(a, In) else temps[a.index]
                arr = arr if a.shape is None else arr.reshape(a.shape)
            else:
                arr = a
            names.append(f"a{len(args)}")
            args.append(arr)
        lines.append(f"        K{i}({', '.join(names)})")
    params = ", ".join(f"a{j}" for j in range(len(args)))
    exec(f"def loop(n, {params}):\n    for _ in range(n):\n" + "\n".join(lines) + "\n", g)  # noqa: S102
    return numba.njit(g["loop"]), args


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="process CPU time instead of wall time")
    ap.add_argument("--windows", type=int, default=200)
    args = ap.parse_args(argv)
    import numba

    from simulator.capabilities import capabilities
    from simulator.launch import Launch

    numba.set_num_threads(1)
    clock = time.process_time if args.cpu else time.perf_counter
    rng = np.random.default_rng(0)
    cases = {
        "resnet8 conv 3->16 3x3 32x32 b16": _case_conv(rng, 16, 32, 3, 16, 3, 1),
        "resnet8 conv 16->16 3x3 32x32 b16": _case_conv(rng, 16, 32, 16, 16, 3, 1),
        "resnet8 conv 32->32 3x3 16x16 b16": _case_conv(rng, 16, 16, 32, 32, 3, 1),
        "resnet8 conv 16->32 1x1 /2 32x32 b16": _case_conv(rng, 16, 32, 16, 32, 1, 0, 2),
        "conv 64->64 1x1 25x5 b16": _case_conv(rng, 16, 5, 64, 64, 1, 0),
        "ad01 fc 640->128 b256": _case_gemm(rng, 256, 640, 128),
        "ad01 fc 128->640 b256": _case_gemm(rng, 256, 128, 640),
        "ad01 fc 640->128 b1": _case_gemm(rng, 1, 640, 128),
        "ad01 fc 128->640 b1": _case_gemm(rng, 1, 128, 640),
        "ad01 fc 128->8 b1": _case_gemm(rng, 1, 128, 8),
    }
    print(f"kernels: {capabilities().kernels}")
    for name, (fast, x, macs) in cases.items():
        launch, _ = fast.launch(x.shape, x.dtype)
        best = _best(launch, x, clock, args.windows)
        parts = [_best(Launch(launch.temps, (call,), launch.outputs), x, clock, args.windows)
                 for call in launch.calls] if len(launch.calls) > 1 else [best]
        calls = ", ".join(f"{c.fn.py_func.__name__} {t * 1e6:.1f}"
                          for c, t in zip(launch.calls, parts))
        print(f"{name:38s} {best * 1e6:10.2f} us  {macs / best / 1e9:7.1f} GMAC/s  [{calls}]")


def _best(launch, x, clock, windows):
    """Best seconds per run of ``launch`` on ``x`` over ``windows`` windows of ~2 ms."""
    loop, largs = _looped(launch, x)
    loop(1, *largs)
    t0 = time.perf_counter()
    loop(3, *largs)
    n = max(1, int(0.002 / max((time.perf_counter() - t0) / 3, 1e-9)))
    return min(_window(loop, largs, n, clock) for _ in range(windows))


def _window(loop, largs, n, clock):
    t0 = clock()
    loop(n, *largs)
    return (clock() - t0) / n


if __name__ == "__main__":
    main()
