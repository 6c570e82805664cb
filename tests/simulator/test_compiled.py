"""simulator.compiled: a program compiled into one jitted function gives the interpreter's bits
(outputs and per-step saturation counters) on the MLPerf Tiny models under both TFLite profiles
and on a hand-built NHWC network; programs it cannot compile are refused with the step named;
wrong inputs get the interpreter's errors."""
import os
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "tflite"))

from simulator.compiled import compile_program, last_reason
from simulator.errors import KernelInputError
from simulator.program import Program, Step, TensorSpec
from simulator.run import run


def assert_same(program, feeds, compiled):
    want = run(program, feeds)
    got = compiled.run(feeds)
    assert list(got.outputs) == list(want.outputs)
    for name in want.outputs:
        assert got.outputs[name].dtype == want.outputs[name].dtype
        assert got.outputs[name].shape == want.outputs[name].shape
        np.testing.assert_array_equal(got.outputs[name], want.outputs[name], err_msg=name)
    assert got.stats == want.stats


def _int8(rng, shape):
    return rng.integers(-128, 128, shape).astype(np.int8)


# --- MLPerf Tiny models -------------------------------------------------------------------------
def _mlperf(key):
    from tflite_helpers import model_path

    path = model_path(key)
    if not os.path.exists(path):
        pytest.skip("MLPerf Tiny models not found (set MRQ_MLPERF_TINY)")
    return path


@pytest.mark.parametrize("key,profile", [("resnet8", "litert-default"), ("kws", "litert-default"),
                                         ("ad01", "litert-default"), ("resnet8", "tflite-int8")])
def test_mlperf_models_compile_bit_exact(key, profile):
    from mrq.api import bind_inputs, prepare

    lowered = prepare(_mlperf(key), profile)
    spec = lowered.program.inputs[0]
    rng = np.random.default_rng(0)
    x = _int8(rng, (1,) + tuple(spec.shape[1:]))
    program, feeds = bind_inputs(lowered, {spec.name: x})
    compiled = compile_program(program, feeds)
    assert compiled is not None, last_reason()
    for seed in range(6):
        x = _int8(np.random.default_rng(seed), x.shape)
        if seed == 5:  # saturating corners: every input at one extreme
            x[...] = -128
        assert_same(program, {spec.name: x}, compiled)


# --- committed ONNX models (float input: quantize, transpose, maxpool, global_avgpool, dequantize)
@pytest.mark.parametrize("model,profile", [
    ("demo", "onnxruntime-cpu"), ("demo", "nna-sym8"), ("demo", "tflite-int8"),
    ("demo", "nna-a16w8"), ("bench/models/fmnist_mnv2_qat_qdq.onnx", "onnxruntime-cpu")])
def test_onnx_models_compile_bit_exact(model, profile):
    from mrq.api import bind_inputs, prepare
    from mrq.demo import DEMO_MODEL

    path = DEMO_MODEL if model == "demo" else str(ROOT / model)
    lowered = prepare(path, profile)
    spec = lowered.program.inputs[0]
    shape = (2,) + tuple(spec.shape[1:])

    def feeds(seed):
        x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 3.0
        x.reshape(-1)[::5] = 0.0
        return bind_inputs(lowered, {spec.name: x})

    program, bound = feeds(0)
    compiled = compile_program(program, bound)
    assert compiled is not None, last_reason()
    for seed in range(3):
        assert_same(*feeds(seed), compiled)


