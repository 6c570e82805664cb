"""Fully connected (gemm) steps at batch sizes above the batch-1 kernel's: the gemm fast path
(the 8-row kernel of simulator/kernels/vnni_rows.py through simulator/kernels/gemm.py, or the
portable kernels) against tests/reference, one thread and two; and an AD01-like stack of gemms
run by the interpreter, by a compiled program and by a compiled program split over two threads
(simulator/compiled.py), at batch sizes that do not split evenly.

Checked: 4-64 rows (a partial 8-row block alone, full blocks and a partial one), depths that are
and are not multiples of 4, output channel counts with partial 16-channel blocks, int8 and uint8
inputs, int8 and uint8 weights with per-channel zero points, weights and inputs at their
extremes, input zero points at both ends, ReLU clamps and saturation counts (fp32 multipliers
small and huge), accumulators at the static bound. ``SIMULATOR_KERNELS=portable`` runs the same
checks on the portable kernels.
"""
import itertools
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numba
import numpy as np
import pytest

from simulator.compiled import compile_program, last_reason
from simulator.kernels.gemm import prepare_gemm
from simulator.program import Program, Step, TensorSpec
from simulator.run import max_threads, run
from tests.reference import quant_ref


def _acc(a, w, wzp, bias, xzp):
    """The exact accumulator (int64; the cases stay inside the static bound, so the reference's
    sequential int32 accumulation never wraps and equals this sum)."""
    return ((a.astype(np.int64) - xzp) @ (w.astype(np.int64) - np.asarray(wzp, np.int64))
            + np.asarray(bias, np.int64))


def _requant(rng, n_out, far=False):
    """Per-channel fp32 requantization, round half to even; ``far``: multipliers so large that
    most outputs saturate (the epilogue's float clamp)."""
    lo_m, hi_m = (1e4, 1e5) if far else (1e-4, 4e-3)
    zp = int(rng.integers(-128, 128))
    kw = {"rq_mode": "fp32", "rq_multiplier": rng.uniform(lo_m, hi_m, n_out).astype(np.float32),
          "rq_rounding": "half_even", "out_zero_point": zp, "out_dtype": "int8"}
    if rng.integers(2):
        kw["out_min"] = zp  # a fused ReLU
    return kw


def _check(a, w, wzp, bias, xzp, kw, parallel=False):
    fast = prepare_gemm(w, weight_zero_point=wzp, bias=bias, input_zero_point=xzp, requant=kw)
    assert fast is not None
    launch, _ = fast.launch(a.shape, a.dtype)
    # the fast path ran (a gemm kernel, threaded or not), not the general int64 one
    kernel = launch.calls[-1].fn.py_func.__name__
    assert kernel.endswith("_par") == parallel, kernel
    got, n_sat = fast.run(a)
    acc = _acc(a, w, wzp, bias, xzp)
    want, sat = quant_ref.requantize(acc, kw["rq_mode"], kw["rq_multiplier"], kw.get("rq_shift"),
                                     kw["rq_rounding"], kw["out_zero_point"],
                                     kw.get("out_min", -128), 127, "int8", -1)
    np.testing.assert_array_equal(got, want)
    assert n_sat == sat
    return acc, sat


@pytest.mark.parametrize("seed", range(10))
def test_gemm_rows_match_reference(seed):
    rng = np.random.default_rng(100 + seed)
    rows = (4, 7, 9, 17, 64)[seed % 5]
    depth = (4, 8, 60, 64, 130)[seed % 5 if seed < 5 else (seed + 2) % 5]
    n_cols = (8, 16, 20, 40, 33)[(seed + 1) % 5]
    # fp32 only: every requantization kind has its own tests with each fused kernel
    far = seed % 4 >= 2  # huge multipliers: saturation
    xdt = np.uint8 if seed % 5 == 4 else np.int8
    info = np.iinfo(xdt)
    a = rng.integers(info.min, info.max, (rows, depth), endpoint=True).astype(xdt)
    a[0] = info.max
    a[-1, ::2] = info.min
    if seed % 2:
        # uint8 weights, per-channel zero points: w - wzp spans int8 exactly at some channels
        wzp = rng.integers(100, 156, n_cols)
        ws = rng.integers(-128, 128, (depth, n_cols))
        ws[:, 0] = -128
        ws[:, -1] = 127
        w = np.clip(ws + wzp, 0, 255).astype(np.uint8)
    else:
        wzp = 0
        w = rng.integers(-128, 128, (depth, n_cols)).astype(np.int8)
        w[:, ::3] = rng.choice(np.array([-128, 127], np.int8), w[:, ::3].shape)
    bias = rng.integers(-3000, 3000, n_cols)
    xzp = (info.min, info.max, int(rng.integers(info.min, info.max + 1)))[seed % 3]
    _, sat = _check(a, w, wzp, bias, xzp, _requant(rng, n_cols, far))
    if far:
        assert sat  # the general epilogue's float clamp was exercised


