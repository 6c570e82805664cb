"""simulator.kernels.conv / gemm accumulators against tests/reference (Python-int loops)."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from simulator.errors import AccumulatorOverflowError, KernelInputError  # noqa: E402
from simulator.kernels import conv, gemm  # noqa: E402
from tests.reference import conv_ref, gemm_ref  # noqa: E402

SETTINGS = settings(max_examples=70, deadline=None, derandomize=True)
ACC = [(32, "wrap"), (16, "wrap"), (20, "wrap"), (16, "saturate"), (20, "saturate"),
       (18, "error"), (32, "saturate"), (64, "wrap"), (24, "error")]


def _ints(rng, dtype, shape, extreme):
    info = np.iinfo(dtype)
    if extreme:  # corners: many products of the dtype extremes (e.g. -128 * -128)
        return rng.choice([info.min, info.max, info.min + 1, 0], size=shape).astype(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def _zp(rng, dtype, extreme):
    info = np.iinfo(dtype)
    if extreme:
        return int(rng.choice([info.min, info.max]))
    return int(rng.integers(info.min, info.max, endpoint=True))


def _compare_or_raise(got_fn, want):
    want_acc, want_ovf, mode = want
    if mode == "error" and want_ovf:
        with pytest.raises(AccumulatorOverflowError):
            got_fn()
        return
    got, n_ovf = got_fn()
    np.testing.assert_array_equal(got, want_acc)
    assert n_ovf == want_ovf


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), acc=st.sampled_from(ACC),
       layout=st.sampled_from(["NCHW", "NHWC"]),
       xdt=st.sampled_from(["int8", "uint8", "int16"]), wdt=st.sampled_from(["int8", "uint8"]),
       extreme=st.booleans(), depthwise=st.booleans())
def test_conv_random(seed, acc, layout, xdt, wdt, extreme, depthwise):
    rng = np.random.default_rng(seed)
    bits, mode = acc
    n_batch = int(rng.integers(1, 3))
    if depthwise:
        c_in = int(rng.integers(1, 5))
        group = c_in
        n_out = c_in * int(rng.integers(1, 3))
    else:
        group = int(rng.choice([1, 1, 2]))
        c_in = group * int(rng.integers(1, 4))
        n_out = group * int(rng.integers(1, 4))
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    sh, sw = (int(v) for v in rng.integers(1, 3, 2))
    dh, dw = (int(v) for v in rng.integers(1, 3, 2))
    pads = tuple(int(v) for v in rng.integers(0, 3, 4))
    height = int(rng.integers((kh - 1) * dh + 1, 8))
    width = int(rng.integers((kw - 1) * dw + 1, 8))
    x = _ints(rng, xdt, (n_batch, c_in, height, width), extreme)
    if layout == "NHWC":
        x = np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))
    w = _ints(rng, wdt, (n_out, c_in // group, kh, kw), extreme)
    wzp = np.array([_zp(rng, wdt, extreme) for _ in range(n_out)], dtype=np.int64)
    if rng.random() < 0.5:
        wzp = wzp[:1]
    bias = rng.integers(-(2**14), 2**14, n_out).astype(np.int64)
    xzp = _zp(rng, xdt, extreme)
    kwargs = dict(weight_zero_point=wzp, bias=bias, input_zero_point=xzp, strides=(sh, sw),
                  pads=pads, dilations=(dh, dw), group=group, layout=layout, acc_bits=bits,
                  acc_overflow=mode)
    want = conv_ref.conv2d_acc(x, w, wzp, bias, xzp, (sh, sw), pads, (dh, dw), group, layout,
                               bits, mode)
    _compare_or_raise(lambda: conv.conv2d_acc(x, w, **kwargs), want + (mode,))


def test_conv_saturation_order_matters():
    """A 16-bit saturating accumulator: big positive products first, then negatives. The exact
    sum is in range, the sequential result is not the exact sum."""
    x = np.array([127, 127, 127, -128, -128, -128], dtype=np.int8).reshape(1, 6, 1, 1)
    w = np.array([127, 127, 127, 127, 127, 127], dtype=np.int8).reshape(1, 6, 1, 1)
    got, n_ovf = conv.conv2d_acc(x, w, acc_bits=16, acc_overflow="saturate")
    want, want_ovf = conv_ref.conv2d_acc(x, w, [0], None, 0, (1, 1), (0, 0, 0, 0), (1, 1), 1,
                                         "NCHW", 16, "saturate")
    np.testing.assert_array_equal(got, want)
    assert n_ovf == want_ovf == 1
    assert got[0, 0, 0, 0] != 3 * 127 * 127 - 3 * 128 * 127
    wrapped, n_wrap = conv.conv2d_acc(x, w, acc_bits=16, acc_overflow="wrap")
    assert wrapped[0, 0, 0, 0] == 3 * 127 * 127 - 3 * 128 * 127 and n_wrap == 1
    with pytest.raises(AccumulatorOverflowError, match="16-bit"):
        conv.conv2d_acc(x, w, acc_bits=16, acc_overflow="error")


def test_conv_input_errors():
    x = np.zeros((1, 4, 5, 5), np.int8)
    w = np.zeros((2, 4, 3, 3), np.int8)
    with pytest.raises(KernelInputError, match="dtype"):
        conv.conv2d_acc(x.astype(np.float32), w)
    with pytest.raises(KernelInputError, match="group"):
        conv.conv2d_acc(x, w, group=2)
    with pytest.raises(KernelInputError, match="4-D"):
        conv.conv2d_acc(x[0], w)
    with pytest.raises(KernelInputError, match="acc_bits"):
        conv.conv2d_acc(x, w, acc_bits=8)
    with pytest.raises(KernelInputError, match="acc_overflow"):
        conv.conv2d_acc(x, w, acc_overflow="clip")
    with pytest.raises(KernelInputError, match="empty output"):
        conv.conv2d_acc(x, np.zeros((2, 4, 7, 7), np.int8))
    with pytest.raises(KernelInputError, match="weight_zero_point"):
        conv.conv2d_acc(x, w, weight_zero_point=np.zeros(3, np.int64))


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), acc=st.sampled_from(ACC),
       adt=st.sampled_from(["int8", "uint8", "int16", "uint16"]),
       wdt=st.sampled_from(["int8", "uint8", "int16"]), extreme=st.booleans(),
       lead=st.sampled_from([(), (3,), (2, 3)]))
def test_gemm_random(seed, acc, adt, wdt, extreme, lead):
    rng = np.random.default_rng(seed)
    bits, mode = acc
    depth, n_cols = int(rng.integers(1, 20)), int(rng.integers(1, 6))
    a = _ints(rng, adt, lead + (depth,), extreme)
    w = _ints(rng, wdt, (depth, n_cols), extreme)
    wzp = np.array([_zp(rng, wdt, extreme) for _ in range(n_cols)], dtype=np.int64)
    bias = rng.integers(-(2**15), 2**15, n_cols).astype(np.int64) if rng.random() < 0.8 else None
    azp = _zp(rng, adt, extreme)
    want = gemm_ref.gemm_acc(a, w, wzp, bias, azp, bits, mode)
    _compare_or_raise(lambda: gemm.gemm_acc(a, w, weight_zero_point=wzp, bias=bias,
                                            input_zero_point=azp, acc_bits=bits,
                                            acc_overflow=mode), want + (mode,))


def test_gemm_int8_exhaustive_products():
    """All 256 x 256 int8 products (one per output element) in a 16-bit saturating accumulator."""
    a = np.arange(-128, 128, dtype=np.int8).reshape(256, 1)
    w = np.arange(-128, 128, dtype=np.int8).reshape(1, 256)
    got, n_ovf = gemm.gemm_acc(a, w, acc_bits=16, acc_overflow="saturate")
    exact = np.arange(-128, 128)[:, None] * np.arange(-128, 128)[None, :]
    np.testing.assert_array_equal(got, np.clip(exact, -(2**15), 2**15 - 1))
    assert n_ovf == int(np.count_nonzero((exact < -(2**15)) | (exact > 2**15 - 1)))
    got_wrap, _ = gemm.gemm_acc(a, w, acc_bits=16, acc_overflow="wrap")
    np.testing.assert_array_equal(got_wrap, ((exact + 2**15) % 2**16) - 2**15)


def test_gemm_input_errors():
    with pytest.raises(KernelInputError, match="inner dimension"):
        gemm.gemm_acc(np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8))
    with pytest.raises(KernelInputError, match=r"\[K, N\]"):
        gemm.gemm_acc(np.zeros((2, 3), np.int8), np.zeros((3,), np.int8))


@pytest.mark.parametrize("mode", ["wrap", "saturate"])
def test_narrow_accumulator_few_risky_elements(mode):
    """Mostly small inputs with a few saturated pixels: only the elements whose bound
    |bias| + sum|w*x| exceeds a 16-bit accumulator are replayed in order; the others keep the exact
    sum. Both kinds must match the sequential reference (conv and gemm)."""
    rng = np.random.default_rng(7)
    x = rng.integers(-3, 4, (2, 6, 9, 9)).astype(np.int8)
    x[0, :, 4, 4] = 127
    x[1, :, 0, 8] = -128
    w = rng.integers(-127, 128, (5, 6, 3, 3)).astype(np.int8)
    bias = rng.integers(-3000, 3000, 5).astype(np.int64)
    kwargs = dict(weight_zero_point=[0], bias=bias, input_zero_point=0, strides=(1, 1),
                  pads=(1, 1, 1, 1), dilations=(1, 1), group=1, layout="NCHW", acc_bits=16,
                  acc_overflow=mode)
    got, n_ovf = conv.conv2d_acc(x, w, **kwargs)
    want, want_ovf = conv_ref.conv2d_acc(x, w, [0], bias, 0, (1, 1), (1, 1, 1, 1), (1, 1), 1,
                                         "NCHW", 16, mode)
    np.testing.assert_array_equal(got, want)
    assert n_ovf == want_ovf > 0

    a = rng.integers(-3, 4, (40, 64)).astype(np.int8)
    a[3] = 127
    wg = rng.integers(-127, 128, (64, 7)).astype(np.int8)
    got, n_ovf = gemm.gemm_acc(a, wg, bias=bias[:1].repeat(7), acc_bits=16, acc_overflow=mode)
    want, want_ovf = gemm_ref.gemm_acc(a, wg, [0], bias[:1].repeat(7), 0, 16, mode)
    np.testing.assert_array_equal(got, want)
    assert n_ovf == want_ovf > 0
