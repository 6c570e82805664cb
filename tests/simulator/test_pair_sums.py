"""``pair_sums: saturate_int16`` (x86 ``vpmaddubsw``: ONNX Runtime's MLAS u8 x s8 kernels
without VNNI): the kernels against plain Python references on random and saturating inputs,
and the steps refusing the fast kernels and compiled programs. Which ORT op sums in pairs, in
which order, against live ORT: tests/mrq/test_pair_sums_ort.py."""
import numpy as np
import pytest

from simulator.compiled import compile_program, last_reason
from simulator.errors import KernelInputError, ProgramError
from simulator.kernels.matmul import matmul_acc
from simulator.kernels.ort_dynamic import matmul_integer
from simulator.kernels.pair_sums import (
    conv2d_acc_pairs,
    gemm_acc_pairs,
    pair_excess,
    pair_excess_reference,
)
from simulator.program import Program, TensorSpec
from simulator.run import run
from simulator.steps import make_step, spec, step_launch

INT16_MIN, INT16_MAX = -32768, 32767


def _sat16(v):
    return min(max(v, INT16_MIN), INT16_MAX)


def _wrap(v, bits):
    span = 1 << bits
    return (v + (span >> 1)) % span - (span >> 1)


def _dot_pairs(xs, ws):
    """Raw codes, pairs (0, 1), (2, 3), ... saturated to int16; an odd last product alone."""
    total = 0
    for k in range(0, len(xs), 2):
        p = xs[k] * ws[k] + (xs[k + 1] * ws[k + 1] if k + 1 < len(xs) else 0)
        total += _sat16(p)
    return total


def _gemm_reference(a, w, xzp, wzp, bias, bits=32):
    """acc[r, n] = bias + pair-saturated sum of raw codes - zero-point terms, wrapped."""
    rows, depth = a.shape
    out = np.zeros((rows, w.shape[1]), np.int64)
    for r in range(rows):
        xs = [int(v) for v in a[r]]
        for n in range(w.shape[1]):
            ws = [int(w[k, n]) for k in range(depth)]
            exact_terms = -xzp * sum(ws) - int(wzp[n]) * sum(xs) + depth * xzp * int(wzp[n])
            out[r, n] = _wrap(int(bias[n]) + _dot_pairs(xs, ws) + exact_terms, bits)
    return out


def _conv_reference(x, w, xzp, wzp, bias, strides, pads, dilations, group):
    """NCHW conv, K of each group in (kernel row, kernel column, input channel) order, the
    padding holding the input zero point (ORT's NHWC im2col)."""
    n_b, _, height, width = x.shape
    m_n, cg, kh_n, kw_n = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dilations
    oh_n = (height + pt + pb - (kh_n - 1) * dh - 1) // sh + 1
    ow_n = (width + pl + pr - (kw_n - 1) * dw - 1) // sw + 1
    mg = m_n // group
    out = np.zeros((n_b, m_n, oh_n, ow_n), np.int64)
    for b in range(n_b):
        for m in range(m_n):
            g = m // mg
            for oh in range(oh_n):
                for ow in range(ow_n):
                    xs, ws = [], []
                    for i in range(kh_n):
                        for j in range(kw_n):
                            for c in range(cg):
                                iy, ix = oh * sh - pt + i * dh, ow * sw - pl + j * dw
                                inside = 0 <= iy < height and 0 <= ix < width
                                xs.append(int(x[b, g * cg + c, iy, ix]) if inside else xzp)
                                ws.append(int(w[m, c, i, j]))
                    terms = (-xzp * sum(ws) - int(wzp[m]) * sum(xs)
                             + len(xs) * xzp * int(wzp[m]))
                    out[b, m, oh, ow] = _wrap(int(bias[m]) + _dot_pairs(xs, ws) + terms, 32)
    return out


