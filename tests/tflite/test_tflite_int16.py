"""LiteRT's 16x8 mode (int16 activations, int8 weights, int64 bias) and the other kernels of
mrq/lower_tflite16.py, as single-op models written with tflite_builder, run by mrq (import ->
TFLite-exact lowering -> simulator) on both TFLite profiles and compared with

* LiteRT: ``tflite-int8`` vs ``OpResolverType.BUILTIN_REF``, ``litert-default`` vs the default
  interpreter (XNNPACK takes none of the int16 ops: TFLite's optimized kernels run them);
* the numpy reference of those kernels (tests/reference/int16_ref.py), which imports neither mrq
  nor the simulator.

Inputs: the extreme codes (-32768, -32767, 32767, 0, +-1) in every row, uniform codes, and codes
around 0. Expected: 0 mismatching elements. Plus the kernels on their own against the reference
(random and extreme values), the SEANet integration models of tflite-micro, and the one-line
errors (int16 with a non-zero zero point).
"""
from __future__ import annotations

import os
import pathlib
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from tflite_builder import ModelBuilder
from tflite_helpers import PROFILE_FLAVOUR, compare_rows, litert, litert_run, mrq_run

from tests.reference import int16_ref

PROFILES = ("tflite-int8", "litert-default")
BATCH = 3
SEANET = "/work/shared/models/tflite_zoo/tflm_integration_int16/tfmicro_seanet"
DS_CNN = "/work/shared/models/tflite_zoo/mlzoo/ds_cnn_small_int16.tflite"
EXTREMES16 = np.array([-32768, -32767, 32767, 0, 1, -1, 32766, -2], np.int64)


def _q(b, name, shape, scale, dtype="int16", data=None, qdim=0, zp=None):
    scale = np.atleast_1d(np.asarray(scale, np.float32))
    zero = [0] * scale.size if zp is None else zp
    return b.tensor(name, shape, dtype, scale=scale, zero_point=zero, data=data,
                    quantized_dimension=qdim)


