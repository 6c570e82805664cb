"""The fused fast conv kernels (simulator.kernels.igemm via prepare_conv) against tests/reference.

Covers the paths added for uint8 weights whose zero point is far from 128 (so ``w - wzp`` does not
fit int8): the zero-point split of the dense VNNI kernel (an all-ones weight block gives the window
byte sum), the int32-weight depthwise kernels (NHWC channel vectors, NCHW per-plane), with
padding, strides, dilations and extreme input codes.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from simulator.kernels import gemv, igemm, simd  # noqa: E402
from simulator.kernels.conv import prepare_conv  # noqa: E402
from simulator.kernels.gemm import prepare_gemm  # noqa: E402
from simulator.kernels.portable_glue import read_only  # noqa: E402
from tests.reference import conv_ref, gemm_ref, quant_ref  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
FAR_ZPS = [0, 75, 116, 200, 255]
RQ = [("fp32", "half_even"), ("fixed", "half_away"), ("shift", "floor")]


def _requant(rng, mode, rnd, n_out, out_dtype):
    if mode == "fp32":
        kw = {"rq_multiplier": rng.uniform(1e-4, 4e-3, n_out).astype(np.float32)}
    elif mode == "fixed":
        kw = {"rq_multiplier": rng.integers(1, 2**15, n_out).astype(np.int64),
              "rq_shift": rng.integers(14, 26, n_out).astype(np.int64)}
    else:
        kw = {"rq_multiplier": np.ones(1, dtype=np.int64),
              "rq_shift": rng.integers(4, 12, n_out).astype(np.int64)}
    lo, hi = (0, 255) if out_dtype == "uint8" else (-128, 127)
    kw.update(rq_mode=mode, rq_rounding=rnd, out_zero_point=int(rng.integers(lo, hi + 1)),
              out_dtype=out_dtype)
    return kw, lo, hi


def _check(rng, x, w, wzp, layout, group, strides, pads, dilations, rq, must_be_fast=True):
    m_out = w.shape[0]
    out_dtype = "uint8" if rng.random() < 0.5 else "int8"
    kw, lo, hi = _requant(rng, rq[0], rq[1], m_out, out_dtype)
    bias = rng.integers(-3000, 3000, m_out).astype(np.int64)
    xinfo = np.iinfo(x.dtype)
    xzp = int(rng.integers(xinfo.min, xinfo.max + 1))
    axis = 1 if layout == "NCHW" else 3
    fast = prepare_conv(w, weight_zero_point=wzp, bias=bias, input_zero_point=xzp,
                        strides=strides, pads=pads, dilations=dilations, group=group,
                        layout=layout, acc_bits=32, acc_overflow="wrap", requant=kw,
                        channel_axis=axis)
    if fast is None:
        assert not must_be_fast
        return None
    res = fast.run(x)
    assert res is not None or not must_be_fast
    if res is None:
        return None
    acc, ovf = conv_ref.conv2d_acc(x, w, np.broadcast_to(wzp, (m_out,)), bias, xzp, strides,
                                   pads, dilations, group, layout, 32, "wrap")
    assert ovf == 0
    want, sat = quant_ref.requantize(acc, kw["rq_mode"], kw["rq_multiplier"],
                                     kw.get("rq_shift"), kw["rq_rounding"],
                                     kw["out_zero_point"], lo, hi, out_dtype, axis)
    np.testing.assert_array_equal(res[0], want)
    assert res[0].dtype == np.dtype(out_dtype)
    assert res[1] == sat
    return fast


def _input(rng, dtype, shape, fill):
    info = np.iinfo(dtype)
    if fill == "min":
        return np.full(shape, info.min, dtype=dtype)
    if fill == "max":
        return np.full(shape, info.max, dtype=dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def _weights(rng, shape, wzp_kind):
    n_out = shape[0]
    w = rng.integers(0, 256, size=shape).astype(np.uint8)
    if rng.random() < 0.2:  # weights at the extremes of the uint8 range
        w = rng.choice(np.array([0, 255], dtype=np.uint8), size=shape)
    if wzp_kind == "tensor":
        wzp = np.array([int(rng.choice(FAR_ZPS))], dtype=np.int64)
    else:
        wzp = rng.choice(np.array(FAR_ZPS, dtype=np.int64), size=n_out)
    return w, wzp


@pytest.mark.skipif(not simd.ENABLED, reason="dense fast kernels need AVX-512 VNNI")
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), layout=st.sampled_from(["NCHW", "NHWC"]),
       xdt=st.sampled_from([np.uint8, np.int8]), wzp_kind=st.sampled_from(["tensor", "channel"]),
       fill=st.sampled_from(["random", "random", "min", "max"]), rq=st.sampled_from(RQ),
       grouped=st.booleans())
def test_dense_zero_point_split(seed, layout, xdt, wzp_kind, fill, rq, grouped):
    rng = np.random.default_rng(seed)
    group = 2 if grouped else 1
    cg = int(rng.integers(1, 21))
    mg = int(rng.integers(1, 37))
    kh, kw = (int(v) for v in rng.choice([1, 1, 2, 3], 2))
    sh, sw = (int(v) for v in rng.integers(1, 3, 2))
    dh, dw = (int(v) for v in rng.integers(1, 3, 2)) if rng.random() < 0.3 else (1, 1)
    pads = tuple(int(v) for v in rng.integers(0, 3, 4))
    height = int(rng.integers((kh - 1) * dh + 1, 9))
    width = int(rng.integers((kw - 1) * dw + 1, 9))
    n_batch = int(rng.integers(1, 3))
    x = _input(rng, xdt, (n_batch, cg * group, height, width), fill)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w, wzp = _weights(rng, (mg * group, cg, kh, kw), wzp_kind)
    fast = _check(rng, x, w, wzp, layout, group, (sh, sw), (pads[0], pads[1], pads[2], pads[3]),
                  (dh, dw), rq)
    ws = w.astype(np.int64) - np.broadcast_to(wzp, (w.shape[0],))[:, None, None, None]
    if ws.min() < -128 or ws.max() > 127:
        assert fast.has_u == 1  # the split path ran


@pytest.mark.slow
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), layout=st.sampled_from(["NCHW", "NHWC"]),
       xdt=st.sampled_from([np.uint8, np.int8]), wzp_kind=st.sampled_from(["tensor", "channel"]),
       fill=st.sampled_from(["random", "random", "min", "max"]), rq=st.sampled_from(RQ),
       planes=st.booleans())
def test_depthwise_far_zero_points(seed, layout, xdt, wzp_kind, fill, rq, planes):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 40))
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    sh, sw = (int(v) for v in rng.integers(1, 4, 2))
    dh, dw = (int(v) for v in rng.integers(1, 3, 2)) if rng.random() < 0.3 else (1, 1)
    pads = tuple(int(v) for v in rng.integers(0, 3, 4))
    height = int(rng.integers((kh - 1) * dh + 1, 12))
    width = int(rng.integers((kw - 1) * dw + 1, 12))
    n_batch = int(rng.integers(1, 3))
    x = _input(rng, xdt, (n_batch, c, height, width), fill)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w, wzp = _weights(rng, (c, 1, kh, kw), wzp_kind)
    old = igemm.DW_PLANES
    igemm.DW_PLANES = planes
    try:
        _check(rng, x, w, wzp, layout, c, (sh, sw), pads, (dh, dw), rq)
    finally:
        igemm.DW_PLANES = old


@pytest.mark.parametrize("planes", [True, False])
def test_depthwise_mobilenet_shapes(planes):
    """3x3 pad 1 at strides 1 and 2 on planes wider than one 16-lane vector."""
    rng = np.random.default_rng(7)
    old = igemm.DW_PLANES
    igemm.DW_PLANES = planes
    try:
        for stride, size in ((1, 7), (2, 14), (1, 19), (2, 9)):
            x = _input(rng, np.uint8, (1, 18, size, size), "random")
            w, wzp = _weights(rng, (18, 1, 3, 3), "tensor")
            _check(rng, x, w, wzp, "NCHW", 18, (stride, stride), (1, 1, 1, 1), (1, 1),
                   ("fp32", "half_even"))
    finally:
        igemm.DW_PLANES = old


@pytest.mark.skipif(not simd.ENABLED, reason="dense fast kernels need AVX-512 VNNI")
@pytest.mark.parametrize("wzp", [0, 75, 200, 255])
def test_gemm_zero_point_split(wzp):
    rng = np.random.default_rng(wzp)
    a = rng.integers(0, 256, (37, 45)).astype(np.uint8)
    a[0] = 255
    a[1] = 0
    w = rng.integers(0, 256, (45, 29)).astype(np.uint8)
    bias = rng.integers(-999, 999, 29).astype(np.int64)
    mult = rng.uniform(1e-4, 1e-3, 29).astype(np.float32)
    kw = dict(rq_mode="fp32", rq_multiplier=mult, out_zero_point=7, out_dtype="uint8")
    fast = prepare_gemm(w, weight_zero_point=np.array([wzp]), bias=bias, input_zero_point=131,
                        requant=kw)
    assert fast is not None
    got, n_sat = fast.run(a)
    acc, _ = gemm_ref.gemm_acc(a, w, np.full(29, wzp), bias, 131, 32, "wrap")
    want, sat = quant_ref.requantize(acc, "fp32", mult, None, "half_even", 7, 0, 255, "uint8", -1)
    np.testing.assert_array_equal(got, want)
    assert n_sat == sat


@pytest.mark.skipif(not simd.ENABLED, reason="dense fast kernels need AVX-512 VNNI")
@pytest.mark.parametrize("rq", RQ)
@pytest.mark.parametrize("xdt", [np.uint8, np.int8])
@pytest.mark.parametrize("shape", [(640, 128), (128, 8), (8, 128), (128, 640), (3, 5), (1000, 137)])
@pytest.mark.parametrize("fill", ["random", "extreme"])
def test_gemm_few_rows(rq, xdt, shape, fill):
    """1-3 rows (a fully connected layer at batch 1) take the row kernel of
    simulator/kernels/gemv.py: every channel-block count (the 8-block groups end with blocks
    that recompute the last one and are not stored), extreme codes."""
    depth, n_cols = shape
    for rows in range(1, gemv.MAX_ROWS + 1):
        rng = np.random.default_rng(depth * rows + n_cols)
        info = np.iinfo(xdt)
        if fill == "extreme":
            a = np.where(rng.random((rows, depth)) < 0.5, info.min, info.max).astype(xdt)
            w = np.where(rng.random((depth, n_cols)) < 0.5, -128, 127).astype(np.int8)
        else:
            a = rng.integers(info.min, info.max, (rows, depth), endpoint=True).astype(xdt)
            w = rng.integers(-128, 128, (depth, n_cols)).astype(np.int8)
        bias = rng.integers(-9999, 9999, n_cols).astype(np.int64)
        kw, lo, hi = _requant(rng, rq[0], rq[1], n_cols, "int8")
        xzp = int(rng.integers(info.min, info.max + 1))
        fast = prepare_gemm(w, bias=bias, input_zero_point=xzp, requant=kw)
        names = [c.fn.py_func.__name__ for c in fast.launch(a.shape, a.dtype)[0].calls]
        assert "gemv_rows" in names
        got, n_sat = fast.run(a)
        acc, _ = gemm_ref.gemm_acc(a, w, 0, bias, xzp, 32, "wrap")
        want, sat = quant_ref.requantize(acc, kw["rq_mode"], kw["rq_multiplier"],
                                         kw.get("rq_shift"), kw["rq_rounding"],
                                         kw["out_zero_point"], lo, hi, "int8", -1)
        np.testing.assert_array_equal(got, want)
        assert n_sat == sat


@pytest.mark.parametrize("rq", RQ)
@pytest.mark.parametrize("xdt", [np.uint8, np.int8])
def test_depthwise_nhwc_3x3(rq, xdt):
    """The NHWC 3x3 depthwise kernel (4 adjacent positions per step at strides 1 and 2, single
    positions for the rest of a row, 16-channel blocks and a partial last block) against the
    reference: row widths around multiples of 4, channel counts 16, 18, 40 and 64, asymmetric
    padding, far weight zero points and extreme input codes; plus int16 weights whose ``w -
    wzp`` leaves int16 (the generic int32 tap loop)."""
    rng = np.random.default_rng(11)
    cases = [(1, 16, 7, 7, (1, 1, 1, 1)), (2, 18, 14, 14, (1, 1, 1, 1)),
             (1, 40, 5, 9, (0, 1, 2, 0)), (2, 64, 9, 13, (1, 0, 0, 2)),
             (1, 16, 3, 3, (0, 0, 0, 0)), (2, 18, 11, 4, (1, 1, 1, 1)), (3, 16, 8, 10, (1, 1, 1, 1)),
             # narrow rows: 1, 2, 3, 5, 6 output columns (4-, 2- and 1-position steps)
             (1, 32, 5, 5, (1, 1, 1, 1)), (1, 16, 4, 2, (1, 1, 1, 1)), (2, 32, 6, 6, (1, 1, 1, 1)),
             (1, 16, 3, 1, (1, 1, 1, 1)), (2, 48, 9, 11, (1, 1, 1, 1)), (1, 64, 25, 6, (1, 1, 1, 1))]
    for k, (stride, c, height, width, pads) in enumerate(cases):
        for fill in ("random", "min", "max"):
            x = _input(rng, xdt, (2, height, width, c), fill)
            w, wzp = _weights(rng, (c, 1, 3, 3), "channel" if k % 2 else "tensor")
            _check(rng, x, w, wzp, "NHWC", c, (stride, stride), pads, (1, 1), rq)
    for stride in (1, 2):
        x = _input(rng, xdt, (2, 9, 10, 20), "random")
        w = rng.integers(-32768, 32768, (20, 1, 3, 3)).astype(np.int16)
        w[0, 0, 0, 0] = 32767
        wzp = np.array([-100], dtype=np.int64)  # w - wzp reaches 32867
        fast = _check(rng, x, w, wzp, "NHWC", 20, (stride, stride), (1, 1, 1, 1), (1, 1),
                      ("fp32", "half_even"), must_be_fast=False)
        if fast is not None:
            assert int(fast.w32.max()) > 32767


@pytest.mark.parametrize("rq", RQ[:2])
def test_depthwise_nhwc_3x3_dilated(rq):
    """Row dilation runs in the 3x3 row kernel (its three rows are taps 0, 3 and 6, wherever
    they are); column dilation in the general tap loop. Both against the reference, at strides
    1 and 2, on a partial channel block."""
    rng = np.random.default_rng(23)
    for (dh, dw), row_kernel in (((2, 1), True), ((3, 1), True), ((1, 2), False), ((2, 2), False)):
        for stride in (1, 2):
            x = _input(rng, np.int8, (2, 13, 11, 20), "random")
            w, wzp = _weights(rng, (20, 1, 3, 3), "channel")
            fast = _check(rng, x, w, wzp, "NHWC", 20, (stride, stride), (2, 1, 1, 2), (dh, dw), rq)
            assert fast.dw3 == row_kernel


def _depthwise_nhwc_padded(seed, c, height, width, stride):
    """A 3-image NHWC 3x3 depthwise case: the prepared conv, its ``run`` result, its kernels, the
    geometry and the padded uint8 image the kernels read."""
    from simulator.kernels import igemm as ig
    rng = np.random.default_rng(seed)
    x = _input(rng, np.int8, (3, height, width, c), "random")
    w, wzp = _weights(rng, (c, 1, 3, 3), "channel")
    kw, lo, hi = _requant(rng, "fp32", "half_even", c, "int8")
    fast = prepare_conv(w, weight_zero_point=wzp, bias=None, input_zero_point=-3,
                        strides=(stride, stride), pads=(1, 1, 1, 1), group=c, layout="NHWC",
                        acc_bits=32, acc_overflow="wrap", requant=kw, channel_axis=3)
    assert fast is not None and fast.dw3
    one = fast.run(x)
    geo = fast._geometry(height, width)
    oh_n, ow_n, hp_n, wp_n, taps = geo
    img = hp_n * wp_n * fast.ctot
    xp = np.empty(3 * img + 16, dtype=np.uint8)
    layout = np.array([0, height, width], np.int64)   # NHWC
    ig._prepass_images(x.reshape(-1), layout, fast.pt, fast.pl, hp_n, wp_n, fast.group, fast.cg,
                       fast.cgp, fast.ctot, 128, fast.xzp + 128, xp, 0, 3)
    return fast, one, ig.kernels(fast.ep.kind, fast.ep.rnd), geo, img, xp


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_nhwc_3x3_row_ranges(stride):
    """The 3x3 row kernel split into row ranges (the parallel driver's chunks, including ranges
    that cross image boundaries): the same codes and saturation count as one range."""
    fast, one, kern, (oh_n, ow_n, _, wp_n, taps), img, xp = _depthwise_nhwc_padded(
        9 + stride, 32, 9, 7, stride)
    n_rows = 3 * oh_n
    for n_chunks in (1, 2, 5, n_rows):
        out = np.empty_like(one[0])
        # the constants read-only, as the launch passes them
        n_sat = kern[7](xp, img, wp_n, fast.ctot, oh_n, ow_n, fast.sh, fast.sw, read_only(taps),
                        read_only(fast.w32), read_only(fast._biasp_for(128)), *fast.ep.arrays(),
                        out.reshape(-1), n_rows, n_chunks)
        np.testing.assert_array_equal(out, one[0])
        assert n_sat == one[1]


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_nhwc_threads(stride):
    """The general NHWC depthwise kernel on ranges that start and end inside output rows
    (several chunks per row): the same codes and saturation count as the 3x3 row kernel."""
    fast, one, kern, (oh_n, ow_n, _, wp_n, taps), img, xp = _depthwise_nhwc_padded(
        5 + stride, 24, 13, 11, stride)
    total = 3 * oh_n * ow_n
    for n_chunks in (1, 5, 17, total):
        out = np.empty_like(one[0])
        n_sat = kern[3](xp, img, wp_n, fast.ctot, oh_n * ow_n, ow_n, fast.sh, fast.sw, taps,
                        fast.kw, fast.dw, fast.w32, fast._biasp_for(128), *fast.ep.arrays(),
                        out.reshape(-1), False, total, n_chunks)
        np.testing.assert_array_equal(out, one[0])
        assert n_sat == one[1]
