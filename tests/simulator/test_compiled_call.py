"""The call into a compiled program (simulator/compiled.py ``CompiledProgram.run``) and the glue
of its generated function (simulator/kernels/portable_glue.py): the same bits and counters as the
interpreter, whatever the feeds look like.

Checked on a small fully connected network (4 layers, one of its outputs a reshaped
intermediate): outputs and per-step ``out_saturated`` counters against the interpreter
(``compile="no"``) on random, extreme and saturating inputs; intermediates no output aliases
live on the stack, the others on the heap, and a result stays intact after later runs; feeds that
miss the fast path (non-contiguous, odd strides on a dimension of extent 1, another dtype object,
an ndarray subclass, read-only, another shape, a dict with other keys) give the same result or the
interpreter's error. ``c_view`` and ``stack_array`` against
numpy. Runs on this process's kernel path and, in the child process of
``test_portable.py::test_forced_portable_process``, on the portable kernels.
"""
import numpy as np
import pytest

from simulator.compiled import compile_program, last_reason
from simulator.errors import KernelInputError
from simulator.program import Program, Step, TensorSpec
from simulator.run import run

_OUT8 = {"out_dtype": "int8", "out_min": -128, "out_max": 127}


def _fc(rng, name, src, dst, n_in, n_out, scale):
    return Step("gemm", name, (src,), (dst,), {
        "weight": rng.integers(-128, 128, (n_in, n_out)).astype(np.int8),
        "bias": rng.integers(-3000, 3000, n_out), "input_zero_point": int(rng.integers(-20, 20)),
        "out_zero_point": int(rng.integers(-10, 10)), "rq_mode": "fp32",
        "rq_multiplier": (rng.uniform(0.5, 1.5, n_out) * scale).astype(np.float32),
        "rq_rounding": "half_even", **_OUT8})


def _mlp(scale=2e-4):
    """x (40) -> fc1 (24) -> reshape -> fc2 (16) -> fc3 (8); outputs the reshape (a view of
    fc1's buffer) and fc3. ``scale``: requantization multipliers (large ones saturate)."""
    rng = np.random.default_rng(7)
    steps = (_fc(rng, "fc1", "x", "h", 40, 24, scale),
             Step("reshape", "flat", ("h",), ("hr",), {"shape": (-1, 24)}),
             _fc(rng, "fc2", "hr", "y", 24, 16, scale),
             _fc(rng, "fc3", "y", "z", 16, 8, scale))
    return Program((TensorSpec("x", "int8", (None, 40)),),
                   (TensorSpec("hr", "int8", (None, 24)), TensorSpec("z", "int8", (None, 8))),
                   steps)


def _x(seed, rows=1):
    return np.random.default_rng(seed).integers(-128, 128, (rows, 40)).astype(np.int8)


def _same(program, feeds, got):
    want = run(program, feeds, compile="no")
    assert list(got.outputs) == list(want.outputs)
    for name, arr in want.outputs.items():
        assert got.outputs[name].dtype == arr.dtype and got.outputs[name].shape == arr.shape
        np.testing.assert_array_equal(got.outputs[name], arr, err_msg=name)
    assert dict(got.stats) == dict(want.stats)
    assert got.trace == {}


@pytest.mark.parametrize("scale", [2e-4, 5e-2])
def test_compiled_call_matches_interpreter(scale):
    program = _mlp(scale)
    compiled = compile_program(program, {"x": _x(0)})
    assert compiled is not None, last_reason()
    # fc2's output feeds only fc3: on the stack; fc1's is an output (through the reshape) and
    # fc3's is one: on the heap
    assert compiled.source.count("stack_array(16, np.int8)") == 1
    assert compiled.source.count("np.empty(") == 2
    feeds = [_x(seed) for seed in range(4)] + [np.full((1, 40), v, np.int8) for v in (-128, 127)]
    results = [compiled.run({"x": x}) for x in feeds]
    for x, got in zip(feeds, results):  # every result intact after the later runs
        _same(program, {"x": x}, got)
    saturated = sum(s["out_saturated"] for r in results for s in r.stats.values())
    assert (saturated > 0) == (scale > 1e-3)
    assert results[0].outputs["z"] is not results[1].outputs["z"]


def test_compiled_call_feeds_off_the_fast_path():
    program = _mlp()
    compiled = compile_program(program, {"x": _x(0)})
    compiled.run({"x": _x(0)})
    assert compiled._one is not None  # the entry point's path is armed
    x = _x(3)
    wide = np.zeros((1, 80), np.int8)
    wide[:, ::2] = x
    _same(program, {"x": x}, compiled.run({"x": wide[:, ::2]}))  # not contiguous: copied
    rows = np.zeros((3, 40), np.int8)
    rows[0] = x
    assert rows[::2][:1].strides == (80, 1)  # C-contiguous all the same (one row)
    _same(program, {"x": x}, compiled.run({"x": rows[::2][:1]}))
    _same(program, {"x": x}, compiled.run({"x": np.asfortranarray(x)}))
    tagged = x.astype(np.dtype(np.int8, metadata={"tag": 1}))  # another int8 dtype object
    assert tagged.dtype is not np.dtype(np.int8)
    _same(program, {"x": x}, compiled.run({"x": tagged}))

    class Sub(np.ndarray):
        pass

    _same(program, {"x": x}, compiled.run({"x": x.view(Sub)}))
    frozen = x.copy()
    frozen.setflags(write=False)
    _same(program, {"x": x}, compiled.run({"x": frozen}))
    with pytest.raises(KernelInputError, match="shape"):
        compiled.run({"x": _x(0, rows=2)})
    with pytest.raises(KernelInputError, match="dtype"):
        compiled.run({"x": x.astype(np.int16)})
    with pytest.raises(KernelInputError, match="missing"):
        compiled.run({})
    with pytest.raises(KernelInputError, match="unknown"):
        compiled.run({"x": x, "y": x})
    with pytest.raises(KernelInputError, match="numpy array"):
        compiled.run({"x": x.tolist()})


def test_glue_views_and_stack_arrays():
    from numba import njit

    from simulator.kernels.portable_glue import c_view, stack_array

    @njit
    def views(a, b):
        s = stack_array(12, np.int16)
        for i in range(12):
            s[i] = a[i] * 3
        v = c_view(s, (3, 4))
        w = c_view(b, (2, 3, 2))
        return v.copy(), w.copy(), c_view(w, (12,))[5]

    a = np.arange(-6, 6, dtype=np.int16)
    b = np.arange(12, dtype=np.int64)
    v, w, e = views(a, b)
    np.testing.assert_array_equal(v, (a * 3).reshape(3, 4))
    np.testing.assert_array_equal(w, b.reshape(2, 3, 2))
    assert e == 5

    @njit
    def bad(b):
        return c_view(b, (5,))

    with pytest.raises(ValueError, match="size"):
        bad(b)
