"""Every supported TFLite operator, as a small single-op model written with tflite_builder, run by
mrq (import -> TFLite-exact lowering -> simulator) on both TFLite profiles and compared with

* the numpy reference of TFLite's kernels (tests/reference/tflite_ref.py) - always;
* LiteRT: ``tflite-int8`` vs ``OpResolverType.BUILTIN_REF``, ``litert-default`` vs the default
  interpreter (XNNPACK delegate) - when ai_edge_litert is installed.

Expected: 0 mismatching elements in every output.
"""
from __future__ import annotations

import pathlib
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from tests.reference import tflite_ref  # noqa: E402
from tflite_builder import ModelBuilder  # noqa: E402
from tflite_helpers import PROFILE_FLAVOUR, compare_rows, litert, litert_run, mrq_run  # noqa: E402

PROFILES = ("tflite-int8", "litert-default")
BATCH = 4


def _q(b, name, shape, scale, zp, dtype="int8", data=None, qdim=0):
    return b.tensor(name, shape, dtype, scale=scale, zero_point=zp, data=data, quantized_dimension=qdim)


def _rng(seed):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------- models
def conv(seed, padding, stride, dilation, act, per_channel=True, hw=(8, 8), cin=3, cout=4, k=3):
    r = _rng(seed)
    b = ModelBuilder()
    x = _q(b, "x", [1, *hw, cin], 0.05, 3)
    w_scale = np.asarray(r.uniform(0.002, 0.02, cout) if per_channel else [0.01], np.float32)
    w = _q(b, "w", [cout, k, k, cin], w_scale, [0] * len(w_scale),
           data=r.integers(-127, 128, (cout, k, k, cin)), qdim=0)
    bias = b.tensor("b", [cout], "int32", scale=np.float32(0.05) * w_scale, zero_point=[0] * len(w_scale),
                    data=r.integers(-3000, 3000, cout))
    eff = (k - 1) * dilation + 1
    out_hw = [(-(-d // stride)) if padding == "SAME" else (d - eff) // stride + 1 for d in hw]
    y = _q(b, "y", [1, *out_hw, cout], 0.07, -5)
    b.op("CONV_2D", [x, w, bias], [y], options=("Conv2DOptions", dict(
        padding=padding, stride_w=stride, stride_h=stride, dilation_w_factor=dilation,
        dilation_h_factor=dilation, fused_activation_function=act)))
    return b.finish([x], [y])


def dwconv(seed, padding, stride, dm, act, hw=(7, 7), cin=4, k=3):
    r = _rng(seed)
    b = ModelBuilder()
    x = _q(b, "x", [1, *hw, cin], 0.04, -7)
    m = cin * dm
    w_scale = r.uniform(0.003, 0.03, m).astype(np.float32)
    w = _q(b, "w", [1, k, k, m], w_scale, [0] * m, data=r.integers(-127, 128, (1, k, k, m)), qdim=3)
    bias = b.tensor("b", [m], "int32", scale=np.float32(0.04) * w_scale, zero_point=[0] * m,
                    data=r.integers(-2000, 2000, m))
    out_hw = [(-(-d // stride)) if padding == "SAME" else (d - k) // stride + 1 for d in hw]
    y = _q(b, "y", [1, *out_hw, m], 0.05, 2)
    b.op("DEPTHWISE_CONV_2D", [x, w, bias], [y], options=("DepthwiseConv2DOptions", dict(
        padding=padding, stride_w=stride, stride_h=stride, depth_multiplier=dm,
        fused_activation_function=act)))
    return b.finish([x], [y])


def fc(seed, in_shape, n, act, bias=True, keep=False):
    r = _rng(seed)
    b = ModelBuilder()
    x = _q(b, "x", in_shape, 0.06, 11)
    k = in_shape[-1] if keep else int(np.prod(in_shape[1:]))
    w = _q(b, "w", [n, k], 0.008, 0, data=r.integers(-127, 128, (n, k)))
    ins = [x, w]
    if bias:
        ins.append(b.tensor("b", [n], "int32", scale=np.float32(0.06 * 0.008), zero_point=0,
                            data=r.integers(-4000, 4000, n)))
    out_shape = list(in_shape[:-1]) + [n] if keep else [1, n]
    y = _q(b, "y", out_shape, 0.09, -20)
    b.op("FULLY_CONNECTED", ins, [y], options=("FullyConnectedOptions", dict(
        fused_activation_function=act, keep_num_dims=keep)))
    return b.finish([x], [y])


def binary(op, shape_b, act, scales=(0.03, 0.05, 0.06), dtype="int8"):
    b = ModelBuilder()
    shift = 128 if dtype == "uint8" else 0
    x = _q(b, "a", [1, 5, 6, 8], scales[0], -10 + shift, dtype=dtype)
    y = _q(b, "b", shape_b, scales[1], 7 + shift, dtype=dtype)
    o = _q(b, "o", [1, 5, 6, 8], scales[2], 3 + shift, dtype=dtype)
    kind = "AddOptions" if op == "ADD" else "MulOptions"
    b.op(op, [x, y], [o], options=(kind, dict(fused_activation_function=act)))
    return b.finish([x, y], [o])


def pool(op, padding, act, stride=2, k=3):
    b = ModelBuilder()
    x = _q(b, "x", [1, 7, 9, 4], 0.05, 3)
    out = [(-(-d // stride)) if padding == "SAME" else (d - k) // stride + 1 for d in (7, 9)]
    y = _q(b, "y", [1, *out, 4], 0.05, 3)
    b.op(op, [x], [y], options=("Pool2DOptions", dict(
        padding=padding, stride_w=stride, stride_h=stride, filter_width=k, filter_height=k,
        fused_activation_function=act)))
    return b.finish([x], [y])


def mean(axes, keep):
    b = ModelBuilder()
    shape = [1, 5, 6, 8]
    x = _q(b, "x", shape, 0.05, -3)
    ax = b.tensor("axes", [len(axes)], "int32", data=np.array(axes, np.int32))
    red = {a % 4 for a in axes}
    out = [1 if d in red else shape[d] for d in range(4)] if keep else [shape[d] for d in range(4) if d not in red]
    y = _q(b, "y", out, 0.02, 9)
    b.op("MEAN", [x, ax], [y], options=("ReducerOptions", dict(keep_dims=keep)))
    return b.finish([x], [y])


def reshape():
    b = ModelBuilder()
    x = _q(b, "x", [1, 2, 3, 4], 0.05, 1)
    s = b.tensor("shape", [2], "int32", data=np.array([1, 24], np.int32))
    y = _q(b, "y", [1, 24], 0.05, 1)
    b.op("RESHAPE", [x, s], [y], options=("ReshapeOptions", dict(new_shape=[1, 24])))
    return b.finish([x], [y])


def pad(v2=False):
    b = ModelBuilder()
    x = _q(b, "x", [1, 4, 5, 3], 0.05, 3)
    p = b.tensor("p", [4, 2], "int32", data=np.array([[0, 0], [1, 2], [2, 0], [0, 1]], np.int32))
    ins = [x, p]
    if v2:
        ins.append(_q(b, "v", [1], 0.05, 3, data=np.array([-20], np.int8)))
    y = _q(b, "y", [1, 7, 7, 4], 0.05, 3)
    b.op("PADV2" if v2 else "PAD", ins, [y])
    return b.finish([x], [y])


def concat(axis):
    b = ModelBuilder()
    x = _q(b, "x", [1, 4, 5, 3], 0.05, 3)
    y = _q(b, "y", [1, 4, 5, 2] if axis == 3 else [1, 2, 5, 3], 0.05, 3)
    out = [1, 4, 5, 5] if axis == 3 else [1, 6, 5, 3]
    o = _q(b, "o", out, 0.05, 3)
    b.op("CONCATENATION", [x, y], [o], options=("ConcatenationOptions", dict(axis=axis)))
    return b.finish([x, y], [o])


def softmax(beta, scale=0.08, dtype="int8"):
    b = ModelBuilder()
    x = _q(b, "x", [1, 3, 10], scale, 5 if dtype == "int8" else 133, dtype=dtype)
    y = _q(b, "y", [1, 3, 10], 1 / 256, -128 if dtype == "int8" else 0, dtype=dtype)
    b.op("SOFTMAX", [x], [y], options=("SoftmaxOptions", dict(beta=beta)))
    return b.finish([x], [y])


def logistic(scale=0.06, zp=-4):
    b = ModelBuilder()
    x = _q(b, "x", [1, 256], scale, zp)
    y = _q(b, "y", [1, 256], 1 / 256, -128)
    b.op("LOGISTIC", [x], [y])
    return b.finish([x], [y])


def quantize_float():
    b = ModelBuilder()
    x = b.tensor("x", [1, 64], "float32")
    y = _q(b, "y", [1, 64], 0.037, -5)
    b.op("QUANTIZE", [x], [y])
    return b.finish([x], [y])


def requantize(s_out=0.0123, z_out=7, in_dtype="int8", out_dtype="int8", z_in=-5):
    b = ModelBuilder()
    x = _q(b, "x", [1, 256], 0.037, z_in, dtype=in_dtype)
    y = _q(b, "y", [1, 256], s_out, z_out, dtype=out_dtype)
    b.op("QUANTIZE", [x], [y])
    return b.finish([x], [y])


def dequantize():
    b = ModelBuilder()
    x = _q(b, "x", [1, 64], 0.037, -5)
    y = b.tensor("y", [1, 64], "float32")
    b.op("DEQUANTIZE", [x], [y])
    return b.finish([x], [y])


def chain():
    """QUANTIZE -> CONV_2D -> PAD -> MAX_POOL_2D -> MEAN -> FULLY_CONNECTED -> LOGISTIC ->
    DEQUANTIZE: every intermediate is compared too."""
    r = _rng(7)
    b = ModelBuilder()
    xf = b.tensor("xf", [1, 6, 6, 2], "float32")
    x = _q(b, "x", [1, 6, 6, 2], 0.02, 1)
    b.op("QUANTIZE", [xf], [x])
    ws = r.uniform(0.005, 0.02, 5).astype(np.float32)
    w = _q(b, "w", [5, 3, 3, 2], ws, [0] * 5, data=r.integers(-127, 128, (5, 3, 3, 2)))
    bias = b.tensor("b", [5], "int32", scale=np.float32(0.02) * ws, zero_point=[0] * 5,
                    data=r.integers(-500, 500, 5))
    c = _q(b, "c", [1, 6, 6, 5], 0.03, -128)
    b.op("CONV_2D", [x, w, bias], [c], options=("Conv2DOptions", dict(
        padding="SAME", stride_w=1, stride_h=1, fused_activation_function="RELU")))
    p = b.tensor("pads", [4, 2], "int32", data=np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32))
    cp = _q(b, "cp", [1, 8, 8, 5], 0.03, -128)
    b.op("PAD", [c, p], [cp])
    mp = _q(b, "mp", [1, 4, 4, 5], 0.03, -128)
    b.op("MAX_POOL_2D", [cp], [mp], options=("Pool2DOptions", dict(
        padding="VALID", stride_w=2, stride_h=2, filter_width=2, filter_height=2)))
    ax = b.tensor("axes", [2], "int32", data=np.array([1, 2], np.int32))
    mn = _q(b, "mn", [1, 5], 0.01, -100)
    b.op("MEAN", [mp, ax], [mn], options=("ReducerOptions", dict(keep_dims=False)))
    fw = _q(b, "fw", [3, 5], 0.02, 0, data=r.integers(-127, 128, (3, 5)))
    fb = b.tensor("fb", [3], "int32", scale=np.float32(0.01 * 0.02), zero_point=0,
                  data=r.integers(-300, 300, 3))
    fo = _q(b, "fo", [1, 3], 0.05, 0)
    b.op("FULLY_CONNECTED", [mn, fw, fb], [fo], options=("FullyConnectedOptions", dict(
        fused_activation_function="NONE")))
    lg = _q(b, "lg", [1, 3], 1 / 256, -128)
    b.op("LOGISTIC", [fo], [lg])
    out = b.tensor("out", [1, 3], "float32")
    b.op("DEQUANTIZE", [lg], [out])
    return b.finish([xf], [out])


CASES = {
    "conv_same_relu_pc": lambda: conv(1, "SAME", 1, 1, "RELU"),
    "conv_valid_s2_relu6": lambda: conv(2, "VALID", 2, 1, "RELU6", per_channel=False, hw=(9, 9), cin=4),
    "conv_same_s2_dil2": lambda: conv(3, "SAME", 2, 2, "NONE", hw=(9, 10)),
    "conv_1x1_relu_n1_to_1": lambda: conv(4, "VALID", 1, 1, "RELU_N1_TO_1", k=1, cout=6),
    "dwconv_same_relu": lambda: dwconv(5, "SAME", 1, 1, "RELU"),
    "dwconv_dm2_valid_s2_relu6": lambda: dwconv(6, "VALID", 2, 2, "RELU6", hw=(8, 8), cin=3),
    "fc_relu": lambda: fc(7, [1, 32], 16, "RELU"),
    "fc_flatten_nobias": lambda: fc(8, [1, 2, 2, 8], 10, "NONE", bias=False),
    "fc_keep_num_dims": lambda: fc(9, [1, 3, 8], 5, "RELU6", keep=True),
    "add_relu": lambda: binary("ADD", [1, 5, 6, 8], "RELU"),
    "add_broadcast": lambda: binary("ADD", [1, 1, 1, 8], "NONE"),
    # uint8 ADD: XNNPACK's QU8 add under litert-default (its 21-bit multipliers, as for int8)
    "add_uint8": lambda: binary("ADD", [1, 5, 6, 8], "NONE", scales=(0.021, 0.0173, 0.0319), dtype="uint8"),
    "add_uint8_relu6": lambda: binary("ADD", [1, 1, 1, 8], "RELU6", scales=(0.2, 0.011, 0.06), dtype="uint8"),
    "add_relu6_wide_ratio": lambda: binary("ADD", [1, 5, 6, 8], "RELU6", scales=(0.2, 0.011, 0.06)),
    "mul": lambda: binary("MUL", [1, 5, 6, 8], "NONE"),
    "mul_relu6_broadcast": lambda: binary("MUL", [1, 1, 6, 8], "RELU6", scales=(0.3, 0.2, 0.5)),
    "avgpool_same": lambda: pool("AVERAGE_POOL_2D", "SAME", "NONE"),
    "avgpool_valid_relu": lambda: pool("AVERAGE_POOL_2D", "VALID", "RELU"),
    "maxpool_same_relu": lambda: pool("MAX_POOL_2D", "SAME", "RELU"),
    "maxpool_valid": lambda: pool("MAX_POOL_2D", "VALID", "NONE", stride=1, k=2),
    "mean_hw_keep": lambda: mean([1, 2], True),
    "mean_c": lambda: mean([-1], False),
    "mean_h_keep": lambda: mean([1], True),
    "mean_hwc": lambda: mean([1, 2, 3], False),
    "reshape": reshape,
    "pad": pad,
    "padv2": lambda: pad(v2=True),
    "concat_c": lambda: concat(3),
    "concat_h": lambda: concat(1),
    "softmax": lambda: softmax(1.0),
    "softmax_beta_half": lambda: softmax(0.5, scale=0.3),
    "softmax_uint8": lambda: softmax(1.0, scale=0.05, dtype="uint8"),
    "logistic": logistic,
    "logistic_wide": lambda: logistic(scale=0.25, zp=20),
    "quantize_float": quantize_float,
    "requantize": requantize,
    "requantize_up": lambda: requantize(0.11, -100),
    "requantize_tiny_ratio": lambda: requantize(20.0, 0),
    "requantize_u8_to_i8": lambda: requantize(0.02, -3, in_dtype="uint8", z_in=130),
    "requantize_i8_to_u8": lambda: requantize(0.05, 120, out_dtype="uint8"),
    "requantize_u8_to_u8": lambda: requantize(0.013, 200, in_dtype="uint8", out_dtype="uint8", z_in=77),
    "dequantize": dequantize,
    "chain": chain,
}


def _inputs(model: bytes, seed: int) -> dict:
    rm = tflite_ref.RefModel(model)
    r = _rng(seed)
    feeds = {}
    for i in rm.inputs:
        t = rm.tensors[i]
        shape = (BATCH,) + tuple(t["shape"][1:])
        if t["dtype"] == "float32":
            feeds[t["name"]] = (r.standard_normal(shape) * 2.0).astype(np.float32)
        else:
            info = np.iinfo(np.dtype(t["dtype"]))
            feeds[t["name"]] = r.integers(info.min, info.max + 1, size=shape).astype(t["dtype"])
    return feeds


def _profile(name):
    from mrq.hw_profile import load_profile
    return load_profile(name)


def _reference_rows(model: bytes, feeds: dict, profile: str) -> list[dict]:
    interp = tflite_ref.Interpreter(model, flavour=PROFILE_FLAVOUR[profile])
    rows = []
    for i in range(BATCH):
        rows.append(interp.run({k: v[i:i + 1] for k, v in feeds.items()}))
    return rows


@pytest.fixture(scope="module")
def built():
    return {name: fn() for name, fn in CASES.items()}


def _check(counts: dict, graph):
    assert counts, "no tensor compared"
    outputs = set(graph.outputs)
    assert outputs <= set(counts), f"outputs not compared: {outputs - set(counts)}"
    bad = {k: v for k, v in counts.items() if v[0]}
    assert not bad, f"mismatching elements (tensor: [mismatches, elements]): {bad}"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_op_vs_numpy_reference(built, case, profile):
    model = built[case]
    feeds = _inputs(model, zlib.crc32(case.encode()) % 1000)
    graph, outputs, trace = mrq_run(model, _profile(profile), feeds)
    rows = _reference_rows(model, feeds, profile)
    _check(compare_rows(trace, rows), graph)
    for name, arr in outputs.items():
        assert arr.dtype == rows[0][name].dtype and arr.shape[1:] == rows[0][name].shape[1:]


@pytest.mark.skipif(litert() is None, reason="ai_edge_litert is not installed")
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_op_vs_litert(built, case, profile):
    model = built[case]
    feeds = _inputs(model, zlib.crc32(case.encode()) % 1000)
    graph, outputs, trace = mrq_run(model, _profile(profile), feeds)
    rows = litert_run(model, feeds, profile, preserve_all=True)
    _check(compare_rows(trace, rows), graph)
    for name, arr in outputs.items():
        assert arr.dtype == rows[0][name].dtype and arr.shape[1:] == rows[0][name].shape[1:]
