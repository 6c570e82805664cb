"""The row kernel of simulator.kernels.vnni_rows (dense NHWC conv on AVX-512 VNNI) against the
plain integer reference (tests/reference), with every launch checked to really take it.

Covers rows that end in a partial 8-position block, pointwise convs run as one long row over a
batch, strides and padding, output channels that are not a multiple of 16, each epilogue kind
(fp32, fixed with rounding ties, double_q31), saturation (large multipliers) and extreme input
codes, and the parallel split (ranges of blocks that start and end inside rows).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import numba
import numpy as np
import pytest

from simulator.capabilities import capabilities
from simulator.kernels import igemm
from simulator.kernels.conv import prepare_conv
from tests.reference import conv_ref, quant_ref

pytestmark = pytest.mark.skipif(not capabilities().vnni,
                                reason="the row kernel is part of the VNNI kernel path")


def _requant(rng, mode, n_out, out_dtype, saturate):
    """Requantization kwargs and clamp; ``fixed`` halves the accumulator (every odd one is a
    rounding tie); ``saturate`` multiplies by up to 1/8, so most codes clamp."""
    if mode == "fp32":
        hi_m = 0.125 if saturate else 4e-3
        kw = {"rq_multiplier": rng.uniform(1e-4, hi_m, n_out).astype(np.float32),
              "rq_rounding": "half_even"}
    elif mode == "fixed":
        kw = {"rq_multiplier": np.full(n_out, 2**14, np.int64),
              "rq_shift": np.full(n_out, 15 if saturate else 24, np.int64),
              "rq_rounding": "half_away"}
    else:
        kw = {"rq_multiplier": rng.integers(2**30, 2**31 - 1, n_out).astype(np.int64),
              "rq_shift": np.full(n_out, 34 if saturate else 40, np.int64),
              "rq_rounding": "half_away"}
    lo, hi = (0, 255) if out_dtype == "uint8" else (-128, 127)
    kw.update(rq_mode=mode, out_zero_point=int(rng.integers(lo, hi + 1)), out_dtype=out_dtype)
    return kw, lo, hi


def _input(rng, dtype, shape, fill):
    info = np.iinfo(dtype)
    if fill == "min":
        return np.full(shape, info.min, dtype=dtype)
    if fill == "max":
        return np.full(shape, info.max, dtype=dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def _check(seed, shape, m_out, k, strides, pads, mode, fill="random", saturate=False,
           threads=1):
    rng = np.random.default_rng(seed)
    x_dtype = np.int8 if seed % 2 else np.uint8
    x = _input(rng, x_dtype, shape, fill)
    n_in = shape[3]
    w = rng.integers(-128, 128, (m_out, n_in, k, k)).astype(np.int8)
    if fill != "random":
        w[:] = 127 if fill == "max" else -128
    bias = rng.integers(-3000, 3000, m_out).astype(np.int64)
    info = np.iinfo(x_dtype)
    xzp = int(rng.integers(info.min, info.max + 1))
    out_dtype = "int8" if seed % 3 else "uint8"
    kw, lo, hi = _requant(rng, mode, m_out, out_dtype, saturate)
    fast = prepare_conv(w, weight_zero_point=0, bias=bias, input_zero_point=xzp,
                        strides=strides, pads=pads, dilations=(1, 1), group=1, layout="NHWC",
                        acc_bits=32, acc_overflow="wrap", requant=kw, channel_axis=3)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        launch, static_ok = fast.launch(x.shape, x.dtype)
        assert static_ok
        names = [c.fn.py_func.__name__ for c in launch.calls]
        assert names[-1] == ("rows_par" if threads > 1 else "rows"), names
        outs, n_sat = launch.execute((np.ascontiguousarray(x),))
    finally:
        numba.set_num_threads(previous)
    acc, ovf = conv_ref.conv2d_acc(x, w, np.zeros(m_out, np.int64), bias, xzp, strides, pads,
                                   (1, 1), 1, "NHWC", 32, "wrap")
    assert ovf == 0
    want, sat = quant_ref.requantize(acc, kw["rq_mode"], kw["rq_multiplier"], kw.get("rq_shift"),
                                     kw["rq_rounding"], kw["out_zero_point"], lo, hi, out_dtype,
                                     3)
    np.testing.assert_array_equal(outs[0], want)
    assert outs[0].dtype == np.dtype(out_dtype)
    assert n_sat == sat
    return sat


# (input NHWC shape, output channels, kernel size, strides, pads): rows of 8 and 16 positions,
# a row ending in a partial block (63 = 7 x 8 + 7 columns), a stride-2 conv, 3 input channels
# (row runs padded to 4 bytes), 20 output channels (a partial 16-lane block), pointwise convs
# over a batch (one long row ending in a partial block)
CASES = [
    ((1, 8, 8, 16), 16, 3, (1, 1), (1, 1, 1, 1)),
    ((1, 6, 63, 3), 20, 3, (1, 1), (1, 1, 1, 1)),
    ((2, 9, 16, 8), 32, 3, (2, 2), (0, 1, 0, 1)),
    ((3, 5, 5, 12), 40, 1, (1, 1), (0, 0, 0, 0)),
    ((1, 16, 16, 16), 16, 1, (2, 2), (0, 0, 0, 0)),
]


@pytest.mark.parametrize("mode", ["fp32", "fixed", "double_q31"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_rows_kernel_matches_reference(case, mode):
    shape, m_out, k, strides, pads = CASES[case]
    _check(case, shape, m_out, k, strides, pads, mode)


@pytest.mark.parametrize("fill", ["min", "max"])
@pytest.mark.parametrize("mode", ["fp32", "double_q31"])
def test_rows_kernel_extremes_saturate(fill, mode):
    # every input and weight at the dtype's limit: the largest accumulators the bound allows
    sat = _check(7, (1, 4, 8, 8), 16, 3, (1, 1), (1, 1, 1, 1), mode, fill=fill, saturate=True)
    assert sat > 0


def test_rows_kernel_saturation_count_random():
    assert _check(11, (1, 8, 16, 16), 16, 3, (1, 1), (1, 1, 1, 1), "fixed", saturate=True) > 0


@pytest.mark.parametrize("case", [0, 2, 3])
def test_rows_kernel_parallel_ranges(case, monkeypatch):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    # every conv is split over the threads; ranges of whole blocks start inside rows
    monkeypatch.setattr(igemm, "PARALLEL_MIN_MACS", 0)
    shape, m_out, k, strides, pads = CASES[case]
    _check(case, shape, m_out, k, strides, pads, "fp32", threads=2)


def test_narrow_rows_keep_the_block_kernel():
    # 5 output columns would waste 3/8 of the row kernel's products: the block kernel runs
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (16, 4, 3, 3)).astype(np.int8)
    fast = prepare_conv(w, weight_zero_point=0, bias=np.zeros(16, np.int64),
                        input_zero_point=0, strides=(1, 1), pads=(1, 1, 1, 1),
                        dilations=(1, 1), group=1, layout="NHWC", acc_bits=32,
                        acc_overflow="wrap",
                        requant={"rq_mode": "fp32", "rq_multiplier": np.full(16, 1e-3, np.float32),
                                 "rq_rounding": "half_even", "out_zero_point": 0,
                                 "out_dtype": "int8"},
                        channel_axis=3)
    launch, _ = fast.launch((1, 6, 5, 4), np.int8)
    assert launch.calls[-1].fn.py_func.__name__ == "_vnni_blocks"