def test_gemm_accumulators_at_the_bound():
    """Accumulators at the static bound (x - xzp = 255 against w = -128 over every channel) and
    multipliers putting ``|f|`` near ``2**29``: the output saturates at both ends."""
    depth, n_cols = 64, 18
    w = np.full((depth, n_cols), -128, np.int8)
    w[:, 1::2] = 127
    a = np.full((5, depth), 127, np.int8)
    a[1] = -128
    bias = np.zeros(n_cols, np.int64)
    bound = 255 * 128 * depth
    m = np.float32(2.0**29 / bound * 0.999)
    kw = {"rq_mode": "fp32", "rq_multiplier": np.full(n_cols, m, np.float32),
          "rq_rounding": "half_even", "out_zero_point": 5, "out_dtype": "int8"}
    acc, sat = _check(a, w, 0, bias, -128, kw)
    assert int(np.abs(acc).max()) == bound
    assert sat == 4 * n_cols  # rows 0, 2, 3, 4 at +-bound; row 1 (x - xzp = 0) is exact 0


def test_gemm_rows_threads():
    """Enough products for the threaded kernel: the same bits as one thread and the
    reference, 8-row blocks split between the threads."""
    if max_threads() < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2")
    rng = np.random.default_rng(7)
    rows, depth, n_cols = 251, 128, 128
    a = rng.integers(-128, 128, (rows, depth)).astype(np.int8)
    a[::7] = -128
    w = rng.integers(-128, 128, (depth, n_cols)).astype(np.int8)
    bias = rng.integers(-3000, 3000, n_cols)
    kw = _requant(rng, n_cols)
    previous = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        _check(a, w, 0, bias, 9, kw, parallel=True)
    finally:
        numba.set_num_threads(previous)


# --- an AD01-like stack: the interpreter, compiled, and compiled over two threads -------------
def _stack():
    """Three gemms 40 -> 64 -> 8 -> 40, the first two with fused ReLUs (out_min = zero point),
    fp32 requantization, as LiteRT lowers AD01."""
    rng = np.random.default_rng(11)
    dims = (40, 64, 8, 40)
    steps = []
    for i, (k, n) in enumerate(itertools.pairwise(dims)):
        relu = i < len(dims) - 2
        zp = -128 if relu else int(rng.integers(-20, 20))
        steps.append(Step("gemm", f"fc{i}", (f"b{i}",), (f"b{i + 1}",), {
            "weight": rng.integers(-128, 128, (k, n)).astype(np.int8),
            "bias": rng.integers(-4000, 4000, n), "input_zero_point": -128 if i else 7,
            "out_zero_point": zp, "out_min": zp if relu else -128, "rq_mode": "fp32",
            "rq_multiplier": rng.uniform(2e-3, 9e-3, n).astype(np.float32),
            "out_dtype": "int8"}))
    return Program((TensorSpec("b0", "int8", (None, dims[0])),),
                   (TensorSpec(f"b{len(steps)}", "int8", (None, dims[-1])),), tuple(steps))


def _stack_reference(program, x):
    """Layer by layer: the exact accumulator and tests/reference requantization."""
    sats = {}
    for step in program.steps:
        p = step.params
        p = p if isinstance(p, dict) else {f: getattr(p, f) for f in
                                           ("weight", "bias", "input_zero_point",
                                            "out_zero_point", "out_min", "rq_multiplier")}
        acc = _acc(x, p["weight"], 0, p["bias"], p["input_zero_point"])
        x, sats[step.name] = quant_ref.requantize(acc, "fp32", p["rq_multiplier"], None,
                                                  "half_even", p["out_zero_point"],
                                                  p["out_min"], 127, "int8", -1)
    return x, sats


@pytest.mark.parametrize("batch,threads", [(1, 1), (3, 1), (255, 2)])
def test_stack_compiled_and_split_match_reference(batch, threads):
    """Batch 1 (the interpreter: its compiled form is tests/simulator/test_compiled.py's), 3
    (compiled, the batch-1 kernel) and 255 (compiled and split over two threads: chunks of 128
    and 127 rows, each through the whole stack)."""
    if threads > max_threads():
        pytest.skip("needs NUMBA_NUM_THREADS >= 2")
    program = _stack()
    out_name = program.outputs[0].name
    rng = np.random.default_rng(batch)
    x = rng.integers(-128, 128, (batch, 40)).astype(np.int8)
    x[0] = 127
    x[-1] = -128
    feeds = {"b0": x}
    want, sats = _stack_reference(program, x)
    interp = run(program, feeds, compile="no", threads=threads)
    np.testing.assert_array_equal(interp.outputs[out_name], want)
    assert {k: v["out_saturated"] for k, v in interp.stats.items()} == sats
    assert any(sats.values())
    if batch == 1:
        return
    compiled = compile_program(program, feeds, threads=threads)
    assert compiled is not None, last_reason()
    assert compiled.chunks == threads
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        got = compiled.run(feeds)
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_array_equal(got.outputs[out_name], want)
    assert dict(got.stats) == dict(interp.stats)
