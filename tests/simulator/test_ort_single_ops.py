"""Bit-exact parity of single simulator steps with ONNX Runtime single-node models.

Each test builds a one-node ONNX model with onnx.helper, runs it with onnxruntime (CPU EP, default
optimization level, ``session.qdqisint8allowed=1``), builds the matching one-step Program (with
the parameters the lowering must derive, e.g. ``f32(f32(sx * sw) / sy)``) and runs it through
``simulator.run.run``. Inputs are random plus tie-heavy cases (power-of-two scales, odd zero
points). Run with ``-s`` to see how many output elements were compared per op.

Peer arithmetic: /work/shared/docs/peer_arithmetic.md sections 1.1-1.6.
"""
import pathlib
import sys
import zlib
from collections import Counter

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from mrq.hw_profile import load_profile  # noqa: E402
from simulator.program import Program, Step, TensorSpec  # noqa: E402
from simulator.run import run  # noqa: E402
from tests.ort_host import ORT_PROFILE  # noqa: E402

f32 = np.float32
TALLY = Counter()
ONNX_TYPE = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8, "int16": TensorProto.INT16,
             "uint16": TensorProto.UINT16, "int32": TensorProto.INT32,
             "float32": TensorProto.FLOAT}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    total = sum(TALLY.values())
    print("\nORT single-op parity (output elements compared, all bit-exact):")
    for op, n in sorted(TALLY.items()):
        print(f"  {op:34s} {n}")
    print(f"  {'total':34s} {total}")


def _session(nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _scalar(name, dtype, value):
    return helper.make_tensor(name, ONNX_TYPE[dtype], [], [value])


def _tensor(name, arr):
    return helper.make_tensor(name, ONNX_TYPE[arr.dtype.name], list(arr.shape),
                              arr.reshape(-1).tolist())


def _vinfo(name, dtype, shape):
    return helper.make_tensor_value_info(name, ONNX_TYPE[dtype], shape)


def _run_program(step_kind, params, feeds, out_dtype, n_batch_free=True):
    inputs = tuple(TensorSpec(name, arr.dtype.name, (None,) + tuple(arr.shape[1:]))
                   if arr.ndim and n_batch_free else TensorSpec(name, arr.dtype.name, arr.shape)
                   for name, arr in feeds.items())
    step = Step(step_kind, f"{step_kind}0", tuple(feeds), ("y",), params)
    program = Program(inputs, (TensorSpec("y", out_dtype, ()),), (step,))
    return run(program, feeds).outputs["y"]


def _check(op, got, want):
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(got, want)
    TALLY[op] += want.size


def _seed(*key) -> int:
    """A seed stable across processes (``hash`` of a str is salted per process)."""
    return zlib.crc32(repr(key).encode())


def _range(dtype):
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _codes(rng, dtype, shape):
    lo, hi = _range(dtype)
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)


def _scales(rng, n, pow2):
    if pow2:
        return [f32(2.0 ** int(e)) for e in rng.integers(-6, 2, n)]
    return [f32(v) for v in rng.uniform(0.002, 0.8, n)]


def _zps(rng, dtype, n, odd):
    lo, hi = _range(dtype)
    zs = [int(v) for v in rng.integers(lo, hi, n, endpoint=True)]
    if odd:
        zs = [z if z % 2 else (z + 1 if z < hi else z - 1) for z in zs]
    return zs


# --- QLinearAdd / QLinearMul ----------------------------------------------------------------------
BINARY_SHAPES = [((4, 64), (4, 64)), ((2, 3, 5, 7), (1, 3, 1, 1)), ((1, 3, 1, 1), (2, 3, 5, 7)),
                 ((1, 37), (53, 1)), ((53, 1), (1, 37)), ((), (3, 11)), ((3, 11), ()),
                 ((2, 5, 1), (2, 5, 9)), ((9,), (4, 9))]