# --- a hand-built NHWC network: conv, depthwise, residual add, avgpool, reshape, gemm, softmax ----
def _net(rq_mode):
    rng = np.random.default_rng(1)
    c = 8

    def rq(n):
        if rq_mode == "fp32":
            return {"rq_mode": "fp32", "rq_multiplier": rng.uniform(1e-3, 4e-3, n).astype(np.float32),
                    "rq_rounding": "half_even"}
        return {"rq_mode": "double_q31",
                "rq_multiplier": rng.integers(2**30, 2**31 - 1, n).astype(np.int64),
                "rq_shift": np.full(n, 40, np.int64), "rq_rounding": "half_away"}

    out8 = {"out_dtype": "int8", "out_min": -128, "out_max": 127}
    steps = (
        Step("conv", "conv0", ("x",), ("a",), {
            "weight": _int8(rng, (c, 3, 3, 3)), "bias": rng.integers(-900, 900, c),
            "input_zero_point": -3, "pads": (1, 1, 1, 1), "layout": "NHWC", "out_zero_point": -5,
            **rq(c), **out8}),
        Step("conv", "dw1", ("a",), ("b",), {
            "weight": _int8(rng, (c, 1, 3, 3)), "bias": rng.integers(-900, 900, c),
            "input_zero_point": -5, "pads": (1, 1, 1, 1), "group": c, "layout": "NHWC",
            "out_zero_point": 2, **rq(c), **out8}),
        Step("add", "res", ("a", "b"), ("s",), {
            "mode": "fixed", "zero_point_a": -5, "zero_point_b": 2, "multiplier_a": 1 << 14,
            "multiplier_b": 3 << 13, "rq_mode": "shift", "rq_shift": np.array([15]),
            "rq_rounding": "half_up", "out_zero_point": 1, **out8}),
        Step("avgpool", "pool", ("s",), ("p",), {
            "mode": "tflite_raw", "kernel": (2, 2), "strides": (2, 2), "layout": "NHWC",
            **out8}),
        Step("reshape", "flat", ("p",), ("f",), {"shape": (-1, 4 * 4 * c)}),
        Step("gemm", "fc", ("f",), ("g",), {
            "weight": _int8(rng, (4 * 4 * c, 10)), "bias": rng.integers(-900, 900, 10),
            "input_zero_point": 1, "out_zero_point": 0, **rq(10), **out8}),
        Step("softmax_tflite", "prob", ("g",), ("y",), {
            "mode": "gemmlowp", "input_multiplier": 1 << 30, "input_left_shift": 23,
            "diff_min": -248, **out8}),
    )
    return Program((TensorSpec("x", "int8", (None, 8, 8, 3)),),
                   (TensorSpec("y", "int8", (None, 10)),), steps)


@pytest.mark.parametrize("rq_mode", ["fp32", "double_q31"])
def test_hand_built_network_compiles_bit_exact(rq_mode):
    program = _net(rq_mode)
    rng = np.random.default_rng(2)
    feeds = {"x": _int8(rng, (2, 8, 8, 3))}
    compiled = compile_program(program, feeds)
    assert compiled is not None, last_reason()
    assert "sat[" in compiled.source  # the kernels are called from the generated function
    for seed in range(4):
        feeds = {"x": _int8(np.random.default_rng(seed), (2, 8, 8, 3))}
        if seed == 3:
            feeds["x"][...] = 127
        assert_same(program, feeds, compiled)
    # some outputs saturate somewhere: the counters are compared, not all zero
    assert any(s["out_saturated"] for s in run(program, feeds).stats.values())


def test_compiled_program_rejects_other_shapes_and_dtypes():
    program = _net("fp32")
    feeds = {"x": _int8(np.random.default_rng(0), (1, 8, 8, 3))}
    compiled = compile_program(program, feeds)
    with pytest.raises(KernelInputError, match="shape"):
        compiled.run({"x": _int8(np.random.default_rng(0), (2, 8, 8, 3))})
    with pytest.raises(KernelInputError, match="dtype"):
        compiled.run({"x": feeds["x"].astype(np.int16)})
    # a non-contiguous input is fine (copied)
    x = np.ascontiguousarray(np.transpose(_int8(np.random.default_rng(1), (1, 3, 8, 8)),
                                          (0, 2, 3, 1)))
    assert_same(program, {"x": x[:, :, :, :]}, compiled)


def test_program_without_launch_is_refused_naming_the_step():
    steps = (Step("maxpool", "mp", ("x",), ("p",), {"kernel": (2, 2), "strides": (2, 2)}),
             Step("clamp", "cl", ("p",), ("y",), {"out_min": -5, "out_max": 5}))
    program = Program((TensorSpec("x", "int8", (None, 2, 4, 4)),),
                      (TensorSpec("y", "int8", (None, 2, 2, 2)),), steps)
    assert compile_program(program, {"x": np.zeros((1, 2, 4, 4), np.int8)}) is None
    assert "'cl'" in last_reason() and "clamp" in last_reason()


