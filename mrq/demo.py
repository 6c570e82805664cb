"""``mrq demo``: the main job on a built-in example, with nothing to download.

A small CNN (conv, depthwise conv, residual add, max pool, global average pool, gemm) quantized
by ONNX Runtime's quantize_static ships in ``mrq/data``. The demo simulates it bit-exactly under
two hardware profiles, prints each layer's fidelity against the float reference, shows where the
two profiles' integer outputs differ, and, when onnxruntime is installed, checks the
simulation under this host's ONNX Runtime profile (``onnxruntime-cpu``, ``onnxruntime-cpu-avx2``,
...: :func:`mrq.hw_profile.onnxruntime_profile_for_host`) against ONNX Runtime itself.

On a fresh machine (empty JIT cache) most of the demo's time is compiling kernels, and each
profile needs its own specialisations. numba compiles under one process-wide lock, so a child
process (:func:`mrq.warm_up.precompile`) compiles the kernels of every profile's program from
the last one back while this process simulates the profiles in order, until the two meet: on
two cores the compilation takes about half as long. The child's output is thrown away; the
results printed are always this process's own.
"""
from __future__ import annotations

import os

import numpy as np

from mrq.api import simulate
from mrq.hw_profile import onnxruntime_profile_for_host
from mrq.metrics import format_table

DEMO_MODEL = os.path.join(os.path.dirname(__file__), "data", "demo_cnn.onnx")


def demo_inputs(batch: int = 8, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)}


def _ort_outputs(feeds: dict):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(DEMO_MODEL, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def _start_warm_up(profiles):
    """The child compiling the kernels of the demo under ``profiles`` (:mod:`mrq.warm_up`), or
    ``None`` (a warm cache, or nothing to compile)."""
    from mrq.warm_up import cache_is_cold, input_spec, start_precompile

    if not profiles or not cache_is_cold():
        return None
    spec = input_spec({name: (a.shape, a.dtype) for name, a in demo_inputs().items()})
    return start_precompile([(DEMO_MODEL, profile, "native", spec) for profile in profiles])


def run_demo(profiles=None) -> int:
    """Simulate the demo model under ``profiles`` (default: the ONNX Runtime profile of this
    host class, then tflite-int8); the ONNX Runtime profile's outputs are checked against ONNX
    Runtime itself."""
    if profiles is None:
        profiles = (onnxruntime_profile_for_host(), "tflite-int8")
    from mrq.warm_up import stop_child_after

    with stop_child_after(_start_warm_up(list(profiles))):
        return _run_demo(profiles)


def _run_demo(profiles) -> int:
    feeds = demo_inputs()
    print(f"model: {DEMO_MODEL}\ninput: 8 random images 3x16x16 (seed 0)\n")
    results = {}
    ort_out = None
    ort_profile = onnxruntime_profile_for_host()   # what ORT computes on this host
    for profile in profiles:
        res = simulate(DEMO_MODEL, profile, feeds, trace=True)
        results[profile] = res
        print(format_table(res.layers, title=f"== {profile}: per-layer fidelity vs the float reference"))
        if res.violations:
            print(f"   note: {len(res.violations)} format violation(s) of {profile}, e.g. {res.violations[0]}")
        print()
    names = list(profiles)
    if len(names) >= 2:
        a, b = results[names[0]], results[names[1]]
        print(f"== {names[0]} vs {names[1]}: integer outputs that differ per layer")
        for row in a.layers:
            x, y = a.trace.get(row.tensor), b.trace.get(row.tensor)
            if x is None or y is None or x.shape != y.shape:
                continue
            diff = np.abs(x.astype(np.int64) - y.astype(np.int64))
            print(f"   {row.layer:<24} {int(np.count_nonzero(diff)):6d}/{diff.size:<6d} differ, max {int(diff.max())} LSB")
        print()
    other_ort = [p for p in results if p.startswith("onnxruntime-cpu") and p != ort_profile]
    if other_ort and ort_profile not in results:
        print(f"ONNX Runtime runs {ort_profile}'s kernels on this host, not {other_ort[0]}'s: "
              f"skipping the check against ONNX Runtime")
    if ort_profile in results:
        if ort_out is None:
            ort_out = _ort_outputs(feeds)
        if ort_out is None:
            print("onnxruntime is not installed: skipping the check against ONNX Runtime")
        else:
            sim_out = results[ort_profile].outputs
            mismatches = sum(int(np.count_nonzero(sim_out[k] != v)) for k, v in ort_out.items())
            total = sum(v.size for v in ort_out.values())
            print(f"== {ort_profile} simulation vs ONNX Runtime {__import__('onnxruntime').__version__}: "
                  f"{mismatches} of {total} output elements differ")
            if mismatches:
                return 1
    return 0