def _binary_case(op, dtype, sa, za, sb, zb, sc, zc, a, b):
    nodes = [helper.make_node(op, ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["y"],
                              domain="com.microsoft")]
    inits = [_scalar("sa", "float32", sa), _scalar("za", dtype, za), _scalar("sb", "float32", sb),
             _scalar("zb", dtype, zb), _scalar("sc", "float32", sc), _scalar("zc", dtype, zc)]
    sess = _session(nodes, [_vinfo("a", dtype, list(a.shape)), _vinfo("b", dtype, list(b.shape))],
                    [_vinfo("y", dtype, None)], inits)
    return sess.run(None, {"a": a, "b": b})[0]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("shapes", BINARY_SHAPES)
@pytest.mark.parametrize("pow2", [True, False])
def test_qlinear_add(dtype, shapes, pow2):
    rng = np.random.default_rng(_seed((dtype, str(shapes), pow2)))
    for _ in range(3):
        sa, sb, sc = _scales(rng, 3, pow2)
        za, zb, zc = _zps(rng, dtype, 3, odd=pow2)
        a, b = _codes(rng, dtype, shapes[0]), _codes(rng, dtype, shapes[1])
        want = _binary_case("QLinearAdd", dtype, sa, za, sb, zb, sc, zc, a, b)
        lo, hi = _range(dtype)
        params = {"mode": "ort_fma", "scale_a": sa, "scale_b": sb, "scale_out": sc,
                  "zero_point_a": za, "zero_point_b": zb, "out_zero_point": zc,
                  "out_min": lo, "out_max": hi, "out_dtype": dtype}
        got = _run_program("add", params, {"a": a, "b": b}, dtype, n_batch_free=False)
        _check("QLinearAdd", got, want)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_qlinear_add_all_pairs_ties(dtype):
    """Every (a, b) code pair with power-of-two scales and odd zero points (ties everywhere)."""
    lo, hi = _range(dtype)
    v = np.arange(lo, hi + 1).astype(dtype)
    a = np.repeat(v, v.size).reshape(v.size, v.size)
    b = np.tile(v, v.size).reshape(v.size, v.size)
    for sa, sb, sc, za, zb, zc in [(0.5, 0.25, 1.0, 3, -5, 7), (0.25, 0.125, 0.5, 1, 1, -1),
                                   (0.0173, 0.0291, 0.0377, 11, -3, 5)]:
        za, zb, zc = ((z + 128) if dtype == "uint8" else z for z in (za, zb, zc))
        sa, sb, sc = f32(sa), f32(sb), f32(sc)
        want = _binary_case("QLinearAdd", dtype, sa, za, sb, zb, sc, zc, a, b)
        params = {"mode": "ort_fma", "scale_a": sa, "scale_b": sb, "scale_out": sc,
                  "zero_point_a": za, "zero_point_b": zb, "out_zero_point": zc,
                  "out_min": lo, "out_max": hi, "out_dtype": dtype}
        _check("QLinearAdd", _run_program("add", params, {"a": a, "b": b}, dtype), want)


# Scales and zero points for which ORT's swapped operand order (A is the per-span scalar) and the
# general order give different codes for one (a, b) pair: found by searching with the simulator.
SWAP_SENSITIVE = [("int8", 0.6826695203781128, -63, 0.054767198860645294, -81, 0.22113950550556183,
                   -43),
                  ("uint8", 0.812282383441925, 45, 0.9234216809272766, 201, 0.27729782462120056,
                   209),
                  ("uint8", 0.9461672902107239, 159, 0.4358907639980316, 64, 0.48615574836730957,
                   132),
                  ("int8", 0.29285702109336853, -122, 0.12904727458953857, 66,
                   0.11895861476659775, -127)]


