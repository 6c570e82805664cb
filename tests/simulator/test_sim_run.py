"""simulator.run and the step kinds: feed checks, errors naming steps, traces, stats, and every
step kind through ``run`` against the references."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from simulator.errors import (  # noqa: E402
    AccumulatorOverflowError,
    KernelInputError,
    ProgramError,
)
from simulator.steps import KINDS  # noqa: E402
from simulator.program import Program, Step, TensorSpec  # noqa: E402
from simulator.run import RunResult, run  # noqa: E402
from tests.reference import conv_ref, eltwise_ref, gemm_ref, pool_ref, quant_ref  # noqa: E402

PROGRAM_KINDS = {"constant", "quantize", "dequantize", "conv", "gemm", "add", "mul", "rescale",
                 "clamp",
                 "maxpool", "avgpool", "global_avgpool", "concat", "reshape", "transpose",
                 "softmax"}


def one_step(kind, params, feeds, out_dtype, name="layer0"):
    inputs = tuple(TensorSpec(k, v.dtype.name, (None,) + v.shape[1:]) for k, v in feeds.items())
    step = Step(kind, name, tuple(feeds), ("y",), params)
    return Program(inputs, (TensorSpec("y", out_dtype, ()),), (step,))


def run1(kind, params, feeds, out_dtype):
    res = run(one_step(kind, params, feeds, out_dtype), feeds)
    return res.outputs["y"], res.stats["layer0"]


def test_registry_covers_every_program_kind():
    assert PROGRAM_KINDS <= set(KINDS)
    for name, kind in KINDS.items():
        assert kind.name == name and kind.execute.__name__ == f"execute_{name}"


# --- a small network through several steps, with trace and stats ----------------------------------
def _net():
    rng = np.random.default_rng(0)
    w1 = rng.integers(-128, 128, (4, 3, 3, 3)).astype(np.int8)
    b1 = rng.integers(-500, 500, 4).astype(np.int64)
    w2 = rng.integers(-128, 128, (4 * 3 * 3, 5)).astype(np.int8)
    steps = (
        Step("quantize", "q", ("x",), ("xq",), {"scale": np.array([0.05], np.float32),
                                                 "zero_point": np.array([3]), "out_dtype": "int8",
                                                 "out_min": -128, "out_max": 127}),
        Step("conv", "conv1", ("xq",), ("c1",), {
            "weight": w1, "weight_zero_point": np.zeros(4, np.int64), "bias": b1,
            "input_zero_point": 3, "pads": (1, 1, 1, 1), "acc_bits": 32, "acc_overflow": "wrap",
            "rq_mode": "fp32", "rq_multiplier": np.full(4, 0.002, np.float32),
            "rq_rounding": "half_even", "out_zero_point": -128, "out_min": -128, "out_max": 127,
            "out_dtype": "int8", "channel_axis": 1}),
        Step("maxpool", "pool1", ("c1",), ("p1",), {"kernel": (2, 2), "strides": (2, 2)}),
        Step("reshape", "flat", ("p1",), ("f",), {"shape": (0, -1)}),
        Step("gemm", "fc", ("f",), ("logits",), {
            "weight": w2, "weight_zero_point": np.zeros(5, np.int64), "bias": np.zeros(5, np.int64),
            "input_zero_point": -128, "acc_bits": 16, "acc_overflow": "saturate",
            "rq_mode": "fixed", "rq_multiplier": np.array([77], np.int64),
            "rq_shift": np.array([16]), "rq_rounding": "half_up", "out_zero_point": 0,
            "out_min": -128, "out_max": 127, "out_dtype": "int8"}),
    )
    program = Program((TensorSpec("x", "float32", (None, 3, 6, 6)),),
                      (TensorSpec("logits", "int8", (None, 5)),), steps)
    return program, w1, b1, w2


def test_network_matches_composed_references_with_trace_and_stats():
    program, w1, b1, w2 = _net()
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32) * 4
    res = run(program, {"x": x}, trace=True)
    assert isinstance(res, RunResult)
    xq, sat_q = quant_ref.quantize(x, [0.05], [3], 0, "half_even", "divide", -128, 127, "int8")
    acc, _ = conv_ref.conv2d_acc(xq, w1, np.zeros(4), b1, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1,
                                 "NCHW", 32, "wrap")
    c1, sat_c = quant_ref.requantize(acc, "fp32", np.full(4, 0.002, np.float32), None,
                                     "half_even", -128, -128, 127, "int8", 1)
    p1 = pool_ref.maxpool(c1, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False)
    acc2, ovf = gemm_ref.gemm_acc(p1.reshape(2, -1), w2, np.zeros(5), None, -128, 16, "saturate")
    logits, sat_g = quant_ref.requantize(acc2, "fixed", [77], [16], "half_up", 0, -128, 127,
                                         "int8", -1)
    np.testing.assert_array_equal(res.trace["xq"], xq)
    np.testing.assert_array_equal(res.trace["c1"], c1)
    np.testing.assert_array_equal(res.trace["p1"], p1)
    np.testing.assert_array_equal(res.outputs["logits"], logits)
    assert set(res.trace) == {"xq", "c1", "p1", "f", "logits"}
    assert res.stats["q"] == {"acc_overflow": 0, "out_saturated": sat_q}
    assert res.stats["conv1"] == {"acc_overflow": 0, "out_saturated": sat_c}
    assert res.stats["fc"] == {"acc_overflow": ovf, "out_saturated": sat_g}
    assert res.stats["pool1"] == {"acc_overflow": 0, "out_saturated": 0}
    # no trace unless asked; the batch dimension is free
    res1 = run(program, {"x": x[:1]})
    assert res1.trace == {}
    np.testing.assert_array_equal(res1.outputs["logits"], logits[:1])


# --- errors ---------------------------------------------------------------------------------------
def test_feed_checks_name_the_input():
    program, *_ = _net()
    x = np.zeros((1, 3, 6, 6), np.float32)
    with pytest.raises(KernelInputError, match="'x' is missing"):
        run(program, {})
    with pytest.raises(KernelInputError, match="'x'.*dtype float32.*float64"):
        run(program, {"x": x.astype(np.float64)})
    with pytest.raises(KernelInputError, match=r"'x'.*shape \['N', 3, 6, 6\].*\[1, 3, 5, 6\]"):
        run(program, {"x": x[:, :, :5]})
    with pytest.raises(KernelInputError, match="unknown input"):
        run(program, {"x": x, "z": x})


def test_program_errors_name_the_step():
    x = np.zeros((1, 4), np.int8)
    with pytest.raises(ProgramError, match="'mystery'.*unknown step kind 'frobnicate'"):
        run(one_step("frobnicate", {}, {"x": x}, "int8", name="mystery"), {"x": x})
    with pytest.raises(ProgramError, match="'layer0'.*missing parameter 'out_max'"):
        run1("clamp", {"out_min": 0}, {"x": x}, "int8")
    with pytest.raises(ProgramError, match="'layer0'.*unknown mode"):
        run1("add", {"mode": "magic", "out_dtype": "int8"}, {"a": x, "b": x}, "int8")
    with pytest.raises(ProgramError, match="unknown mode 'tflite'"):
        run1("softmax", {"mode": "tflite", "axis": -1, "scale_in": np.float32(1),
                         "scale_out": np.float32(1), "out_dtype": "int8"}, {"x": x}, "int8")
    # typed parameters: a misspelt or misplaced parameter is an error, never silently ignored
    with pytest.raises(ProgramError, match="unknown parameter 'zero_point_out'.*'out_zero_point'"):
        run1("rescale", {"rq_mode": "shift", "out_dtype": "int8", "zero_point_out": 3},
             {"x": x}, "int8")
    with pytest.raises(ProgramError, match="'rounding' does not apply to mode 'ort_fma'"):
        run1("add", {"mode": "ort_fma", "scale_a": 1.0, "scale_b": 1.0, "scale_out": 1.0,
                     "rounding": "half_up", "out_dtype": "int8"}, {"a": x, "b": x}, "int8")
    with pytest.raises(ProgramError, match="missing parameter 'multiplier_a' .mode 'fixed'"):
        run1("add", {"mode": "fixed", "out_dtype": "int8"}, {"a": x, "b": x}, "int8")
    bad = Program((TensorSpec("x", "int8", (None, 4)),), (TensorSpec("y", "int8", ()),),
                  (Step("clamp", "c", ("nope",), ("y",), {"out_min": 0, "out_max": 1}),))
    with pytest.raises(ProgramError, match="'c'.*'nope'"):
        run(bad, {"x": x})
    with pytest.raises(ProgramError, match="'layer0'.*'shape' must be a tuple"):
        run1("reshape", {"shape": None}, {"x": x}, "int8")
    with pytest.raises(ProgramError, match=r"'layer0' \(clamp\): malformed parameter"):
        run1("clamp", {"out_min": "low", "out_max": 3}, {"x": x}, "int8")
    never = Program((TensorSpec("x", "int8", (None, 4)),), (TensorSpec("z", "int8", ()),), ())
    with pytest.raises(ProgramError, match="'z' is never produced"):
        run(never, {"x": x})


def test_kernel_errors_are_prefixed_with_the_step():
    x = np.full((1, 8, 1, 1), 127, np.int8)
    params = {"weight": np.full((1, 8, 1, 1), 127, np.int8), "acc_bits": 16,
              "acc_overflow": "error", "rq_mode": "shift", "rq_shift": np.array([8]),
              "out_dtype": "int8"}
    with pytest.raises(AccumulatorOverflowError, match=r"step 'layer0' \(conv\).*16-bit"):
        run1("conv", params, {"x": x}, "int8")
    with pytest.raises(KernelInputError, match=r"step 'layer0' \(conv\).*dtype"):
        run1("conv", params, {"x": x.astype(np.int32)}, "int8")


# --- every kind through run -----------------------------------------------------------------------
def _u8(rng, shape):
    return rng.integers(0, 256, shape).astype(np.uint8)


def test_conv_nhwc_per_channel_defaults_to_layout_channel_axis():
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (2, 5, 6, 4)).astype(np.int8)  # NHWC
    w = rng.integers(-128, 128, (6, 2, 3, 3)).astype(np.int8)
    mult = rng.uniform(1e-4, 1e-2, 6).astype(np.float32)
    params = {"layout": "NHWC", "weight": w, "weight_zero_point": np.zeros(6, np.int64),
              "bias": rng.integers(-999, 999, 6), "input_zero_point": -7, "strides": (2, 1),
              "pads": (1, 0, 1, 2), "group": 2, "acc_bits": 20, "acc_overflow": "saturate",
              "rq_mode": "fp32", "rq_multiplier": mult, "out_zero_point": 5, "out_dtype": "int8"}
    got, stats = run1("conv", params, {"x": x}, "int8")
    acc, ovf = conv_ref.conv2d_acc(x, w, np.zeros(6), params["bias"], -7, (2, 1), (1, 0, 1, 2),
                                   (1, 1), 2, "NHWC", 20, "saturate")
    want, sat = quant_ref.requantize(acc, "fp32", mult, None, "half_even", 5, -128, 127, "int8", 3)
    np.testing.assert_array_equal(got, want)
    assert stats == {"acc_overflow": ovf, "out_saturated": sat}


def test_add_modes_through_run():
    rng = np.random.default_rng(3)
    a, b = _u8(rng, (2, 3, 4)), _u8(rng, (1, 3, 1))
    base = {"zero_point_a": 128, "zero_point_b": 120, "out_min": 0, "out_max": 255,
            "out_dtype": "uint8"}
    got, _ = run1("add", dict(base, mode="ort_fma", scale_a=np.float32(0.5),
                              scale_b=np.float32(0.25), scale_out=np.float32(1.0),
                              out_zero_point=127), {"a": a, "b": b}, "uint8")
    want, _ = eltwise_ref.add_ort_fma(a, b, 0.5, 128, 0.25, 120, 1.0, 127, 0, 255, "uint8")
    np.testing.assert_array_equal(got, want)
    got, _ = run1("add", dict(base, mode="tflite", left_shift=20, multiplier_a=1073741824,
                              shift_a=0, multiplier_b=1073741824, shift_b=-1,
                              multiplier_out=1073741824, shift_out=-19, out_zero_point=127),
                  {"a": a, "b": b}, "uint8")
    want, _ = eltwise_ref.add_tflite(a, b, 20, 1073741824, 0, 1073741824, -1, 1073741824, -19,
                                     128, 120, 127, 0, 255, "uint8")
    np.testing.assert_array_equal(got, want)
    got, _ = run1("add", dict(base, mode="fixed", multiplier_a=2, multiplier_b=1, rq_mode="shift",
                              rq_shift=np.array([2]), rq_rounding="half_up", out_zero_point=127),
                  {"a": a, "b": b}, "uint8")
    want, _ = eltwise_ref.add_fixed(a, b, 128, 120, 2, 1, "shift", 2, "half_up", 127, 0, 255,
                                    "uint8")
    np.testing.assert_array_equal(got, want)
    got, _ = run1("add", dict(base, mode="float", scale_a=np.float32(0.5), scale_b=np.float32(0.25),
                              scale_out=np.float32(1.0), out_zero_point=127),
                  {"a": a, "b": b}, "uint8")
    want, _ = eltwise_ref.add_float(a, b, 0.5, 128, 0.25, 120, 1.0, 127, "half_even", 0, 255,
                                    "uint8")
    np.testing.assert_array_equal(got, want)


def test_mul_rescale_clamp_through_run():
    rng = np.random.default_rng(4)
    a, b = _u8(rng, (2, 6)), _u8(rng, (2, 6))
    got, _ = run1("mul", {"zero_point_a": 100, "zero_point_b": 3, "rq_mode": "double_q31",
                          "rq_multiplier": np.array([1518500250]), "rq_shift": np.array([45]),
                          "rq_rounding": "half_away", "out_zero_point": 9, "out_dtype": "uint8"},
                  {"a": a, "b": b}, "uint8")
    want, _ = eltwise_ref.mul(a, b, 100, 3, "double_q31", 1518500250, 45, "half_away", 9, 0, 255,
                              "uint8")
    np.testing.assert_array_equal(got, want)
    x = rng.integers(-128, 128, (3, 5)).astype(np.int8)
    got, _ = run1("rescale", {"input_zero_point": -3, "rq_mode": "fixed",
                              "rq_multiplier": np.array([3]), "rq_shift": np.array([2]),
                              "rq_rounding": "half_even", "out_zero_point": 100,
                              "out_dtype": "uint8"}, {"x": x}, "uint8")
    want, _ = quant_ref.requantize(x.astype(np.int64) + 3, "fixed", [3], [2], "half_even", 100, 0,
                                   255, "uint8", -1)
    np.testing.assert_array_equal(got, want)
    got, _ = run1("rescale", {"input_zero_point": -3, "rq_mode": "float_dq_q",
                              "scale_in": np.float32(0.1), "scale_out": np.float32(0.3),
                              "out_zero_point": 7, "out_dtype": "int8"}, {"x": x}, "int8")
    want, _ = eltwise_ref.rescale_float(x, -3, 0.1, 0.3, 7, "half_even", -128, 127, "int8")
    np.testing.assert_array_equal(got, want)
    got, stats = run1("clamp", {"out_min": -10, "out_max": 10}, {"x": x}, "int8")
    np.testing.assert_array_equal(got, np.clip(x, -10, 10))
    assert stats["out_saturated"] == int(np.count_nonzero(np.abs(x) > 10))


def test_pools_through_run():
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (2, 3, 7, 6)).astype(np.int8)
    geo = {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "ceil_mode": 1,
           "count_include_pad": 0}
    got, _ = run1("avgpool", dict(geo, mode="tflite_raw", out_dtype="int8"), {"x": x}, "int8")
    want, _ = pool_ref.avgpool_tflite(x, (3, 3), (2, 2), (1, 1, 1, 1), True, False, -128, 127,
                                      "int8")
    np.testing.assert_array_equal(got, want)
    got, _ = run1("avgpool", dict(geo, mode="ort_float", scale_in=np.float32(0.5), input_zero_point=1,
                                  scale_out=np.float32(0.25), out_zero_point=-3, out_dtype="int8"),
                  {"x": x}, "int8")
    want, _ = pool_ref.avgpool_ort_float(x, (3, 3), (2, 2), (1, 1, 1, 1), True, False, 0.5, 1,
                                         0.25, -3, -128, 127, "int8")
    np.testing.assert_array_equal(got, want)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    got, _ = run1("avgpool", dict(geo, mode="fixed", layout="NHWC", input_zero_point=4,
                                  rq_mode="fixed", rq_multiplier=np.array([5, 6, 7]),
                                  rq_shift=np.array([3]), rq_rounding="half_away",
                                  out_zero_point=-1, out_dtype="int8"), {"x": xh}, "int8")
    avg = pool_ref.avgpool_fixed_avg(x, (3, 3), (2, 2), (1, 1, 1, 1), True, False, 4, "half_away")
    want, _ = quant_ref.requantize(avg, "fixed", [5, 6, 7], [3], "half_away", -1, -128, 127,
                                   "int8", 1)
    np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1))
    got, _ = run1("global_avgpool", {"input_zero_point": 2, "rq_mode": "fp32",
                                     "rq_multiplier": np.array([1 / 42], np.float32),
                                     "out_zero_point": 0, "out_dtype": "int8"}, {"x": x}, "int8")
    want, _ = quant_ref.requantize(pool_ref.global_sum(x, 2), "fp32",
                                   np.array([1 / 42], np.float32), None, "half_even", 0, -128,
                                   127, "int8", 1)
    np.testing.assert_array_equal(got, want)
    assert got.shape == (2, 3, 1, 1)
    with pytest.raises(ProgramError, match="dilations"):
        run1("avgpool", dict(geo, mode="tflite_raw", dilations=(2, 2), out_dtype="int8"),
             {"x": x}, "int8")


def test_constant_step_feeds_an_add():
    x = np.arange(6, dtype=np.int8).reshape(1, 6)
    c = np.full((1, 6), 3, dtype=np.int8)
    steps = (Step("constant", "k", (), ("c",), {"value": c}),
             Step("add", "plus", ("x", "c"), ("y",), {
                 "mode": "fixed", "zero_point_a": 0, "zero_point_b": 0, "multiplier_a": 1,
                 "multiplier_b": 1, "rq_mode": "shift", "rq_shift": np.array([0]),
                 "rq_rounding": "half_even", "out_zero_point": 0, "out_dtype": "int8"}))
    res = run(Program((TensorSpec("x", "int8", (None, 6)),), (TensorSpec("y", "int8", ()),), steps),
              {"x": x}, trace=True)
    np.testing.assert_array_equal(res.outputs["y"], x + 3)
    np.testing.assert_array_equal(res.trace["c"], c)


def test_movement_quantize_dequantize_softmax_through_run():
    rng = np.random.default_rng(6)
    x = rng.integers(-128, 128, (2, 3, 4)).astype(np.int8)
    y = rng.integers(-128, 128, (2, 1, 4)).astype(np.int8)
    specs = (TensorSpec("x", "int8", (None, 3, 4)), TensorSpec("y", "int8", (None, 1, 4)))
    res = run(Program(specs,
                      (TensorSpec("t", "int8", ()),),
                      (Step("concat", "cat", ("x", "y"), ("c",), {"axis": 1}),
                       Step("transpose", "tr", ("c",), ("t",), {"perm": (0, 2, 1)}))),
              {"x": x, "y": y})
    np.testing.assert_array_equal(res.outputs["t"], np.concatenate([x, y], 1).transpose(0, 2, 1))
    got, _ = run1("dequantize", {"scale": np.array([0.1, 0.2, 0.3], np.float32),
                                 "zero_point": np.array([1, 2, 3]), "axis": 1}, {"x": x},
                  "float32")
    np.testing.assert_array_equal(got, quant_ref.dequantize(x, [0.1, 0.2, 0.3], [1, 2, 3], 1))
    xf = rng.standard_normal((2, 3)).astype(np.float32)
    got, _ = run1("quantize", {"scale": np.array([0.01], np.float32), "zero_point": np.array([0]),
                               "method": "multiply", "rounding": "half_away",
                               "out_dtype": "int16"}, {"x": xf}, "int16")
    want, _ = quant_ref.quantize(xf, [0.01], [0], 0, "half_away", "multiply", -(2**15),
                                 2**15 - 1, "int16")
    np.testing.assert_array_equal(got, want)
    got, _ = run1("softmax", {"mode": "float", "axis": -1, "scale_in": np.float32(0.1),
                              "input_zero_point": 0, "scale_out": np.float32(1 / 256),
                              "out_zero_point": -128, "out_dtype": "int8"}, {"x": x}, "int8")
    assert got.shape == x.shape and got.dtype == np.int8