def _operands(rng, shape_a, shape_w, extreme):
    if extreme:   # the saturating corners: 255 x 127 and 255 x -128 pairs, and their mixes
        a = rng.choice(np.array([0, 1, 254, 255], np.uint8), shape_a)
        w = rng.choice(np.array([-128, -127, 0, 126, 127], np.int8), shape_w)
    else:
        a = rng.integers(0, 256, shape_a).astype(np.uint8)
        w = rng.integers(-128, 128, shape_w).astype(np.int8)
    return a, w


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3, 7, 8, 33])
def test_pair_excess_equals_the_plain_reference(depth, extreme):
    rng = np.random.default_rng(depth * 2 + extreme)
    a, w = _operands(rng, (5, depth), (depth, 4), extreme)
    got = pair_excess(a, w)
    np.testing.assert_array_equal(got, pair_excess_reference(a, w))
    ideal = a.astype(np.int64) @ w.astype(np.int64)
    np.testing.assert_array_equal(ideal + got, [[_dot_pairs([int(v) for v in a[r]],
                                                            [int(v) for v in w[:, n]])
                                                 for n in range(4)] for r in range(5)])


def test_the_corners_saturate_both_ways():
    a = np.full((1, 4), 255, np.uint8)
    w = np.array([[127], [127], [-128], [-128]], np.int8)
    # 255*127*2 = 64770 -> 32767; 255*-128*2 = -65280 -> -32768
    assert pair_excess(a, w)[0, 0] == (32767 - 64770) + (-32768 + 65280)
    w = np.array([[127], [-128], [127], [1]], np.int8)   # mixed signs never saturate
    assert pair_excess(a, w)[0, 0] == 0


@pytest.mark.parametrize("extreme", [False, True])
def test_gemm_acc_pairs_equals_the_plain_reference(extreme):
    rng = np.random.default_rng(11 + extreme)
    for depth in (1, 6, 9, 40):
        a, w = _operands(rng, (2, 3, depth), (depth, 5), extreme)
        wzp = rng.integers(-128, 128, 5)
        bias = rng.integers(-(2**20), 2**20, 5)
        for xzp in (0, 131, 255):
            got, _ = gemm_acc_pairs(a, w, weight_zero_point=wzp, bias=bias, input_zero_point=xzp)
            want = _gemm_reference(a.reshape(-1, depth), w, xzp, wzp, bias)
            np.testing.assert_array_equal(got.reshape(-1, 5), want)


def test_gemm_acc_pairs_wraps_at_the_accumulator_width():
    rng = np.random.default_rng(5)
    a, w = _operands(rng, (4, 64), (64, 3), True)
    wzp, bias = np.zeros(3, np.int64), np.array([30000, -30000, 0])
    got, n_ovf = gemm_acc_pairs(a, w, weight_zero_point=wzp, bias=bias, acc_bits=16)
    want = _gemm_reference(a, w, 0, wzp, bias, bits=16)
    np.testing.assert_array_equal(got, want)
    unwrapped = _gemm_reference(a, w, 0, wzp, bias, bits=64)
    assert n_ovf == int(np.count_nonzero(unwrapped != want)) > 0
    with pytest.raises(KernelInputError, match="wrap"):
        gemm_acc_pairs(a, w, acc_overflow="saturate")