@pytest.mark.parametrize("case", SWAP_SENSITIVE)
@pytest.mark.parametrize("a_is_span_scalar", [True, False])
def test_qlinear_add_operand_order(case, a_is_span_scalar):
    """All code pairs, A of shape [256, 1] against B [1, 256] (ORT swaps A and B) and vice versa."""
    dtype, sa, za, sb, zb, sc, zc = case
    sa, sb, sc = f32(sa), f32(sb), f32(sc)
    lo, hi = _range(dtype)
    v = np.arange(lo, hi + 1).astype(dtype)
    a, b = (v[:, None], v[None, :]) if a_is_span_scalar else (v[None, :], v[:, None])
    want = _binary_case("QLinearAdd", dtype, sa, za, sb, zb, sc, zc, a, b)
    params = {"mode": "ort_fma", "scale_a": sa, "scale_b": sb, "scale_out": sc,
              "zero_point_a": za, "zero_point_b": zb, "out_zero_point": zc,
              "out_min": lo, "out_max": hi, "out_dtype": dtype}
    got = _run_program("add", params, {"a": a, "b": b}, dtype, n_batch_free=False)
    _check("QLinearAdd", got, want)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("shapes", BINARY_SHAPES[:6])
@pytest.mark.parametrize("pow2", [True, False])
def test_qlinear_mul(dtype, shapes, pow2):
    rng = np.random.default_rng(_seed(("mul", dtype, str(shapes), pow2)))
    for _ in range(3):
        sa, sb, sc = _scales(rng, 3, pow2)
        sc = f32(sc * 64)
        za, zb, zc = _zps(rng, dtype, 3, odd=pow2)
        a, b = _codes(rng, dtype, shapes[0]), _codes(rng, dtype, shapes[1])
        want = _binary_case("QLinearMul", dtype, sa, za, sb, zb, sc, zc, a, b)
        lo, hi = _range(dtype)
        params = {"zero_point_a": za, "zero_point_b": zb, "rq_mode": "fp32_zp_in",
                  "rq_multiplier": np.array([f32(f32(sa * sb) / sc)], np.float32),
                  "rq_rounding": "half_even", "out_zero_point": zc, "out_min": lo, "out_max": hi,
                  "out_dtype": dtype}
        got = _run_program("mul", params, {"a": a, "b": b}, dtype, n_batch_free=False)
        _check("QLinearMul", got, want)


# --- pooling --------------------------------------------------------------------------------------
POOL_CASES = [((2, 2), (2, 2), (0, 0, 0, 0), 0), ((3, 3), (1, 1), (1, 1, 1, 1), 0),
              ((3, 3), (2, 2), (1, 1, 1, 1), 1), ((2, 3), (2, 1), (1, 0, 0, 2), 1),
              ((3, 2), (3, 2), (0, 1, 2, 1), 0), ((5, 5), (2, 2), (2, 2, 2, 2), 1)]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("channels_last", [0, 1])
def test_qlinear_average_pool(dtype, case, count_include_pad, channels_last):
    kernel, strides, pads, ceil_mode = case
    rng = np.random.default_rng(_seed((dtype, str(case), count_include_pad, channels_last)))
    for pow2 in (True, False):
        s_in, s_out = _scales(rng, 2, pow2)
        z_in, z_out = _zps(rng, dtype, 2, odd=pow2)
        x = _codes(rng, dtype, (2, 3, 11, 9))
        if channels_last:
            x = np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))
        onnx_pads = [pads[0], pads[1], pads[2], pads[3]]
        node = helper.make_node("QLinearAveragePool", ["x", "sx", "zx", "sy", "zy"], ["y"],
                                domain="com.microsoft", kernel_shape=list(kernel),
                                strides=list(strides), pads=onnx_pads, ceil_mode=ceil_mode,
                                count_include_pad=count_include_pad, channels_last=channels_last)
        inits = [_scalar("sx", "float32", s_in), _scalar("zx", dtype, z_in),
                 _scalar("sy", "float32", s_out), _scalar("zy", dtype, z_out)]
        sess = _session([node], [_vinfo("x", dtype, list(x.shape))], [_vinfo("y", dtype, None)],
                        inits)
        want = sess.run(None, {"x": x})[0]
        lo, hi = _range(dtype)
        params = {"mode": "ort_float", "layout": "NHWC" if channels_last else "NCHW",
                  "kernel": kernel, "strides": strides, "pads": pads, "ceil_mode": ceil_mode,
                  "count_include_pad": count_include_pad, "scale_in": s_in,
                  "input_zero_point": z_in, "scale_out": s_out, "out_zero_point": z_out,
                  "out_min": lo, "out_max": hi, "out_dtype": dtype}
        _check("QLinearAveragePool", _run_program("avgpool", params, {"x": x}, dtype), want)