# ------------------------------------------------------------------------------------- models
def conv16(seed=1, padding="SAME", stride=1, act="NONE", hw=(6, 7), cin=3, cout=4, k=3,
           bias_dtype="int64"):
    r = np.random.default_rng(seed)
    b = ModelBuilder()
    x = _q(b, "x", [1, *hw, cin], 0.0009)
    w_scale = r.uniform(0.004, 0.02, cout).astype(np.float32)
    w = _q(b, "w", [cout, k, k, cin], w_scale, "int8", r.integers(-127, 128, (cout, k, k, cin)))
    bias = _q(b, "b", [cout], np.float32(0.0009) * w_scale, bias_dtype,
              r.integers(-300000, 300000, cout))
    out_hw = [-(-d // stride) if padding == "SAME" else (d - k) // stride + 1 for d in hw]
    y = _q(b, "y", [1, *out_hw, cout], 0.0011)
    b.op("CONV_2D", [x, w, bias], [y], options=("Conv2DOptions", {
        "padding": padding, "stride_w": stride, "stride_h": stride, "fused_activation_function": act}))
    return b.finish([x], [y])


def dwconv16(seed=2, dm=2, act="RELU6"):
    r = np.random.default_rng(seed)
    b = ModelBuilder()
    cin = 3
    m = cin * dm
    x = _q(b, "x", [1, 5, 6, cin], 0.0005)
    w_scale = r.uniform(0.004, 0.03, m).astype(np.float32)
    w = _q(b, "w", [1, 3, 3, m], w_scale, "int8", r.integers(-127, 128, (1, 3, 3, m)), qdim=3)
    bias = _q(b, "b", [m], np.float32(0.0005) * w_scale, "int64", r.integers(-90000, 90000, m))
    y = _q(b, "y", [1, 5, 6, m], 0.0004)
    b.op("DEPTHWISE_CONV_2D", [x, w, bias], [y], options=("DepthwiseConv2DOptions", {
        "padding": "SAME", "stride_w": 1, "stride_h": 1, "depth_multiplier": dm, "fused_activation_function": act}))
    return b.finish([x], [y])


def fc16(seed=3, per_channel=False):
    r = np.random.default_rng(seed)
    b = ModelBuilder()
    x = _q(b, "x", [1, 24], 0.0007)
    w_scale = r.uniform(0.004, 0.02, 5).astype(np.float32) if per_channel else np.float32(0.009)
    w = _q(b, "w", [5, 24], w_scale, "int8", r.integers(-127, 128, (5, 24)))
    bias = _q(b, "b", [5], np.float32(0.0007) * np.atleast_1d(w_scale), "int64",
              r.integers(-200000, 200000, 5))
    y = _q(b, "y", [1, 5], 0.002)
    b.op("FULLY_CONNECTED", [x, w, bias], [y], options=("FullyConnectedOptions", {}))
    return b.finish([x], [y])


def transpose_conv(seed=4, dtype="int16", padding="SAME", stride=2):
    r = np.random.default_rng(seed)
    b = ModelBuilder()
    cin, cout, k = 3, 4, 3
    s_in = 0.0009 if dtype == "int16" else 0.03
    zp_in, zp_out = (None, None) if dtype == "int16" else ([3], [-4])
    x = _q(b, "x", [1, 3, 4, cin], s_in, dtype, zp=zp_in)
    out_hw = [d * stride if padding == "SAME" else (d - 1) * stride + k for d in (3, 4)]
    shape = b.tensor("shape", [4], "int32", data=[1, *out_hw, cout])
    w_scale = r.uniform(0.004, 0.02, cout).astype(np.float32)
    w = _q(b, "w", [cout, k, k, cin], w_scale, "int8", r.integers(-127, 128, (cout, k, k, cin)))
    bias_dtype = "int64" if dtype == "int16" else "int32"
    bias = _q(b, "b", [cout], np.float32(s_in) * w_scale, bias_dtype, r.integers(-3000, 3000, cout))
    y = _q(b, "y", [1, *out_hw, cout], 0.0012 if dtype == "int16" else 0.05, dtype, zp=zp_out)
    b.op("TRANSPOSE_CONV", [shape, w, x, bias], [y], options=("TransposeConvOptions", {
        "padding": padding, "stride_w": stride, "stride_h": stride}))
    return b.finish([x], [y])


def binary16(op="ADD", broadcast=False, act="NONE", scales=(0.00061, 0.00043, 0.00077),
             dtype="int16"):
    b = ModelBuilder()
    zps = ([None] * 3) if dtype == "int16" else ([4], [-9], [2])
    a = _q(b, "a", [1, 3, 4, 5], scales[0], dtype, zp=zps[0])
    c = _q(b, "c", [1, 1, 1, 5] if broadcast else [1, 3, 4, 5], scales[1], dtype, zp=zps[1])
    y = _q(b, "y", [1, 3, 4, 5], scales[2], dtype, zp=zps[2])
    kind = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions"}[op]
    opts = {"fused_activation_function": act}
    if op != "MUL":
        opts["pot_scale_int16"] = False
    b.op(op, [a, c], [y], options=(kind, opts))
    return b.finish([a, c], [y])


def mul16():
    b = ModelBuilder()
    a = _q(b, "a", [1, 16, 40], 0.0011)
    c = _q(b, "c", [1, 16, 40], 0.0009)
    y = _q(b, "y", [1, 16, 40], 0.00003)
    b.op("MUL", [a, c], [y], options=("MulOptions", {}))
    return b.finish([a, c], [y])


def leaky_relu(dtype="int16", alpha=0.2, scales=None):
    b = ModelBuilder()
    zp = None if dtype == "int16" else ([5], [-3])
    s_in, s_out = scales or ((0.0008, 0.0006) if dtype == "int16" else (0.04, 0.03))
    x = _q(b, "x", [1, 16, 16], s_in, dtype, zp=zp and zp[0])
    y = _q(b, "y", [1, 16, 16], s_out, dtype, zp=zp and zp[1])
    b.op("LEAKY_RELU", [x], [y], options=("LeakyReluOptions", {"alpha": alpha}))
    return b.finish([x], [y])


def pool16(op="AVERAGE_POOL_2D", padding="SAME"):
    b = ModelBuilder()
    x = _q(b, "x", [1, 5, 6, 3], 0.0008)
    out_hw = [-(-5 // 2), -(-6 // 2)] if padding == "SAME" else [2, 2]
    y = _q(b, "y", [1, *out_hw, 3], 0.0008)
    b.op(op, [x], [y], options=("Pool2DOptions", {
        "padding": padding, "stride_w": 2, "stride_h": 2, "filter_width": 3, "filter_height": 3}))
    return b.finish([x], [y])


def softmax16(beta=1.0, scale=0.0018):
    b = ModelBuilder()
    x = _q(b, "x", [1, 2, 13], scale)
    y = _q(b, "y", [1, 2, 13], 1.0 / 32768)
    b.op("SOFTMAX", [x], [y], options=("SoftmaxOptions", {"beta": beta}))
    return b.finish([x], [y])


def logistic16(scale=0.0011):
    b = ModelBuilder()
    x = _q(b, "x", [1, 8, 32], scale)
    y = _q(b, "y", [1, 8, 32], 1.0 / 32768)
    b.op("LOGISTIC", [x], [y])
    return b.finish([x], [y])


def tanh16(scale=0.0011):
    b = ModelBuilder()
    x = _q(b, "x", [1, 8, 32], scale)
    y = _q(b, "y", [1, 8, 32], 1.0 / 32768)
    b.op("TANH", [x], [y])
    return b.finish([x], [y])


def mean16(out_scale=0.0013):
    b = ModelBuilder()
    x = _q(b, "x", [1, 5, 6, 8], 0.0008)
    ax = b.tensor("ax", [2], "int32", data=[1, 2])
    y = _q(b, "y", [1, 8], out_scale)
    b.op("MEAN", [x, ax], [y], options=("ReducerOptions", {"keep_dims": False}))
    return b.finish([x], [y])


def pad16(v2=False):
    b = ModelBuilder()
    x = _q(b, "x", [1, 3, 4, 2], 0.0008)
    p = b.tensor("p", [4, 2], "int32", data=[[0, 0], [1, 2], [0, 1], [0, 0]])
    y = _q(b, "y", [1, 6, 5, 2], 0.0008)
    ins = [x, p]
    if v2:
        ins.append(_q(b, "v", [1], 0.0008, data=[-1234]))
    b.op("PADV2" if v2 else "PAD", ins, [y])
    return b.finish([x], [y])


def reshape16():
    b = ModelBuilder()
    x = _q(b, "x", [1, 3, 4, 2], 0.0008)
    s = b.tensor("s", [2], "int32", data=[1, 24])
    y = _q(b, "y", [1, 24], 0.0008)
    b.op("RESHAPE", [x, s], [y], options=("ReshapeOptions", {"new_shape": [1, 24]}))
    return b.finish([x], [y])


def quantize(src="int16", dst="int8", ratio=1.7):
    b = ModelBuilder()
    scales = {"int16": 0.0007, "int8": 0.05, "int32": 1.49e-7}
    zps = {"int16": None, "int8": [-6], "int32": None}
    x = _q(b, "x", [1, 5, 7], scales[src], src, zp=zps[src])
    y = _q(b, "y", [1, 5, 7], scales[dst] * (ratio if src == dst else 1.0), dst, zp=zps[dst])
    b.op("QUANTIZE", [x], [y])
    return b.finish([x], [y])


CASES = {
    "conv16_same_s1": lambda: conv16(),
    "conv16_valid_s2_relu": lambda: conv16(seed=5, padding="VALID", stride=2, act="RELU"),
    "dwconv16_dm2_relu6": lambda: dwconv16(),
    "fc16_per_tensor": lambda: fc16(),
    "fc16_per_channel": lambda: fc16(seed=7, per_channel=True),
    "transpose_conv16_same_s2": lambda: transpose_conv(),
    "transpose_conv16_valid_s1": lambda: transpose_conv(seed=8, padding="VALID", stride=1),
    "transpose_conv8_same_s2": lambda: transpose_conv(seed=9, dtype="int8"),
    "add16": lambda: binary16("ADD"),
    "add16_broadcast_relu": lambda: binary16("ADD", True, "RELU"),
    "add16_ties": lambda: binary16("ADD", scales=(2.0 ** -11, 2.0 ** -11, 2.0 ** -10)),
    "sub16": lambda: binary16("SUB"),
    "sub16_broadcast": lambda: binary16("SUB", True),
    "sub8_broadcast": lambda: binary16("SUB", True, scales=(0.05, 0.03, 0.06), dtype="int8"),
    "mul16": mul16,
    "leaky_relu16": lambda: leaky_relu(),
    "leaky_relu16_ties": lambda: leaky_relu(alpha=0.25, scales=(2.0 ** -12, 2.0 ** -11)),
    "leaky_relu8": lambda: leaky_relu("int8", 0.3),
    "avgpool16_same": lambda: pool16(),
    "maxpool16_valid": lambda: pool16("MAX_POOL_2D", "VALID"),
    "softmax16": lambda: softmax16(),
    "softmax16_beta": lambda: softmax16(0.6, 0.0041),
    "logistic16": lambda: logistic16(),
    "logistic16_small_scale": lambda: logistic16(0.00009),
    "mean16": lambda: mean16(),
    "pad16": lambda: pad16(),
    "padv2_16": lambda: pad16(True),
    "reshape16": reshape16,
    "quantize16_to_8": lambda: quantize("int16", "int8"),
    "quantize8_to_16": lambda: quantize("int8", "int16"),
    "quantize16_to_16": lambda: quantize("int16", "int16"),
    "quantize16_to_16_ties": lambda: quantize("int16", "int16", ratio=4.0),
    "quantize16_to_32": lambda: quantize("int16", "int32"),
    "quantize32_to_16": lambda: quantize("int32", "int16"),
}


def _inputs(model: bytes, seed: int) -> dict:
    """BATCH rows per graph input: extreme codes first in every row, then uniform codes (row 0)
    or codes around 0 (other rows)."""
    from mrq.tflite_import import import_tflite_bytes
    graph = import_tflite_bytes(model)
    r = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        info = np.iinfo(np.dtype(t.dtype))
        shape = (BATCH,) + tuple(t.shape[1:])
        arr = np.empty(shape, np.int64)
        arr[0] = r.integers(info.min, int(info.max) + 1, shape[1:])
        arr[1:] = np.clip(r.normal(0, (int(info.max) - int(info.min)) / 40, (BATCH - 1,) + shape[1:]),
                          info.min, info.max)
        flat = arr.reshape(BATCH, -1)
        ext = np.clip(EXTREMES16, info.min, info.max)[: flat.shape[1]]
        flat[:, : ext.size] = ext
        feeds[name] = flat.reshape(shape).astype(t.dtype)
    return feeds


# Cases that share kernel compilations run in one test (one worker compiles them once).
_FAMILY_OF = {"dwconv": "conv", "sub": "add", "padv": "pad", "reshape": "pad", "maxpool": "pool",
              "avgpool": "pool", "mean": "pool"}
FAMILIES = {}
for _case in CASES:
    _prefix = _case.split("_")[0].rstrip("0123456789")
    FAMILIES.setdefault(_FAMILY_OF.get(_prefix, _prefix), []).append(_case)


def _check(counts: dict, graph):
    assert counts, "no tensor compared"
    assert set(graph.outputs) <= set(counts), f"outputs not compared: {set(graph.outputs) - set(counts)}"
    bad = {k: v for k, v in counts.items() if v[0]}
    assert not bad, f"mismatching elements (tensor: [mismatches, elements]): {bad}"


def _reference_rows(model: bytes, feeds: dict, profile: str) -> list[dict]:
    from mrq.lower_tflite16 import SIGMOID_TABLE_UINT16
    interp = int16_ref.Interpreter(model, flavour=PROFILE_FLAVOUR[profile])
    interp.sigmoid_table = SIGMOID_TABLE_UINT16
    return [interp.run({k: v[i:i + 1] for k, v in feeds.items()}) for i in range(BATCH)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_int16_ops_vs_litert_and_reference(family):
    """Every case of the family on both profiles (they share every kernel compilation)."""
    for case in FAMILIES[family]:
        _check_case(case)


def _check_case(case):
    model = CASES[case]()
    feeds = _inputs(model, zlib.crc32(case.encode()) % 1000)
    for profile in PROFILES:
        graph, outputs, trace = mrq_run(model, profile, feeds)
        _check(compare_rows(trace, _reference_rows(model, feeds, profile)), graph)
        if litert() is not None:
            rows = litert_run(model, feeds, profile, preserve_all=True)
            _check(compare_rows(trace, rows), graph)
            for name, arr in outputs.items():
                assert arr.dtype == rows[0][name].dtype and arr.shape[1:] == rows[0][name].shape[1:]


@pytest.mark.parametrize("scale", [0.0011, 0.00009, 1.0 / 4096])
def test_int16_tanh_vs_litert(scale):
    """int16 TANH (LiteRT's interpolated sigmoid table with TanhPrepare's input scaling, and the
    power-of-two input-scale path at 1/4096) on both profiles, every tensor."""
    if litert() is None:
        pytest.skip("LiteRT is not installed")
    from mrq.errors import UnsupportedOpError
    model = tanh16(scale)
    feeds = _inputs(model, 7)
    for profile in PROFILES:
        if scale == 1.0 / 4096 and profile == "litert-default":
            # LiteRT's optimized gemmlowp path for power-of-two scales: refused, not guessed
            with pytest.raises(UnsupportedOpError, match="power-of-two"):
                mrq_run(model, profile, feeds)
            continue
        graph, outputs, trace = mrq_run(model, profile, feeds)
        _check(compare_rows(trace, litert_run(model, feeds, profile, preserve_all=True)), graph)


# ------------------------------------------------------------------------------------- kernels
def _codes(r, n, lo=-32768, hi=32767):
    """Random codes with the extremes and values around 0 mixed in."""
    out = r.integers(lo, hi + 1, n)
    out[: EXTREMES16.size] = np.clip(EXTREMES16, lo, hi)
    out[EXTREMES16.size: 2 * EXTREMES16.size] = r.integers(-3, 4, EXTREMES16.size)
    return out


def test_add_sub_kernel_vs_reference():
    from simulator.kernels.int16_ops import add_sub_tflite
    r = np.random.default_rng(11)
    for trial in range(6):
        a = _codes(r, 400).astype(np.int16).reshape(4, 100)
        b = _codes(r, 100).astype(np.int16)            # broadcast along the rows
        sa, sb, so = (float(np.float32(v)) for v in r.uniform(1e-4, 2e-3, 3))
        if trial == 0:
            sa, sb, so = 2.0 ** -11, 2.0 ** -11, 2.0 ** -10    # every odd sum is a tie
        tm = 2 * max(sa, sb)
        (ma, ea), (mb, eb) = int16_ref.quantize_multiplier(sa / tm), int16_ref.quantize_multiplier(sb / tm)
        mo, eo = int16_ref.quantize_multiplier(tm / ((1 << 15) * so))
        for subtract in (False, True):
            for single in (False, True):
                got, _ = add_sub_tflite(a, b, subtract=subtract, left_shift=15, multiplier_a=ma,
                                        shift_a=ea, multiplier_b=mb, shift_b=eb,
                                        multiplier_out=mo, shift_out=eo, zero_point_a=0,
                                        zero_point_b=0, zero_point_out=0, out_min=-32768,
                                        out_max=32767, out_dtype="int16",
                                        input_rounding="single" if single else "double")
                scale = int16_ref.mbqm_single if single else int16_ref.mbqm32
                xa, xb = a.astype(np.int64) << 15, b.astype(np.int64) << 15
                want = int16_ref.mbqm32(int16_ref.wrap(scale(xa, ma, ea) + scale(xb, -mb if subtract else mb, eb), 32),
                                        mo, eo)
                np.testing.assert_array_equal(got, np.clip(want, -32768, 32767))


def test_sigmoid_table_is_litert_s():
    """The copied table: sigmoid(i / 24) in Q0.16 within 1.2 units (its generator is not
    public), monotone, with LiteRT's end points."""
    from mrq.lower_tflite16 import SIGMOID_TABLE_UINT16 as t
    exact = 65536.0 / (1.0 + np.exp(-np.arange(256) / 24.0))
    assert t.shape == (256,) and t[0] == 32768 and t[1] == 33451 and t[255] == 65535
    assert np.all(np.abs(t - exact) <= 1.2) and np.all(np.diff(t) >= 0)


def test_lut16_and_interpolated_lookup_vs_reference():
    from simulator.kernels.int16_ops import lut16, lut_lookup_int16
    r = np.random.default_rng(12)
    table = r.integers(-32768, 32768, 65536).astype(np.int16)
    x = _codes(r, 3000).astype(np.int16)
    np.testing.assert_array_equal(lut16(x, table=table, out_dtype="int16"), table[x.astype(np.int64) + 32768])
    lut = r.integers(-32768, 32768, 513).astype(np.int16)
    got = np.array([lut_lookup_int16(int(v), lut) for v in x])
    np.testing.assert_array_equal(got, int16_ref.lut_lookup(x, lut.astype(np.int64)))


def test_softmax_kernel_vs_reference():
    from mrq.lower_tflite16 import tflite_softmax_int16_params
    from simulator.kernels.int16_ops import softmax_int16
    r = np.random.default_rng(13)
    x = np.stack([_codes(r, 17) for _ in range(40)]).astype(np.int16)
    x[1] = 32767            # all equal: the sum is n * exp(0)
    x[2, :] = -32768
    x[2, 5] = 32767          # one dominant entry
    for scale, beta in ((0.0018, 1.0), (0.0004, 0.7), (2.0 ** -9, 1.0)):
        p = tflite_softmax_int16_params(scale, beta)
        ref_exp = int16_ref.lut_populate_int16(np.exp, 10.0 / 65535, 32767, 2.0 / 65535, 0)
        np.testing.assert_array_equal(p["exp_lut"], ref_exp)
        got = softmax_int16(x, **p)
        np.testing.assert_array_equal(got, int16_ref.softmax_int16(x, scale, beta))


def test_transpose_conv_kernel_vs_reference():
    """Scatter accumulation against the dense formula, int64 and wrapping int32."""
    from simulator.kernels.int16_ops import transpose_conv_acc
    r = np.random.default_rng(14)
    x = _codes(r, 2 * 3 * 4 * 3).reshape(2, 3, 4, 3).astype(np.int16)
    w = r.integers(-127, 128, (5, 3, 3, 2))            # [M, C, KH, KW]
    bias = r.integers(-2**40, 2**40, 5)
    for strides, pads, out_hw in (((2, 2), (1, 0), (6, 7)), ((1, 2), (0, 1), (5, 8))):
        full = np.zeros((2, 2 * 3 + 3, 2 * 4 + 2, 5), np.int64)
        for iy in range(3):
            for ix in range(4):
                oy, ox = iy * strides[0], ix * strides[1]
                full[:, oy: oy + 3, ox: ox + 2, :] += np.einsum("nc,mcij->nijm", x[:, iy, ix, :].astype(np.int64), w)
        want = full[:, pads[0]: pads[0] + out_hw[0], pads[1]: pads[1] + out_hw[1], :] + bias
        for bits in (64, 32):
            got = transpose_conv_acc(x, w, bias=bias, input_zero_point=0, strides=strides, pads=pads,
                                     output_size=out_hw, layout="NHWC", acc_bits=bits)
            np.testing.assert_array_equal(got, int16_ref.wrap(want, bits))
        nchw = transpose_conv_acc(x.transpose(0, 3, 1, 2), w, bias=bias, input_zero_point=0,
                                  strides=strides, pads=pads, output_size=out_hw, layout="NCHW",
                                  acc_bits=64)
        np.testing.assert_array_equal(nchw, want.transpose(0, 3, 1, 2))


def test_16x8_requantization_vs_reference():
    """The conv requantization the lowering emits (``fixed``, half up) equals LiteRT's int64
    MultiplyByQuantizedMultiplier, including 0x7FFF0000-and-above multipliers and ties, for
    every accumulator whose result fits int32 (LiteRT truncates wider results to int32, the
    simulator saturates them: outputs 65536 times outside the int16 range either way)."""
    from mrq.lower_tflite16 import tflite_16x8_multipliers
    from simulator.kernels.quant import requantize
    r = np.random.default_rng(15)
    reals = np.concatenate([r.uniform(1e-5, 0.9, 30), [0.5, 0.25, 0.99999, 2.0 ** -20]])
    for real in reals:
        bound = min(int(2**30 / real), 2**46)
        acc = np.concatenate([r.integers(-bound, bound, 200), [0, 1, -1, bound, -bound],
                              np.arange(-40, 40) * (1 << 14)])   # multiples of 2**14: many ties
        m, e = int16_ref.quantize_multiplier(float(real))
        mr, shift = tflite_16x8_multipliers(np.array([real]))
        got, _ = requantize(acc, rq_mode="fixed", rq_multiplier=mr, rq_shift=shift,
                            rq_rounding="half_up", out_dtype="int32")
        np.testing.assert_array_equal(got, int16_ref.mbqm64_reduced(acc, m, e))


# ------------------------------------------------------------------------------------- models
@pytest.mark.skipif(litert() is None or not os.path.isdir(SEANET),
                    reason="needs ai_edge_litert and the tflite-micro SEANet models")
@pytest.mark.parametrize("name", ["conv_conv3", "add_add10", "sub_sub0", "leaky_relu_leaky_relu5",
                                  "transpose_conv_transpose_conv2", "quantize_quantize0",
                                  "quantize_quantize1", "pad_pad4"])
def test_seanet_models_bit_exact(name):
    """The tflite-micro int16 integration models (one op each; the second SUB input and the
    TRANSPOSE_CONV output shape are graph inputs there) on both profiles."""
    from mrq.tflite_import import import_tflite
    path = os.path.join(SEANET, name + ".tflite")
    graph = import_tflite(path)
    r = np.random.default_rng(zlib.crc32(name.encode()))
    for profile in PROFILES:
        it = _interpreter(path, profile)
        for row in range(2):
            feeds = {}
            for d in it.get_input_details():
                if d["name"] not in graph.inputs and d["dtype"] == np.int32 and not d["quantization"][0]:
                    arr = np.array([1, *graph.tensors[graph.outputs[0]].shape[1:]], np.int32)
                else:
                    info = np.iinfo(d["dtype"])
                    arr = (r.integers(info.min, int(info.max) + 1, d["shape"]) if row == 0 else
                           np.clip(r.normal(0, 3000, d["shape"]), info.min, info.max)).astype(d["dtype"])
                    key = d["name"] or f"tensor_{d['index']}"
                    # an input without a batch dimension (the SUB's [64]) is [batch, 64] in mrq
                    feeds[key] = arr if arr.ndim == len(graph.tensors[key].shape) else arr[None]
                it.set_tensor(d["index"], arr)
            it.invoke()
            _, outputs, _ = mrq_run(graph, profile, feeds)
            for d in it.get_output_details():
                want = it.get_tensor(d["index"])
                got = outputs[d["name"] or f"tensor_{d['index']}"].reshape(want.shape)
                assert np.array_equal(got, want), f"{profile}: {int((got != want).sum())} of {want.size} differ"


def _interpreter(path, profile):
    import warnings
    lib = litert()
    resolver = {"tflite-int8": lib.OpResolverType.BUILTIN_REF, "litert-default": lib.OpResolverType.AUTO}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = lib.Interpreter(model_path=path, experimental_op_resolver_type=resolver[profile])
    it.allocate_tensors()
    return it


@pytest.mark.skipif(litert() is None or not os.path.exists(DS_CNN), reason="needs the int16 DS-CNN")
def test_ds_cnn_int16_every_tensor_bit_exact():
    """ARM ML-zoo's int16 DS-CNN (conv, depthwise, average pool, FC, int16 softmax): every
    intermediate and the output, both profiles."""
    from mrq.tflite_import import import_tflite
    graph = import_tflite(DS_CNN)
    name = graph.inputs[0]
    r = np.random.default_rng(16)
    x = np.concatenate([r.integers(-32768, 32768, (1, 490)), np.clip(r.normal(0, 4000, (1, 490)), -32768, 32767)])
    feeds = {name: x.astype(np.int16)}
    for profile in PROFILES:
        _, _, trace = mrq_run(graph, profile, feeds)
        counts = compare_rows(trace, litert_run(DS_CNN, feeds, profile, preserve_all=True))
        assert len(counts) >= 12
        _check(counts, graph)


# ------------------------------------------------------------------------------------- errors
def test_int16_nonzero_zero_point_is_a_one_line_error(tmp_path, capsys):
    b = ModelBuilder()
    x = _q(b, "x", [1, 4], 0.001, zp=[3])
    y = _q(b, "y", [1, 4], 0.001)
    b.op("LEAKY_RELU", [x], [y], options=("LeakyReluOptions", {"alpha": 0.1}))
    model = tmp_path / "zp.tflite"
    model.write_bytes(b.finish([x], [y]))
    feeds = tmp_path / "in.npz"
    np.savez(feeds, x=np.zeros((1, 4), np.int16))
    from mrq.cli import main
    code = main(["sim", str(model), "--profile", "tflite-int8", "--inputs", str(feeds),
                 "--out", str(tmp_path / "o.npz"), "--no-fidelity"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "operator 0 (LEAKY_RELU)" in lines[0] and "zero point 3" in lines[0]
