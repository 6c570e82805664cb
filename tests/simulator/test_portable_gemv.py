"""The portable path's batch-1 fully connected kernel (simulator/kernels/portable_gemv.py, int8
weights sign-extended to int16 pairs) against tests/reference.

Like tests/simulator/test_portable.py, the ``portable_child`` tests run in this process only
where it runs the portable kernels; elsewhere ``test_portable.py::test_forced_portable_process``
runs them in a child process with ``SIMULATOR_KERNELS=portable``.

Checked: 1-3 rows, output channel counts with and without full groups of 4 blocks and partial
16-channel blocks, depths that are whole 4-channel steps (the 8-bit input read directly) and odd
ones (the int16 image; a row run past the last channel multiplies zero weights), int8 and uint8
inputs at their extremes, weights at -128 and 127, each requantization arithmetic with
rounding ties and saturation, the largest accumulator the static bound admits, and the fall back
to the int16 kernel when ``w - wzp`` does not fit int8.
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np
import pytest

from simulator.kernels import portable_gemv
from simulator.kernels.gemm import prepare_gemm
from simulator.kernels.portable_glue import read_only
from tests.reference import gemm_ref, quant_ref

in_child = pytest.mark.portable_child


def _requant(rng, mode, n_out):
    """``fixed`` halves the accumulator (multiplier 2**14, shift 15): every odd accumulator is a
    rounding tie; the others span any int32 accumulator."""
    if mode == "fp32":
        kw = {"rq_multiplier": rng.uniform(1e-4, 4e-3, n_out).astype(np.float32),
              "rq_rounding": "half_even"}
    elif mode == "fixed":
        kw = {"rq_multiplier": np.full(n_out, 2**14, np.int64),
              "rq_shift": rng.integers(15, 17, n_out).astype(np.int64),
              "rq_rounding": "half_away"}
    else:
        kw = {"rq_multiplier": rng.integers(2**30, 2**31 - 1, n_out).astype(np.int64),
              "rq_shift": rng.integers(36, 44, n_out).astype(np.int64),
              "rq_rounding": "half_away"}
    kw.update(rq_mode=mode, out_zero_point=int(rng.integers(-128, 128)), out_dtype="int8")
    return kw


def _check(a, w, wzp, bias, xzp, kw, kernel="rows_int8"):
    fast = prepare_gemm(w, weight_zero_point=wzp, bias=bias, input_zero_point=xzp, requant=kw)
    assert fast is not None
    launch, _ = fast.launch(a.shape, a.dtype)
    names = [c.fn.py_func.__name__ for c in launch.calls]
    assert kernel in names
    if kernel.startswith("rows_int8"):  # whole 4-channel steps: the 8-bit input read as it is
        assert ("_prepass_images" in names) == (a.shape[1] % 4 != 0)
    got, n_sat = fast.run(a)
    acc, ovf = gemm_ref.gemm_acc(a, w, wzp, bias, xzp, 32, "wrap")
    assert ovf == 0
    want, sat = quant_ref.requantize(acc, kw["rq_mode"], kw["rq_multiplier"], kw.get("rq_shift"),
                                     kw["rq_rounding"], kw["out_zero_point"], -128, 127, "int8",
                                     -1)
    np.testing.assert_array_equal(got, want)
    assert n_sat == sat
    return acc


@in_child
@pytest.mark.parametrize("seed", range(12))
def test_rows_match_reference(seed):
    rng = np.random.default_rng(seed)
    rows = 1 + seed % 3
    n_cols = (8, 16, 64, 72, 130, 200)[seed % 6]
    depth = (1, 45, 120, 127)[seed % 4]  # fp32: the bound stays under 2**22
    mode = ("fp32", "fixed", "double_q31")[seed % 3]
    xdt = (np.int8, np.uint8)[(seed // 3) % 2]
    info = np.iinfo(xdt)
    a = rng.integers(info.min, info.max, (rows, depth), endpoint=True).astype(xdt)
    a[0, ::2] = info.max
    if rows > 1:
        a[1] = info.min
    w = rng.integers(-128, 128, (depth, n_cols)).astype(np.int8)
    w[:, ::5] = rng.choice(np.array([-128, 127], np.int8), (depth, len(range(0, n_cols, 5))))
    bias = rng.integers(-2000, 2000, n_cols).astype(np.int64)
    xzp = int(rng.integers(info.min, info.max + 1))
    _check(a, w, 0, bias, xzp, _requant(rng, mode, n_cols))


@in_child
@pytest.mark.parametrize("depth", [65792, 65793])
def test_largest_accumulator(depth):
    """``x - xzp = 255`` against ``w = -128`` over ``depth`` channels plus the bias is
    ``-(2**31 - 1)``, the static bound's limit (``255 * 128 * 65793 = 2**31 - 129``): column 0
    reaches it, column 1 holds ``255 * 127`` per product, column 2 alternates. 65792 channels:
    the input read directly; 65793: the int16 image. Both too deep for the scratch on the
    stack: the kernel that allocates it."""
    w = np.empty((depth, 3), np.int8)
    w[:, 0] = -128
    w[:, 1] = 127
    w[:, 2] = np.where(np.arange(depth) % 2, 127, -128)
    a = np.full((1, depth), 127, np.int8)
    edge = 2**31 - 1 - 255 * 128 * depth
    bias = np.array([-edge, edge, 0], np.int64)
    acc = _check(a, w, 0, bias, -128, _requant(np.random.default_rng(5), "double_q31", 3),
                 kernel="rows_int8_heap")
    assert int(acc[0, 0]) == -(2**31 - 1)
    assert int(acc[0, 1]) == 255 * 127 * depth + edge


@in_child
@pytest.mark.parametrize("extra", [0, 1])
def test_scratch_on_the_stack_up_to_its_size(extra):
    """The deepest step whose scratch fits the stack runs ``rows_int8``; one 4-channel step
    more runs ``rows_int8_heap``; both exact."""
    from simulator.kernels.portable import wide_target

    group = portable_gemv.group_for(wide_target())
    c4_n = (portable_gemv.STACK_I32 - 2 * group * portable_gemv.LANES) // 2 + extra
    assert portable_gemv.scratch_fits(c4_n, group) == (extra == 0)
    rng = np.random.default_rng(11 + extra)
    a = rng.integers(-128, 128, (2, 4 * c4_n)).astype(np.int8)
    a[1] = 127
    w = rng.integers(-128, 128, (4 * c4_n, 24)).astype(np.int8)
    _check(a, w, 0, rng.integers(-99, 99, 24), -5, _requant(rng, "fixed", 24),
           kernel="rows_int8" if extra == 0 else "rows_int8_heap")


@in_child
def test_wide_weights_take_the_int16_kernel():
    """uint8 weights with a far zero point (``w - wzp`` up to +-255) do not fit int8: the int16
    one-row kernel runs them, with the same results."""
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, (1, 40)).astype(np.int8)
    w = rng.integers(0, 256, (40, 24)).astype(np.uint8)
    _check(a, w, np.full(24, 250), rng.integers(-99, 99, 24), 3, _requant(rng, "fixed", 24),
           kernel="_rows")


@in_child
@pytest.mark.parametrize("n_cols", [8, 40, 72, 130])
def test_narrow_target_kernel(n_cols):
    """The kernel as targets without AVX-512 compile it (groups of ``GROUP`` blocks, 4
    accumulators), run here on its own weight layout: full groups, remaining pairs, an odd
    block count, int8 and uint8 inputs at their extremes."""
    from simulator.kernels.jitcache import specialised

    rng = np.random.default_rng(n_cols)
    depth = 100
    for xdt in (np.int8, np.uint8):
        info = np.iinfo(xdt)
        a = rng.integers(info.min, info.max, (2, depth), endpoint=True).astype(xdt)
        a[0, 1::2] = info.max
        w = rng.integers(-128, 128, (depth, n_cols)).astype(np.int8)
        w[::3] = rng.choice(np.array([-128, 127], np.int8), w[::3].shape)
        bias = rng.integers(-2000, 2000, n_cols).astype(np.int64)
        xzp = int(rng.integers(info.min, info.max + 1))
        kw = _requant(rng, "fixed", n_cols)
        fast = prepare_gemm(w, bias=bias, input_zero_point=xzp, requant=kw)
        launch, _ = fast.launch(a.shape, a.dtype)
        (call,) = [c for c in launch.calls if c.fn.py_func.__name__ == "rows_int8"]
        conv = fast.conv
        w8 = portable_gemv.pack_int8(conv.wpk, conv.nbg, conv.c4_n, portable_gemv.GROUP)
        kern = specialised(portable_gemv._make_kernels, conv.ep.kind, conv.ep.rnd, False)[0]
        out = np.empty(2 * n_cols, np.int8)
        args = list(call.args)
        args[0], args[6], args[-2] = read_only(a.reshape(-1)), read_only(w8), out
        n_sat = kern(*args)
        acc, _ = gemm_ref.gemm_acc(a, w, 0, bias, xzp, 32, "wrap")
        want, sat = quant_ref.requantize(acc, "fixed", kw["rq_multiplier"], kw["rq_shift"],
                                         "half_away", kw["out_zero_point"], -128, 127, "int8", -1)
        np.testing.assert_array_equal(out.reshape(2, n_cols), want)
        assert n_sat == sat


@pytest.mark.parametrize("group", [portable_gemv.GROUP, portable_gemv.GROUP_WIDE])
@pytest.mark.parametrize("nbg", [5, 6, 9])
def test_pack_int8_layout(group, nbg):
    """Blocks pair up into 16-bit words (low byte: even block + 128, high byte: odd block; an
    odd count gets a zero partner); full groups of ``group / 2`` pairs interleave per (k4,
    pair step), the remaining pairs keep their order."""
    c4_n = 3
    wpk16 = (np.arange(nbg * c4_n * 64) % 251 - 125).astype(np.int16)
    got = portable_gemv.pack_int8(wpk16, nbg, c4_n, group)
    assert got.dtype == np.uint8
    blocks = wpk16.reshape(nbg, c4_n, 2, 32).astype(np.int64)
    blocks = np.concatenate([blocks, np.zeros((nbg % 2,) + blocks.shape[1:], np.int64)])
    n_pairs = len(blocks) // 2
    words = got.reshape(-1, 2).astype(np.int64)
    low, high = words[:, 0] - 128, np.where(words[:, 1] > 127, words[:, 1] - 256, words[:, 1])
    pairs = group // 2
    full = n_pairs // pairs * pairs
    at = 0
    for g in range(full // pairs):
        for k4 in range(c4_n):
            for p in range(2):
                for q in range(pairs):
                    pair = g * pairs + q
                    np.testing.assert_array_equal(low[at:at + 32], blocks[2 * pair, k4, p])
                    np.testing.assert_array_equal(high[at:at + 32], blocks[2 * pair + 1, k4, p])
                    at += 32
    for pair in range(full, n_pairs):
        for k4 in range(c4_n):
            for p in range(2):
                np.testing.assert_array_equal(low[at:at + 32], blocks[2 * pair, k4, p])
                np.testing.assert_array_equal(high[at:at + 32], blocks[2 * pair + 1, k4, p])
                at += 32
    assert at == len(low)
    assert portable_gemv.fits(wpk16) and not portable_gemv.fits(wpk16 * 2)