def _global_case(dtype, x, s_in, z_in, s_out, z_out, channels_last, op="QLinearGlobalAveragePool",
                 attrs=None):
    node = helper.make_node(op, ["x", "sx", "zx", "sy", "zy"], ["y"], domain="com.microsoft",
                            channels_last=channels_last, **(attrs or {}))
    inits = [_scalar("sx", "float32", s_in), _scalar("zx", dtype, z_in),
             _scalar("sy", "float32", s_out), _scalar("zy", dtype, z_out)]
    sess = _session([node], [_vinfo("x", dtype, list(x.shape))], [_vinfo("y", dtype, None)], inits)
    return sess.run(None, {"x": x})[0]


def _global_params(dtype, s_in, z_in, s_out, z_out, n_pixels, channels_last):
    lo, hi = _range(dtype)
    return {"layout": "NHWC" if channels_last else "NCHW", "input_zero_point": z_in,
            "rq_mode": "fp32", "rq_multiplier": np.array([f32(s_in / f32(s_out * f32(n_pixels)))],
                                                         np.float32),
            "rq_rounding": "half_even", "out_zero_point": z_out, "out_min": lo, "out_max": hi,
            "out_dtype": dtype}


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("hw", [(7, 7), (4, 4), (1, 1), (3, 5)])
@pytest.mark.parametrize("channels_last", [0, 1])
def test_qlinear_global_average_pool(dtype, hw, channels_last):
    rng = np.random.default_rng(_seed((dtype, hw, channels_last)))
    for pow2 in (True, False):
        s_in, s_out = _scales(rng, 2, pow2)
        z_in, z_out = _zps(rng, dtype, 2, odd=pow2)
        x = _codes(rng, dtype, (3, 16) + hw)
        if channels_last:
            x = np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))
        want = _global_case(dtype, x, s_in, z_in, s_out, z_out, channels_last)
        params = _global_params(dtype, s_in, z_in, s_out, z_out, hw[0] * hw[1], channels_last)
        _check("QLinearGlobalAveragePool", _run_program("global_avgpool", params, {"x": x}, dtype),
               want)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_qlinear_average_pool_whole_image_is_global(dtype):
    """QLinearAveragePool whose kernel covers the image with zero pads runs ORT's global average
    pool (integer sum, fp32 requant, zero point after rounding): lower it to global_avgpool."""
    rng = np.random.default_rng(11)
    for pow2 in (True, False):
        s_in, s_out = _scales(rng, 2, pow2)
        z_in, z_out = _zps(rng, dtype, 2, odd=pow2)
        x = _codes(rng, dtype, (2, 8, 6, 6))
        want = _global_case(dtype, x, s_in, z_in, s_out, z_out, 0, op="QLinearAveragePool",
                            attrs={"kernel_shape": [6, 6]})
        params = _global_params(dtype, s_in, z_in, s_out, z_out, 36, 0)
        _check("QLinearAveragePool(global)",
               _run_program("global_avgpool", params, {"x": x}, dtype), want)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("case", [((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
                                  ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0),
                                  ((3, 2), (1, 2), (2, 0, 1, 1), (2, 2), 0),
                                  ((2, 3), (3, 2), (1, 1, 0, 0), (1, 2), 1)])
def test_maxpool(dtype, case):
    kernel, strides, pads, dilations, ceil_mode = case
    rng = np.random.default_rng(5)
    x = _codes(rng, dtype, (2, 4, 10, 9))
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=list(kernel),
                            strides=list(strides), pads=list(pads), dilations=list(dilations),
                            ceil_mode=ceil_mode)
    sess = _session([node], [_vinfo("x", dtype, list(x.shape))], [_vinfo("y", dtype, None)], [])
    want = sess.run(None, {"x": x})[0]
    params = {"kernel": kernel, "strides": strides, "pads": pads, "dilations": dilations,
              "ceil_mode": ceil_mode}
    _check("MaxPool", _run_program("maxpool", params, {"x": x}, dtype), want)