def test_unprovable_narrow_accumulator_is_refused():
    # a 20-bit accumulator that int8 inputs can overflow: the interpreter must look at the
    # values, so there is no launch
    rng = np.random.default_rng(0)
    steps = (Step("conv", "narrow", ("x",), ("y",), {
        "weight": _int8(rng, (4, 16, 3, 3)), "layout": "NHWC", "acc_bits": 20,
        "acc_overflow": "saturate", "rq_mode": "fp32",
        "rq_multiplier": np.full(4, 1e-3, np.float32), "out_dtype": "int8"}),)
    program = Program((TensorSpec("x", "int8", (None, 6, 6, 16)),),
                      (TensorSpec("y", "int8", (None, 4, 4, 4)),), steps)
    assert compile_program(program, {"x": np.zeros((1, 6, 6, 16), np.int8)}) is None
    assert "'narrow'" in last_reason()


def test_source_is_written_to_the_cache_dir_or_compiled_in_memory(tmp_path, monkeypatch):
    steps = (Step("reshape", "r", ("x",), ("y",), {"shape": (-1, 8)}),)
    program = Program((TensorSpec("x", "int8", (None, 2, 4)),),
                      (TensorSpec("y", "int8", (None, 8)),), steps)
    feeds = {"x": _int8(np.random.default_rng(0), (3, 2, 4))}
    monkeypatch.setenv("MRQ_CACHE_DIR", str(tmp_path))
    compiled = compile_program(program, feeds)
    written = list((tmp_path / "programs").glob("_mrq_program_*.py"))
    assert len(written) == 1 and written[0].read_text() == compiled.source
    assert_same(program, feeds, compiled)
    # not writable (a file where the directory should be): compiled in memory, same result
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MRQ_CACHE_DIR", str(blocker))
    steps2 = (Step("reshape", "r2", ("x",), ("y",), {"shape": (-1, 4, 2)}),)
    program2 = Program(program.inputs, (TensorSpec("y", "int8", (None, 4, 2)),), steps2)
    compiled2 = compile_program(program2, feeds)
    assert_same(program2, feeds, compiled2)


def test_transpose_matches_numpy_for_every_permutation():
    """The jitted rank<=4 transpose (and the view when only unit axes move) against numpy, ranks
    1 to 5, with unit axes."""
    import itertools

    from simulator.kernels.movement import transpose

    rng = np.random.default_rng(0)
    for shape in [(5,), (3, 4), (1, 4), (2, 1, 3), (2, 3, 4, 5), (2, 1, 1, 5), (1, 3, 1, 1),
                  (2, 3, 1, 2, 2)]:
        x = rng.integers(-128, 128, shape).astype(np.int8)
        for perm in itertools.permutations(range(len(shape))):
            got = transpose(x, perm=perm)
            want = np.transpose(x, perm)
            assert got.flags.c_contiguous
            np.testing.assert_array_equal(got, want, err_msg=f"{shape} {perm}")


# --- batches split over threads (one range of rows per thread) and run()'s switch ---------------
def _reference(program, feeds):
    return run(program, feeds, threads=1, compile="no")


def _assert_results_equal(got, want):
    assert list(got.outputs) == list(want.outputs)
    for name in want.outputs:
        assert got.outputs[name].shape == want.outputs[name].shape
        np.testing.assert_array_equal(got.outputs[name], want.outputs[name], err_msg=name)
    assert dict(got.stats) == dict(want.stats)


def _fc(n_in=24, n_out=20):
    """One gemm (int8, per-channel fp32 requantization): the cheapest program with a counted
    kernel, so its tests compile little."""
    rng = np.random.default_rng(5)
    steps = (Step("gemm", "fc", ("x",), ("y",), {
        "weight": _int8(rng, (n_in, n_out)), "bias": rng.integers(-2000, 2000, n_out),
        "input_zero_point": 3, "out_zero_point": -2, "rq_mode": "fp32",
        "rq_multiplier": rng.uniform(2e-3, 9e-3, n_out).astype(np.float32),
        "out_dtype": "int8"}),)
    return Program((TensorSpec("x", "int8", (None, n_in)),),
                   (TensorSpec("y", "int8", (None, n_out)),), steps)