CONV_CASES = [  # (c_in, c_out, group, kernel, strides, pads, dilations, hw)
    (3, 4, 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (5, 6)),    # odd C: pairs cross taps
    (8, 16, 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (5, 5)),   # ORT's ConvSym shape
    (5, 4, 1, (2, 3), (2, 1), (0, 2, 1, 0), (2, 1), (7, 6)),
    (6, 4, 2, (1, 3), (1, 2), (0, 1, 0, 1), (1, 2), (4, 7)),    # grouped
    (4, 4, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (4, 4)),    # depthwise (K odd: 9)
    (16, 5, 1, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), (3, 3)),   # pointwise
]


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_conv2d_acc_pairs_equals_the_plain_reference(case, extreme, layout):
    c_in, c_out, group, kernel, strides, pads, dilations, hw = case
    rng = np.random.default_rng(c_in * 7 + c_out + extreme)
    x, w = _operands(rng, (2, c_in) + hw, (c_out, c_in // group) + kernel, extreme)
    wzp = np.full(c_out, rng.integers(-128, 128))
    bias = rng.integers(-(2**20), 2**20, c_out)
    for xzp in (0, 97, 255):
        want = _conv_reference(x, w, xzp, wzp, bias, strides, pads, dilations, group)
        xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        got, _ = conv2d_acc_pairs(xl, w, weight_zero_point=wzp, bias=bias, input_zero_point=xzp,
                                  strides=strides, pads=pads, dilations=dilations, group=group,
                                  layout=layout)
        if layout == "NHWC":
            got = got.transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(got, want)


def test_pairs_need_uint8_codes_times_int8_weights():
    a = np.zeros((2, 4), np.int8)
    with pytest.raises(KernelInputError, match="uint8 x int8"):
        pair_excess(a, np.zeros((4, 3), np.int8))
    with pytest.raises(KernelInputError, match="uint8 x int8"):
        pair_excess(a.view(np.uint8), np.zeros((4, 3), np.uint8))


@pytest.mark.parametrize("extreme", [False, True])
def test_matmul_integer_pairs_equal_the_plain_reference(extreme):
    rng = np.random.default_rng(21 + extreme)
    a, b = _operands(rng, (2, 3, 9), (9, 4), extreme)
    zb = rng.integers(-128, 128, 4).astype(np.int8)
    got = matmul_integer(a, b, np.uint8(7), zb, "saturate_int16")
    want = _gemm_reference(a.reshape(-1, 9), b, 7, zb.astype(np.int64), np.zeros(4, np.int64))
    np.testing.assert_array_equal(got.reshape(-1, 4), want)
    assert got.dtype == np.int32


def test_matmul_acc_pairs_each_product_of_the_batch():
    rng = np.random.default_rng(31)
    a, b = _operands(rng, (3, 2, 10), (3, 10, 4), True)
    got, _ = matmul_acc(a, b, zero_point_a=5, zero_point_b=-2, pair_sums="saturate_int16")
    for i in range(3):
        want = _gemm_reference(a[i], b[i], 5, np.full(4, -2), np.zeros(4, np.int64))
        np.testing.assert_array_equal(got[i], want)


# --- steps: typed parameter, plain kernel only ----------------------------------------------------
def _conv_step(pair_sums, **extra):
    w = np.array(np.random.default_rng(0).integers(-128, 128, (16, 8, 3, 3)), np.int8)
    return make_step("conv", "c", ("x",), ("y",), weight=w, pads=(1, 1, 1, 1),
                     input_zero_point=3, rq_mode="fp32",
                     rq_multiplier=np.full(16, 1e-3, np.float32), out_dtype="uint8",
                     pair_sums=pair_sums, **extra)


def test_the_fast_kernels_and_compiled_programs_refuse_pair_sums():
    x = np.random.default_rng(1).integers(0, 256, (2, 8, 6, 6)).astype(np.uint8)
    exact, paired = _conv_step("exact"), _conv_step("saturate_int16")
    assert step_launch(exact, [spec(x.shape, x.dtype)]) is not None
    assert step_launch(paired, [spec(x.shape, x.dtype)]) is None
    program = Program((TensorSpec("x", "uint8", (None, 8, 6, 6)),),
                      (TensorSpec("y", "uint8", ()),), (paired,))
    assert compile_program(program, {"x": x}) is None
    assert "c" in last_reason()
    got = run(program, {"x": x}).outputs["y"]
    acc = _conv_reference(x, paired.params.weight, 3, np.zeros(16, np.int64),
                          np.zeros(16, np.int64), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    want = np.clip(np.rint((acc.astype(np.float32) * np.float32(1e-3))), 0, 255)
    np.testing.assert_array_equal(got, want.astype(np.uint8))


def test_pair_sums_parameter_is_checked():
    with pytest.raises(ProgramError, match="pair_sums"):
        _conv_step("saturate")
    with pytest.raises(ProgramError, match="wrap"):
        _conv_step("saturate_int16", acc_overflow="saturate")
    for kind, params in (("gemm", dict(weight=np.zeros((4, 2), np.int8), rq_mode="none",
                                       out_dtype="int32")),
                         ("matmul", dict(rq_mode="none", out_dtype="int32")),
                         ("matmul_integer", {})):
        with pytest.raises(ProgramError, match="pair_sums"):
            make_step(kind, "s", ("a",), ("y",), pair_sums="int16", **params)