# --- QLinearConv / QLinearMatMul / ConvInteger ----------------------------------------------------
CONV_CASES = [  # (c_in, c_out, group, kernel, strides, pads, dilations, hw)
    (3, 8, 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (9, 9)),
    (4, 6, 1, (3, 3), (2, 2), (0, 1, 2, 1), (1, 1), (10, 11)),
    (8, 8, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (8, 8)),  # depthwise
    (4, 8, 4, (3, 3), (2, 1), (1, 2, 1, 0), (2, 1), (11, 9)),  # depthwise, multiplier 2
    (6, 4, 2, (1, 3), (1, 2), (0, 1, 0, 1), (1, 2), (7, 12)),  # grouped
    (16, 5, 1, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), (5, 5)),  # pointwise
]
# how this host's MLAS sums u8 x s8 products (hw_profiles/onnxruntime-cpu*.yaml)
HOST_PAIR_SUMS = load_profile(ORT_PROFILE).accumulator.pair_sums


def _pair_sums(act, wt, depthwise=False):
    """The ``pair_sums`` parameter mrq's lowering gives this product on this host: the
    profile's for u8 x s8, except ORT's depthwise QLinearConv (its kernels widen first)."""
    return HOST_PAIR_SUMS if (act, wt) == ("uint8", "int8") and not depthwise else "exact"