def _needs_two_threads():
    from simulator.run import max_threads

    if max_threads() < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2")


def test_batch_split_over_threads_is_bit_exact():
    _needs_two_threads()
    program = _fc()
    # 19 rows over 2 threads: a chunk of 10 rows and a shorter one of 9 (two chunk functions)
    feeds = {"x": _int8(np.random.default_rng(3), (19, 24))}
    compiled = compile_program(program, feeds, threads=2)
    assert compiled is not None, last_reason()
    assert compiled.chunks == 2 and "prange(2)" in compiled.source
    assert "def chunk1(" in compiled.source
    for seed in range(3):
        x = _int8(np.random.default_rng(seed), (19, 24))
        x[seed::5] = 127 if seed % 2 else -128  # saturating rows in both chunks
        feeds = {"x": x}
        _assert_results_equal(compiled.run(feeds), _reference(program, feeds))
        assert _reference(program, feeds).stats["fc"]["out_saturated"]
    # one thread, or fewer than CHUNK_MIN_ROWS rows per thread: not split
    assert compile_program(program, feeds, threads=1).chunks == 1
    assert compile_program(program, {"x": x[:15]}, threads=2).chunks == 1


@pytest.mark.parametrize("second,out_shape,why", [
    (Step("reshape", "flat", ("p",), ("y",), {"shape": (-1,)}), (None,), "rank 1"),
    (Step("transpose", "t", ("p",), ("y",), {"perm": (1, 0, 2)}), (4, None, 8), "batch moved"),
    (Step("reshape", "r", ("p",), ("y",), {"shape": (-1, 16)}), (None, 16), "rows regrouped"),
])
def test_batch_is_not_split_when_rows_would_mix(second, out_shape, why):
    from simulator.compiled import _generate_chunked

    steps = (Step("reshape", "p0", ("x",), ("p",), {"shape": (-1, 4, 8)}), second)
    program = Program((TensorSpec("x", "int8", (None, 32)),),
                      (TensorSpec("y", "int8", out_shape),), steps)
    feeds = {"x": np.zeros((32, 32), np.int8)}
    assert _generate_chunked(program, feeds, 2) is None, why
    if why == "rows regrouped":  # the same steps on rows of 16 keep the batch: split
        ok = Program(program.inputs, (TensorSpec("y", "int8", (None, 2, 16)),),
                     (steps[0], Step("reshape", "r", ("p",), ("y",), {"shape": (-1, 2, 16)})))
        assert _generate_chunked(ok, feeds, 2) is not None


def test_run_switches_to_the_compiled_program_and_back_never(monkeypatch):
    import simulator.run as run_mod

    feeds = {"x": _int8(np.random.default_rng(4), (19, 24))}
    feeds["x"][::3] = 127
    program = _fc()  # the program (and shape) of the split test's 1-thread compile
    want = _reference(program, feeds)
    # a switch as soon as the source is generated (run 3) and compiled (run 4)
    monkeypatch.setattr(run_mod, "STEP_PYTHON_S", 1e3)
    for _ in range(3):
        _assert_results_equal(run(program, feeds, threads=1), want)
        assert run_mod.switch_status(program, feeds, 1)["compiled"] is None
    _assert_results_equal(run(program, feeds, threads=1), want)
    status = run_mod.switch_status(program, feeds, 1)
    assert status["compiled"] is not None and status["switch_at"] == 4
    _assert_results_equal(run(program, feeds, threads=1), want)
    # trace and compile="no" take the interpreter (the compiled result has no trace)
    assert run(program, feeds, threads=1, trace=True).trace
    other = _fc()  # a new Program object: its own count
    for _ in range(6):
        run(other, feeds, threads=1, compile="no")
    assert run_mod.switch_status(other, feeds, 1)["runs"] == 0
    monkeypatch.setenv("SIMULATOR_COMPILE", "no")
    for _ in range(6):
        run(other, feeds, threads=1)
    assert run_mod.switch_status(other, feeds, 1)["compiled"] is None
    with pytest.raises(Exception, match="compile must be"):
        run(program, feeds, compile="yes")


