"""The portable kernel path (``SIMULATOR_KERNELS=portable``) against tests/reference.

The kernel path is fixed per process (simulator.capabilities), so on a host that runs the VNNI
kernels ``test_forced_portable_process`` runs this file's checks again in a child process that
forces the portable path; on a host without AVX-512 VNNI they run in this process directly.

Checked: the int16-pair dense conv / gemm kernel of simulator/kernels/portable.py (random
geometries, groups, both layouts and input dtypes, uint8 weights with far zero points and int16
weights at their extremes, saturating input corners, the largest accumulators the static bound
admits, rounding ties), the 16-lane fixed-point add, and one compiled program.
"""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np
import pytest

from simulator.capabilities import capabilities
from simulator.kernels import portable
from simulator.kernels.conv import prepare_conv
from simulator.kernels.eltwise import AddFixed
from simulator.kernels.gemm import prepare_gemm
from tests.reference import conv_ref, eltwise_ref, gemm_ref, quant_ref

HERE_PORTABLE = capabilities().kernels == "portable"
# elsewhere deselected by tests/simulator/conftest.py and run by test_forced_portable_process
in_child = pytest.mark.portable_child
FAR_ZPS = (0, 75, 116, 200, 255)


def _requant(rng, mode, n_out, out_dtype):
    """Requantization kwargs (and the clamp) for ``mode``; ``fixed`` halves the accumulator
    (multiplier 2**14, shift 15), so every odd accumulator is a rounding tie."""
    if mode == "fp32":
        kw = {"rq_multiplier": rng.uniform(1e-4, 4e-3, n_out).astype(np.float32),
              "rq_rounding": "half_even"}
    elif mode == "fixed":
        kw = {"rq_multiplier": np.full(n_out, 2**14, np.int64),
              "rq_shift": rng.integers(15, 17, n_out).astype(np.int64),
              "rq_rounding": "half_away"}
    else:  # double_q31: any int32 accumulator
        kw = {"rq_multiplier": rng.integers(2**30, 2**31 - 1, n_out).astype(np.int64),
              "rq_shift": rng.integers(36, 44, n_out).astype(np.int64),
              "rq_rounding": "half_away"}
    lo, hi = (0, 255) if out_dtype == "uint8" else (-128, 127)
    kw.update(rq_mode=mode, out_zero_point=int(rng.integers(lo, hi + 1)), out_dtype=out_dtype)
    return kw, lo, hi


def _want(acc, kw, lo, hi, axis):
    return quant_ref.requantize(acc, kw["rq_mode"], kw["rq_multiplier"], kw.get("rq_shift"),
                                kw["rq_rounding"], kw["out_zero_point"], lo, hi,
                                kw["out_dtype"], axis)


def _kernel_names(fast, x):
    launch, _ = fast.launch(x.shape, x.dtype)
    return [c.fn.py_func.__module__ + "." + c.fn.py_func.__name__ for c in launch.calls]