@pytest.mark.parametrize("act,wt", [("uint8", "uint8"), ("uint8", "int8"), ("int8", "int8")])
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("pow2", [True, False])
def test_qlinear_conv(act, wt, case, per_channel, pow2):
    c_in, c_out, group, kernel, strides, pads, dilations, hw = case
    rng = np.random.default_rng(_seed((act, wt, str(case), per_channel, pow2)))
    x = _codes(rng, act, (2, c_in) + hw)
    w = _codes(rng, wt, (c_out, c_in // group) + kernel)
    sx, sy = _scales(rng, 2, pow2)
    sy = f32(sy * 16)
    sw = np.array(_scales(rng, c_out if per_channel else 1, pow2), np.float32)
    zx, zy = _zps(rng, act, 2, odd=pow2)
    zw = _zps(rng, wt, 1, odd=False)[0]  # ORT: per-channel weight zero points must be equal
    bias = rng.integers(-(2**16), 2**16, c_out).astype(np.int32)
    w_zp = np.full(sw.size, zw, dtype=wt)
    inits = [_scalar("sx", "float32", sx), _scalar("zx", act, zx), _tensor("w", w),
             helper.make_tensor("sw", TensorProto.FLOAT, [sw.size], sw.tolist()),
             helper.make_tensor("zw", ONNX_TYPE[wt], [sw.size], w_zp.tolist()),
             _scalar("sy", "float32", sy), _scalar("zy", act, zy), _tensor("bias", bias)]
    node = helper.make_node("QLinearConv", ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy", "bias"],
                            ["y"], kernel_shape=list(kernel), strides=list(strides),
                            pads=[pads[0], pads[1], pads[2], pads[3]], dilations=list(dilations),
                            group=group)
    sess = _session([node], [_vinfo("x", act, list(x.shape))], [_vinfo("y", act, None)], inits)
    want = sess.run(None, {"x": x})[0]
    lo, hi = _range(act)
    mult = np.array([f32(f32(sx * s) / sy) for s in sw], np.float32)
    params = {"layout": "NCHW", "weight": w, "weight_zero_point": np.array([zw], np.int64),
              "bias": bias.astype(np.int64), "input_zero_point": zx, "strides": strides,
              "pads": pads, "dilations": dilations, "group": group, "acc_bits": 32,
              "acc_overflow": "wrap", "rq_mode": "fp32", "rq_multiplier": mult,
              "rq_rounding": "half_even", "out_zero_point": zy, "out_min": lo, "out_max": hi,
              "out_dtype": act, "channel_axis": 1,
              "pair_sums": _pair_sums(act, wt, depthwise=c_in == c_out == group)}
    _check("QLinearConv", _run_program("conv", params, {"x": x}, act), want)


@pytest.mark.parametrize("act,wt", [("uint8", "uint8"), ("uint8", "int8"), ("int8", "int8")])
@pytest.mark.parametrize("per_column", [True, False])
def test_qlinear_matmul(act, wt, per_column):
    rng = np.random.default_rng(_seed((act, wt, per_column)))
    for pow2 in (True, False):
        k, n = 40, 12
        a = _codes(rng, act, (2, 5, k))
        b = _codes(rng, wt, (k, n))
        sa, sy = _scales(rng, 2, pow2)
        sy = f32(sy * 32)
        sb = np.array(_scales(rng, n if per_column else 1, pow2), np.float32)
        za, zy = _zps(rng, act, 2, odd=pow2)
        zb = np.array(_zps(rng, wt, sb.size, odd=False), dtype=wt)
        inits = [_scalar("sa", "float32", sa), _scalar("za", act, za), _tensor("b", b),
                 helper.make_tensor("sb", TensorProto.FLOAT, [sb.size], sb.tolist()),
                 helper.make_tensor("zb", ONNX_TYPE[wt], [zb.size], zb.tolist()),
                 _scalar("sy", "float32", sy), _scalar("zy", act, zy)]
        node = helper.make_node("QLinearMatMul", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"],
                                ["y"])
        sess = _session([node], [_vinfo("a", act, list(a.shape))], [_vinfo("y", act, None)],
                        inits)
        want = sess.run(None, {"a": a})[0]
        lo, hi = _range(act)
        params = {"weight": b, "weight_zero_point": zb.astype(np.int64), "input_zero_point": za,
                  "acc_bits": 32, "acc_overflow": "wrap", "rq_mode": "fp32",
                  "rq_multiplier": np.array([f32(f32(sa * s) / sy) for s in sb], np.float32),
                  "rq_rounding": "half_even", "out_zero_point": zy, "out_min": lo,
                  "out_max": hi, "out_dtype": act, "pair_sums": _pair_sums(act, wt)}
        _check("QLinearMatMul", _run_program("gemm", params, {"a": a}, act), want)


@pytest.mark.parametrize("act,wt", [("uint8", "uint8"), ("uint8", "int8"), ("int8", "int8")])
def test_conv_integer_and_matmul_integer(act, wt):
    rng = np.random.default_rng(17)
    x = _codes(rng, act, (2, 4, 7, 6))
    w = _codes(rng, wt, (5, 4, 3, 3))
    zx = _zps(rng, act, 1, odd=True)[0]
    zw = _zps(rng, wt, 1, odd=False)[0]
    node = helper.make_node("ConvInteger", ["x", "w", "zx", "zw"], ["y"], pads=[1, 0, 1, 2])
    sess = _session([node], [_vinfo("x", act, list(x.shape))], [_vinfo("y", "int32", None)],
                    [_tensor("w", w), _scalar("zx", act, zx), _scalar("zw", wt, zw)])
    want = sess.run(None, {"x": x})[0]
    params = {"weight": w, "weight_zero_point": np.array([zw]), "input_zero_point": zx,
              "pads": (1, 0, 1, 2), "rq_mode": "none", "out_dtype": "int32"}
    _check("ConvInteger", _run_program("conv", params, {"x": x}, "int32"), want)

    a = _codes(rng, act, (3, 30))
    b = _codes(rng, wt, (30, 7))
    node = helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["y"])
    sess = _session([node], [_vinfo("a", act, list(a.shape))], [_vinfo("y", "int32", None)],
                    [_tensor("b", b), _scalar("za", act, zx), _scalar("zb", wt, zw)])
    want = sess.run(None, {"a": a})[0]
    params = {"weight": b, "weight_zero_point": np.array([zw]), "input_zero_point": zx,
              "rq_mode": "none", "out_dtype": "int32", "pair_sums": _pair_sums(act, wt)}
    _check("MatMulInteger", _run_program("gemm", params, {"a": a}, "int32"), want)


# --- QuantizeLinear / DequantizeLinear ------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "uint16"])
@pytest.mark.parametrize("per_axis", [False, True])
@pytest.mark.parametrize("pow2", [True, False])
def test_quantize_linear(dtype, per_axis, pow2):
    rng = np.random.default_rng(_seed((dtype, per_axis, pow2)))
    c = 6
    scale = np.array(_scales(rng, c if per_axis else 1, pow2), np.float32)
    zp = np.array(_zps(rng, dtype, scale.size, odd=pow2), dtype=dtype)
    lo, hi = _range(dtype)
    span = (hi - lo) * float(scale.max())
    x = (rng.uniform(-span, span, (3, c, 17))).astype(np.float32)
    if pow2:  # exact halves of the scale: ties
        x = ((np.round(x[:, :, :] / scale.reshape(1, -1, 1) * 2) / 2)
             * scale.reshape(1, -1, 1)).astype(np.float32) if per_axis else \
            ((np.round(x / scale[0] * 2) / 2) * scale[0]).astype(np.float32)
    x.reshape(-1)[:3] = [np.inf, -np.inf, np.float32(1e30)]
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [scale.size] if per_axis else [],
                                scale.tolist()),
             helper.make_tensor("z", ONNX_TYPE[dtype], [zp.size] if per_axis else [],
                                zp.tolist())]
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=1)
    sess = _session([node], [_vinfo("x", "float32", list(x.shape))], [_vinfo("y", dtype, None)],
                    inits)
    want = sess.run(None, {"x": x})[0]
    params = {"scale": scale, "zero_point": zp.astype(np.int64), "axis": 1,
              "rounding": "half_even", "method": "divide", "out_min": lo, "out_max": hi,
              "out_dtype": dtype}
    _check("QuantizeLinear", _run_program("quantize", params, {"x": x}, dtype), want)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "uint16", "int32"])
@pytest.mark.parametrize("per_axis", [False, True])
def test_dequantize_linear(dtype, per_axis):
    rng = np.random.default_rng(_seed((dtype, per_axis)))
    c = 5
    x = _codes(rng, dtype, (2, c, 13))
    scale = rng.uniform(1e-4, 2.0, c if per_axis else 1).astype(np.float32)
    zp = np.array(_zps(rng, dtype, scale.size, odd=True), dtype=dtype)
    if dtype == "int32":
        zp[:] = 0  # ONNX: int32 DequantizeLinear has zero point 0
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [scale.size] if per_axis else [],
                                scale.tolist()),
             helper.make_tensor("z", ONNX_TYPE[dtype], [zp.size] if per_axis else [],
                                zp.tolist())]
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], axis=1)
    sess = _session([node], [_vinfo("x", dtype, list(x.shape))], [_vinfo("y", "float32", None)],
                    inits)
    want = sess.run(None, {"x": x})[0]
    params = {"scale": scale, "zero_point": zp.astype(np.int64), "axis": 1}
    _check("DequantizeLinear", _run_program("dequantize", params, {"x": x}, "float32"), want)