def test_run_never_switches_a_program_without_launches(monkeypatch):
    import simulator.run as run_mod

    monkeypatch.setattr(run_mod, "STEP_PYTHON_S", 1e3)
    steps = (Step("clamp", "cl", ("x",), ("y",), {"out_min": -5, "out_max": 5}),)
    program = Program((TensorSpec("x", "int8", (None, 4)),), (TensorSpec("y", "int8", (None, 4)),),
                      steps)
    feeds = {"x": np.arange(-8, 8, dtype=np.int8).reshape(4, 4)}
    for _ in range(5):
        out = run(program, feeds, threads=1).outputs["y"]
    np.testing.assert_array_equal(out, np.clip(feeds["x"], -5, 5))
    assert run_mod.switch_status(program, feeds, 1)["switch_at"] == -1


def test_switch_probe_writes_nothing_and_prices_a_cold_compile(tmp_path, monkeypatch):
    import simulator.run as run_mod

    monkeypatch.setenv("MRQ_CACHE_DIR", str(tmp_path))
    steps = (Step("reshape", "r", ("x",), ("y",), {"shape": (-1, 3, 4)}),)
    program = Program((TensorSpec("x", "int8", (None, 12)),),
                      (TensorSpec("y", "int8", (None, 3, 4)),), steps)
    feeds = {"x": _int8(np.random.default_rng(7), (5, 12))}
    for _ in range(3):
        run(program, feeds, threads=1)
    # the source was generated (run 3) but not written: priced as a cold compile
    assert not (tmp_path / "programs").exists()
    cold = run_mod.COLD_COMPILE_S + run_mod.COLD_COMPILE_STEP_S
    assert run_mod.switch_status(program, feeds, 1)["switch_at"] == 3 + int(
        np.ceil(cold / run_mod.STEP_PYTHON_S))
    # once compiled (here explicitly), a new Program object's probe finds it on disk
    assert compile_program(program, feeds, threads=1).run(feeds).outputs["y"].shape == (5, 3, 4)
    again = Program(program.inputs, program.outputs, steps)
    for _ in range(3):
        run(again, feeds, threads=1)
    assert run_mod.switch_status(again, feeds, 1)["switch_at"] == 3 + int(
        np.ceil(run_mod.COMPILED_LOAD_S / run_mod.STEP_PYTHON_S))


def test_compiled_program_calls_the_interpreters_kernel_specialisations(tmp_path, monkeypatch):
    """A launch's constant arrays reach its kernels as read-only views, the type numba gives a
    compiled program's globals: compiling the program adds no kernel specialisation the
    interpreter did not already use (with writable arrays every kernel was compiled twice)."""
    import gc

    from numba.core.registry import CPUDispatcher

    from simulator.launch import Call, In, Launch

    weights = np.arange(4, dtype=np.int32)
    launch = Launch((), (Call(len, (In(0), weights)),), (In(0),))
    assert not launch.calls[0].args[1].flags.writeable
    assert weights.flags.writeable and np.shares_memory(launch.calls[0].args[1], weights)

    monkeypatch.setenv("MRQ_CACHE_DIR", str(tmp_path))   # the program compiles, not loads
    program = _net("double_q31")
    feeds = {"x": _int8(np.random.default_rng(5), (2, 8, 8, 3))}
    want = run(program, feeds, compile="no", threads=1)
    # type(), not isinstance(): gc also holds dead weak proxies, which isinstance dereferences
    before = {id(d): set(d.signatures) for d in gc.get_objects() if type(d) is CPUDispatcher}
    compiled = compile_program(program, feeds, threads=1)
    assert compiled is not None, last_reason()
    got = compiled.run(feeds)
    np.testing.assert_array_equal(got.outputs["y"], want.outputs["y"])
    kernels = [v for k, v in compiled.fn.py_func.__globals__.items()
               if k.startswith("K") and type(v) is CPUDispatcher]
    assert kernels
    added = {k.py_func.__qualname__: set(k.signatures) - before.get(id(k), set()) for k in kernels}
    assert not any(added.values()), added