def _input(rng, dtype, shape, fill):
    info = np.iinfo(dtype)
    if fill == "min":
        return np.full(shape, info.min, dtype=dtype)
    if fill == "max":
        return np.full(shape, info.max, dtype=dtype)
    if fill == "corners":
        return np.where(rng.random(shape) < 0.5, info.min, info.max).astype(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def _weights(rng, shape, kind):
    """``(w, wzp)``: uint8 with far zero points (``w - wzp`` up to +-255), int8 at the extremes
    or int16 at the extremes (only the portable kernel takes them: they do not fit int8)."""
    n_out = shape[0]
    if kind == "uint8":
        w = rng.integers(0, 256, size=shape).astype(np.uint8)
        if rng.random() < 0.3:
            w = rng.choice(np.array([0, 255], dtype=np.uint8), size=shape)
        return w, rng.choice(np.array(FAR_ZPS, dtype=np.int64), size=n_out)
    if kind == "int8":
        return rng.choice(np.array([-128, 127, 0, 1], dtype=np.int8), size=shape), \
            np.zeros(n_out, np.int64)
    w = rng.choice(np.array([-32768, 32767, -1, 5], dtype=np.int16), size=shape)
    return w, np.zeros(n_out, np.int64)


@in_child
@pytest.mark.parametrize("seed", range(24))
def test_dense_conv_matches_reference(seed):
    rng = np.random.default_rng(seed)
    layout = ("NCHW", "NHWC")[seed % 2]
    xdt = (np.uint8, np.int8)[(seed // 2) % 2]
    mode = ("fp32", "fixed", "double_q31")[seed % 3]
    fill = ("random", "random", "corners", "min", "max")[seed % 5]
    wkind = ("uint8", "int8", "int16")[(seed // 3) % 3]
    group = 2 if seed % 4 == 3 else 1
    cg = int(rng.integers(1, 13))
    mg = int(rng.integers(1, 21))
    kh, kw = (int(v) for v in rng.choice([1, 1, 2, 3], 2))
    if wkind == "int16":  # keep 255 * 32768 * taps inside int32: the fast path applies
        cg = min(cg, 2)
        kh = kw = 3
    sh, sw = (int(v) for v in rng.integers(1, 3, 2))
    dh, dw = (int(v) for v in rng.integers(1, 3, 2)) if rng.random() < 0.3 else (1, 1)
    pads = tuple(int(v) for v in rng.integers(0, 3, 4))
    height = int(rng.integers((kh - 1) * dh + 1, 8))
    width = int(rng.integers((kw - 1) * dw + 1, 8))
    x = _input(rng, xdt, (int(rng.integers(1, 3)), cg * group, height, width), fill)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w, wzp = _weights(rng, (mg * group, cg, kh, kw), wkind)
    m_out = w.shape[0]
    out_dtype = ("int8", "uint8")[seed % 2]
    kw_rq, lo, hi = _requant(rng, mode, m_out, out_dtype)
    bias = rng.integers(-3000, 3000, m_out).astype(np.int64)
    info = np.iinfo(xdt)
    xzp = int(rng.integers(info.min, info.max + 1))
    axis = 1 if layout == "NCHW" else 3
    fast = prepare_conv(w, weight_zero_point=wzp, bias=bias, input_zero_point=xzp,
                        strides=(sh, sw), pads=pads, dilations=(dh, dw), group=group,
                        layout=layout, requant=kw_rq, channel_axis=axis)
    assert fast is not None
    assert {"simulator.kernels.portable._blocks", "simulator.kernels.portable._rows",
            "simulator.kernels.portable_gemv.rows_int8"} & set(_kernel_names(fast, x))
    got, n_sat = fast.run(x)
    acc, ovf = conv_ref.conv2d_acc(x, w, wzp, bias, xzp, (sh, sw), pads, (dh, dw), group,
                                   layout, 32, "wrap")
    assert ovf == 0
    want, sat = _want(acc, kw_rq, lo, hi, axis)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype
    assert n_sat == sat


@in_child
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_narrow_target_blocks(layout):
    """The dense kernel as targets without AVX-512 compile it (4-position tiles; this host's
    takes 8): the same launch with that kernel gives the reference's bits (groups, strides,
    padding, a partial last tile, saturating corners)."""
    from simulator.kernels.jitcache import specialised
    from simulator.launch import Call, Launch

    rng = np.random.default_rng(11)
    x = _input(rng, np.int8, (2, 6, 6, 9), "corners")  # 2 groups of 3 input channels
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w, wzp = _weights(rng, (34, 3, 3, 2), "uint8")  # 17 output channels a group: 2 blocks
    kw_rq, lo, hi = _requant(rng, "fixed", 34, "int8")
    bias = rng.integers(-3000, 3000, 34).astype(np.int64)
    axis = 1 if layout == "NCHW" else 3
    fast = prepare_conv(w, weight_zero_point=wzp, bias=bias, input_zero_point=-7,
                        strides=(1, 2), pads=(1, 0, 2, 1), group=2, layout=layout,
                        requant=kw_rq, channel_axis=axis)
    launch, _ = fast.launch(x.shape, x.dtype)
    narrow = specialised(portable._make_kernels, fast.ep.kind, fast.ep.rnd, False)[0]
    calls = tuple(Call(narrow, c.args, c.counted) if c.fn.py_func.__name__ == "_blocks" else c
                  for c in launch.calls)
    assert narrow in [c.fn for c in calls]  # (on such a target the launch's own kernel)
    (got,), n_sat = Launch(launch.temps, calls, launch.outputs).execute((x,))
    acc, _ = conv_ref.conv2d_acc(x, w, wzp, bias, -7, (1, 2), (1, 0, 2, 1), (1, 1), 2, layout,
                                 32, "wrap")
    want, sat = _want(acc, kw_rq, lo, hi, axis)
    np.testing.assert_array_equal(got, want)
    assert n_sat == sat


@in_child
@pytest.mark.parametrize("rows", [3, 6])
@pytest.mark.parametrize("sign", [-1, 1])
def test_largest_accumulator(sign, rows):
    """``255 * 255 * 33025 + 32000 = 2**31 - 32899``: the static bound just admits it, the
    kernel's int32 lanes hold it exactly (rows: every input at the max, at 0, random; both the
    one-position kernel and the 4-row blocks)."""
    depth = 33025
    wzp, wval = (255, 0) if sign < 0 else (0, 255)
    w = np.full((depth, 3), wval, np.uint8)
    w[::7, 1] = 200 if sign < 0 else 55  # a channel below the extreme
    a = np.zeros((rows, depth), np.uint8)
    a[0] = 255
    a[2:] = np.random.default_rng(1).integers(0, 256, (rows - 2, depth))
    bias = np.array([sign * 32000, -sign * 32000, 0], np.int64)
    rng = np.random.default_rng(0)
    kw_rq, lo, hi = _requant(rng, "double_q31", 3, "int8")
    fast = prepare_gemm(w, weight_zero_point=np.array([wzp]), bias=bias, input_zero_point=0,
                        requant=kw_rq)
    assert fast is not None
    got, n_sat = fast.run(a)
    acc, _ = gemm_ref.gemm_acc(a, w, np.full(3, wzp), bias, 0, 32, "wrap")
    assert abs(int(acc[0, 0])) == 255 * 255 * depth + 32000
    want, sat = _want(acc, kw_rq, lo, hi, -1)
    np.testing.assert_array_equal(got, want)
    assert n_sat == sat


@in_child
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 257])
@pytest.mark.parametrize("n_cols", [5, 16, 37])
@pytest.mark.parametrize("depth", [44, 45])
def test_gemm_rows(rows, n_cols, depth):
    """A gemm of any row count (1-3 rows: one position at a time, batch-1 fully connected
    layers; more: 4-row blocks, a last partial one) and column count (a partial 16-channel
    block)."""
    rng = np.random.default_rng(rows * 100 + n_cols)
    a = rng.integers(-128, 128, (rows, depth)).astype(np.int8)
    a[0] = 127
    w = rng.integers(-128, 128, (depth, n_cols)).astype(np.int8)
    bias = rng.integers(-9999, 9999, n_cols).astype(np.int64)
    kw_rq, lo, hi = _requant(rng, "fixed", n_cols, "int8")
    fast = prepare_gemm(w, bias=bias, input_zero_point=-3, requant=kw_rq)
    # 1-3 rows of int8 weights: simulator/kernels/portable_gemv.py (test_portable_gemv.py)
    kernel = "portable_gemv.rows_int8" if rows <= portable.MAX_ROWS else "portable._blocks"
    assert f"simulator.kernels.{kernel}" in _kernel_names(fast, a)
    got, n_sat = fast.run(a)
    acc, _ = gemm_ref.gemm_acc(a, w, 0, bias, -3, 32, "wrap")
    want, sat = _want(acc, kw_rq, lo, hi, -1)
    np.testing.assert_array_equal(got, want)
    assert n_sat == sat


@in_child
@pytest.mark.parametrize("fill", ["random", "corners"])
@pytest.mark.parametrize("shift", [15, 20])
def test_fixed_add(fill, shift):
    """The 16-lane fixed-point add (XNNPACK-style multipliers), now on every path."""
    rng = np.random.default_rng(shift)
    a = _input(rng, np.int8, (3, 7, 7, 5), fill)
    b = _input(rng, np.int8, (3, 7, 7, 5), fill)
    params = {"zero_point_a": -5, "zero_point_b": 7, "multiplier_a": (1 << (shift - 1)) + 1,
              "multiplier_b": 3 << (shift - 3), "rq_mode": "shift", "rq_shift": np.array([shift]),
              "rq_rounding": "half_up", "out_zero_point": 1, "out_min": -128, "out_max": 127,
              "out_dtype": "int8"}
    add = AddFixed(**params)
    got, n_sat = add.run(a, b)
    want, sat = eltwise_ref.add_fixed(a, b, -5, 7, params["multiplier_a"], params["multiplier_b"],
                                      "shift", shift, "half_up", 1, -128, 127, "int8")
    np.testing.assert_array_equal(got, want)
    assert n_sat == sat


def _small_net(rng):
    """conv (NHWC, fp32 requantization) -> reshape -> gemm (fixed): the portable dense kernel in
    both roles, with the kernel specialisations the tests above compile already."""
    from simulator.program import Program, Step, TensorSpec

    conv_rq, _, _ = _requant(rng, "fp32", 8, "int8")
    fc_rq, _, _ = _requant(rng, "fixed", 10, "int8")
    steps = (
        Step("conv", "conv0", ("x",), ("a",), {
            "weight": rng.integers(-128, 128, (8, 3, 3, 3)).astype(np.int8),
            "bias": rng.integers(-900, 900, 8), "input_zero_point": -3, "strides": (2, 2),
            "pads": (1, 1, 1, 1), "layout": "NHWC", **conv_rq}),
        Step("reshape", "flat", ("a",), ("f",), {"shape": (-1, 4 * 4 * 8)}),
        Step("gemm", "fc", ("f",), ("y",), {
            "weight": rng.integers(-128, 128, (4 * 4 * 8, 10)).astype(np.int8),
            "bias": rng.integers(-900, 900, 10), "input_zero_point": 1, **fc_rq}),
    )
    return Program((TensorSpec("x", "int8", (None, 8, 8, 3)),),
                   (TensorSpec("y", "int8", (None, 10)),), steps)


@in_child
def test_compiled_program_matches_interpreter_and_reference():
    """Batch-1 compiled programs exist on the portable path (the dense kernels in them are the
    portable ones) and give the interpreter's bits, which are the integer reference's."""
    from simulator.compiled import compile_program, last_reason
    from simulator.run import run

    program = _small_net(np.random.default_rng(3))
    conv0, fc = program.steps[0].params, program.steps[2].params
    x = np.zeros((1, 8, 8, 3), np.int8)
    compiled = compile_program(program, {"x": x})
    assert compiled is not None, last_reason()
    kernels = {v.py_func.__module__ for v in compiled.fn.py_func.__globals__.values()
               if hasattr(v, "py_func")}
    assert "simulator.kernels.portable" in kernels
    for seed in range(3):
        x = _input(np.random.default_rng(seed), np.int8, (1, 8, 8, 3),
                   ("random", "corners", "max")[seed])
        got = compiled.run({"x": x})
        want = run(program, {"x": x})
        np.testing.assert_array_equal(got.outputs["y"], want.outputs["y"])
        assert got.stats == want.stats
        acc, _ = conv_ref.conv2d_acc(x, conv0["weight"], np.zeros(8, np.int64), conv0["bias"],
                                     -3, (2, 2), (1, 1, 1, 1), (1, 1), 1, "NHWC", 32, "wrap")
        a, _ = _want(acc, conv0, -128, 127, 3)
        acc, _ = gemm_ref.gemm_acc(a.reshape(1, -1), fc["weight"], 0, fc["bias"], 1, 32, "wrap")
        y, _ = _want(acc, fc, -128, 127, -1)
        np.testing.assert_array_equal(got.outputs["y"], y)


def test_pack_pairs_layout():
    """Each ``[lane 16][4]`` block becomes ``[pair 2][lane 16][2]`` (int16)."""
    blocks = np.arange(2 * 64).reshape(2, 16, 4)
    got = portable.pack_pairs(blocks.reshape(-1)).reshape(2, 2, 16, 2)
    assert got.dtype == np.int16
    for blk in range(2):
        for p in range(2):
            np.testing.assert_array_equal(got[blk, p], blocks[blk][:, 2 * p:2 * p + 2])


@pytest.mark.slow
@pytest.mark.skipif(HERE_PORTABLE, reason="this process already runs the portable kernels")
def test_forced_portable_process():
    """This file's, test_portable_gemv.py's and test_compiled_call.py's checks in a process that
    forces the portable kernels."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SIMULATOR_KERNELS", "SIMULATOR_SIMD", "SIMULATOR_AMX",
                        "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    env["SIMULATOR_KERNELS"] = "portable"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "no:randomly", "-x", __file__,
                          str(pathlib.Path(__file__).with_name("test_portable_gemv.py")),
                          str(pathlib.Path(__file__).with_name("test_compiled_call.py")),
                          "-k", "not forced"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    # only this test itself is deselected there (-k): every portable check ran, none skipped
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, summary
    assert "1 deselected" in summary, summary
