"""A profile's limits are enforced end to end.

- :func:`mrq.limits.program_violations` on hand-built programs: one test per limit, each
  against a clean baseline that has no violation (so removing a check fails its test);
- the multiplier encoders clip to the shift range and say so;
- the lowering emits only legal values and records what it clipped (``limit_violations``);
- the multiplier_limits pass chooses grids whose multipliers fit;
- end to end with ``nna-sym8-pow2`` restricted to right shifts (``shift_min: 0``): a model that
  needs left shifts fails ``mrq check``, ``mrq golden`` refuses it, ``mrq sim`` warns, and
  ``mrq requant`` turns it into a model that passes ``mrq check`` and whose golden set holds
  no negative shift.
"""
import dataclasses
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mrq import multipliers as mul
from mrq.hw_profile import load_profile
from mrq.ir import Graph, Node, QParams, Tensor
from mrq.limits import arithmetic_violations, program_violations
from mrq.lower import arithmetic_from_profile, lower
from simulator.program import Program, Step, TensorSpec
from simulator.steps import make_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _profile(name, **requant):
    prof = load_profile(name)
    return dataclasses.replace(prof, requant=dataclasses.replace(prof.requant, **requant)) if requant else prof


@pytest.fixture(scope="module")
def sym8():
    return load_profile("nna-sym8")           # fixed_point, 16-bit multiplier, shifts [0, 47]


@pytest.fixture(scope="module")
def rshift():
    return _profile("nna-sym8-pow2", shift_min=0)   # shift only, right shifts only


# ------------------------------------------------------------------------------------------
# program_violations on hand-built programs


def _conv(name="conv1", **over):
    p = dict(weight=np.ones((8, 4, 1, 1), np.int8), weight_zero_point=np.zeros(8, np.int64),
             bias=np.zeros(8, np.int64), input_zero_point=0, acc_bits=32, acc_overflow="wrap",
             rq_mode="fixed", rq_multiplier=np.full(8, 40000, np.int64),
             rq_shift=np.full(8, 20, np.int64), rq_rounding="half_up", out_zero_point=0,
             out_min=-128, out_max=127, out_dtype="int8", channel_axis=1, layout="NCHW")
    p.update(over)
    return Step("conv", name, ("x",), ("y",), p)


def _pow2_conv(**over):
    return _conv(**{"rq_mode": "shift", "rq_multiplier": np.ones(8, np.int64),
                    "rq_shift": np.full(8, 6, np.int64), **over})


def _program(*steps):
    return Program((TensorSpec("x", "int8", (None, 4, 4, 4)),), (TensorSpec("y", "int8", (None, 8, 4, 4)),),
                   tuple(steps))


def _check(profile, *steps, step_node=None, placement=None):
    return program_violations(_program(*steps), profile, step_node or {"conv1": "Conv_3"}, placement)


def _only(violations, field):
    assert [v.field for v in violations] == [field], [str(v) for v in violations]
    return violations[0]


def test_clean_programs_have_no_violations(sym8, rshift):
    assert _check(sym8, _conv()) == []
    assert _check(rshift, _pow2_conv()) == []
    q31 = _conv(rq_mode="double_q31", rq_multiplier=np.full(8, 1 << 30, np.int64),
                rq_shift=np.full(8, 40, np.int64), rq_rounding="half_away")
    assert _check(load_profile("tflite-int8"), q31) == []
    fp32 = _conv(rq_mode="fp32", rq_multiplier=np.full(8, 0.01, np.float32), rq_shift=np.zeros(8, np.int64),
                 rq_rounding="half_even")
    assert _check(load_profile("onnxruntime-cpu"), fp32) == []


def test_rq_shift_below_shift_min_names_step_node_channel_and_limit(rshift):
    v = _only(_check(rshift, _pow2_conv(rq_shift=np.array([6, 6, 6, 6, 6, -1, 6, 6]))), "requant.shift_min")
    assert str(v) == ("conv1 (node Conv_3): rq_shift -1 at channel 5 is below requant.shift_min 0 (a left "
                      "shift the hardware cannot do; the multiplier it encodes, 2, needs one)")
    assert (v.step, v.node, v.value, v.limit, v.channel) == ("conv1", "Conv_3", -1, 0, 5)


def test_rq_shift_above_shift_max(sym8):
    v = _only(_check(sym8, _conv(rq_shift=np.array([20, 48, 20, 20, 20, 20, 20, 20]))), "requant.shift_max")
    assert "rq_shift 48 at channel 1 is above requant.shift_max 47" in str(v)


def test_fixed_point_multiplier_fits_multiplier_bits(sym8):
    m = np.full(8, 40000, np.int64)
    m[2] = 1 << 16
    v = _only(_check(sym8, _conv(rq_multiplier=m)), "requant.multiplier_bits")
    assert "rq_multiplier 65536 at channel 2 is outside the profile's 16-bit unsigned multiplier range [0, 65535]" in str(v)
    floats = _check(sym8, _conv(rq_multiplier=np.full(8, 0.5, np.float32)))
    assert [x.field for x in floats] == ["requant.arithmetic"] and "multiplies by integers" in str(floats[0])


def test_double_q31_multiplier_is_int32():
    prof = load_profile("tflite-int8")
    m = np.full(8, 1 << 30, np.int64)
    m[7] = 1 << 31
    step = _conv(rq_mode="double_q31", rq_multiplier=m, rq_shift=np.full(8, 40, np.int64), rq_rounding="half_away")
    v = _only(_check(prof, step), "requant.arithmetic")
    assert "rq_multiplier 2147483648 at channel 7 is outside the Q31 multiplier range" in str(v)


def test_shift_arithmetic_has_no_multiplier(rshift):
    m = np.ones(8, np.int64)
    m[3] = 3
    v = _only(_check(rshift, _pow2_conv(rq_multiplier=m)), "requant.arithmetic")
    assert "rq_multiplier 3 at channel 3 is not 1" in str(v)


def test_rq_mode_is_what_the_arithmetic_implies(sym8):
    step = _conv(rq_mode="shift", rq_multiplier=np.ones(8, np.int64))
    v = _only(_check(sym8, step), "requant.arithmetic")
    assert "rq_mode 'shift' but the profile's requant.arithmetic fixed_point implies 'fixed'" in str(v)


def test_rq_rounding_is_the_profiles(sym8):
    v = _only(_check(sym8, _conv(rq_rounding="half_even")), "requant.rounding")
    assert "rq_rounding 'half_even' but the profile's requant.rounding is 'half_up'" in str(v)


def test_peer_runtime_exceptions_are_exactly_the_documented_ones():
    prof = load_profile("tflite-int8")     # runtime tflite-reference: single-rounding FULLY_CONNECTED
    q31 = dict(rq_multiplier=np.full(8, 1 << 30, np.int64), rq_shift=np.full(8, 40, np.int64))
    gemm = lambda **kw: Step("gemm", "fc", ("x",), ("y",), {**_conv().params, **q31, **kw})
    assert _check(prof, gemm(rq_mode="fixed", rq_rounding="half_up")) == []
    assert [v.field for v in _check(prof, gemm(rq_mode="fixed", rq_rounding="half_away"))] == ["requant.rounding"]
    conv = _conv(rq_mode="fixed", rq_rounding="half_up", **q31)
    assert [v.field for v in _check(prof, conv)] == ["requant.arithmetic"]


def test_bias_codes_fit_bias_bits():
    prof = load_profile("nna-sym8-acc20")          # 20-bit bias and accumulator
    prof = dataclasses.replace(prof, accumulator=dataclasses.replace(prof.accumulator, bits=32, overflow="wrap"))
    bias = np.zeros(8, np.int64)
    assert _check(prof, _conv(bias=bias)) == []
    bias[4] = 1 << 19
    v = _only(_check(prof, _conv(bias=bias)), "bias.bits")
    assert "bias code 524288 at channel 4 outside the profile's 20-bit range [-524288, 524287]" in str(v)


def test_accumulator_is_the_profiles(sym8):
    assert "acc_bits 24 but the profile's accumulator.bits is 32" in str(
        _only(_check(sym8, _conv(acc_bits=24)), "accumulator.bits"))
    assert "acc_overflow 'saturate' but the profile's accumulator.overflow is 'wrap'" in str(
        _only(_check(sym8, _conv(acc_overflow="saturate")), "accumulator.overflow"))


def _add(**over):
    p = dict(mode="fixed", multiplier_a=40000, multiplier_b=20000, zero_point_a=0, zero_point_b=0,
             rq_mode="shift", rq_multiplier=np.ones(1, np.int64), rq_shift=np.array([16], np.int64),
             rq_rounding="half_up", out_zero_point=0, out_min=-128, out_max=127, out_dtype="int8")
    p.update(over)
    return Step("add", "add1", ("a", "b"), ("y",), p)


def test_add_fixed_multipliers_and_shift(sym8, rshift):
    assert _check(sym8, _add()) == []
    v = _only(_check(sym8, _add(multiplier_a=70000)), "requant.multiplier_bits")
    assert "multiplier_a 70000 is outside the profile's 16-bit unsigned multiplier range" in str(v)
    assert [v.field for v in _check(sym8, _add(rq_shift=np.array([-2])))] == ["requant.shift_min"]
    assert [v.field for v in _check(sym8, _add(rq_multiplier=np.array([3])))] == ["requant.arithmetic"]
    pow2 = _add(multiplier_a=4, multiplier_b=1, rq_shift=np.array([3]))
    assert _check(rshift, pow2) == []
    v = _only(_check(rshift, _add(multiplier_a=4, multiplier_b=3, rq_shift=np.array([3]))), "requant.arithmetic")
    assert "multiplier_b 3 is not a power of two" in str(v)


def test_op_modes_are_the_profiles(sym8):
    v = _only(_check(sym8, _add(mode="ort_fma", scale_a=np.float32(1), scale_b=np.float32(1),
                                scale_out=np.float32(1), multiplier_a=None, multiplier_b=None,
                                rq_mode=None, rq_multiplier=None, rq_shift=None)), "ops.add")
    assert "add mode 'ort_fma' but the profile's ops.add is 'fixed'" in str(v)
    pool = Step("avgpool", "pool", ("x",), ("y",), dict(mode="tflite_raw", kernel=(2, 2), out_dtype="int8"))
    assert "avgpool mode 'tflite_raw' but the profile's ops.avgpool is 'fixed'" in str(_only(_check(sym8, pool), "ops.avgpool"))
    rescale = Step("rescale", "rs", ("x",), ("y",), dict(rq_mode="float_dq_q", scale_in=np.float32(1),
                                                         scale_out=np.float32(1), out_dtype="int8"))
    assert "rescale rq_mode 'float_dq_q' but the profile's ops.rescale is 'requant'" in str(
        _only(_check(sym8, rescale), "ops.rescale"))


def test_output_dtypes_are_activation_dtypes(sym8):
    assert "out_dtype uint8 is not among the profile's activation dtypes (int8" in str(
        _only(_check(sym8, _conv(out_dtype="uint8", out_min=0, out_max=255)), "activations.signed"))
    _only(_check(sym8, _conv(out_dtype="int16")), "activations.bits")
    const = Step("constant", "c", (), ("k",), dict(value=np.zeros(3, np.uint8)))
    _only(_check(sym8, const), "activations.signed")


def test_plumbing_host_steps_and_raw_accumulators_follow_the_rule(sym8):
    plumbing = [Step("reshape", "r", ("x",), ("r",), dict(shape=(0, -1))),
                Step("transpose", "t", ("x",), ("t",), dict(perm=(0, 2, 3, 1))),
                Step("maxpool", "m", ("x",), ("m",), dict(kernel=(2, 2))),
                Step("concat", "c", ("x", "x"), ("c",), dict(axis=1)),
                Step("dequantize", "d", ("x",), ("d",), dict(scale=np.float32(1), zero_point=np.int64(0)))]
    assert _check(sym8, *plumbing) == []
    bad = _conv(rq_shift=np.full(8, -3, np.int64))
    assert _check(sym8, bad) != []
    assert _check(sym8, bad, placement={"conv1": "host"}) == []        # the host's arithmetic
    raw = _conv(rq_mode="none", out_dtype="int32", out_min=-(2 ** 31), out_max=2 ** 31 - 1,
                rq_multiplier=np.ones(1, np.int64), rq_shift=np.zeros(1, np.int64))
    assert _check(sym8, raw) == []                                     # ConvInteger: no requant
    assert [v.field for v in _check(sym8, dataclasses.replace(raw, params={**raw.params, "acc_bits": 16}))] \
        == ["accumulator.bits"]


def test_typed_step_parameters_are_read_too(rshift):
    p = dict(_pow2_conv().params)
    p["rq_shift"] = np.array([6, -2, 6, 6, 6, 6, 6, 6])
    typed = make_step("conv", "conv1", ("x",), ("y",), **p)
    assert type(typed.params) is not dict
    v = _only(_check(rshift, typed), "requant.shift_min")
    assert v.channel == 1 and v.value == -2


def test_arithmetic_violations_leave_out_the_models_formats(sym8):
    both = _check(sym8, _conv(out_dtype="uint8", out_min=0, out_max=255, rq_shift=np.full(8, -1, np.int64)))
    assert {v.field for v in both} == {"activations.signed", "requant.shift_min"}
    assert [v.field for v in arithmetic_violations(both)] == ["requant.shift_min"]


# ------------------------------------------------------------------------------------------
# the encoders clip and say so


def test_fixed_point_encode_clips_to_the_shift_range():
    m, s, clips = mul.fixed_point_encode(np.array([0.75, 70000.0]), 16, 0, 47)
    assert list(s) == [16, 0] and m[0] == 49152 and m[1] == 65535
    (c,) = clips
    assert (c.channel, c.field, c.wanted, c.limit, c.multiplier, c.shift) == (1, "requant.shift_min", -1, 0, 65535, 0)
    m, s, clips = mul.fixed_point_encode(np.array([2.0 ** -50]), 16, 0, 47)
    assert (m[0], s[0]) == (0, 47) and clips[0].field == "requant.shift_max"
    m, s, clips = mul.fixed_point_encode(np.array([2.0 ** -40]), 16, 0, 47)
    assert (m[0], s[0], clips) == (128, 47, [])        # coarser, but exactly representable


def test_pow2_shifts_clip_to_the_shift_range():
    exact, s = mul.pow2_shifts(np.array([4.0, 0.25, 2.0 ** -40]), 0, 31)
    assert list(s) == [0, 2, 31] and list(exact) == [False, True, False]
    _, _, clips = mul.pow2_encode(np.array([4.0, 0.25, 2.0 ** -40]), 0, 31)
    assert [(c.channel, c.field, c.wanted) for c in clips] == [(0, "requant.shift_min", -2), (2, "requant.shift_max", 40)]
    assert list(mul.pow2_shifts(np.array([4.0]))[1]) == [-2]          # no range: no clipping


def test_q31_encode_saturates_below_shift_min():
    m, s, clips = mul.q31_encode(np.array([0.5, 2.0 ** 31]), 1, 62)
    assert (m[0], s[0]) == (1 << 30, 31)
    assert (m[1], s[1]) == ((1 << 31) - 1, 1) and clips[0].field == "requant.shift_min"


def test_add_multipliers_fit_their_register():
    # a ratio whose mantissa rounds up to 2**bits takes one shift less, not a 17-bit multiplier
    m_a, m_b, shift, clips = mul.fixed_add_multipliers(1 - 2.0 ** -20, 0.25, 16, 0, 47)
    assert (m_a, m_b, shift, clips) == (32768, 8192, 15, [])
    m_a, m_b, shift, clips = mul.fixed_add_multipliers(20.0, 1.0, 4, 0, 47)
    assert (m_a, m_b, shift) == (15, 1, 0) and [(c.what, c.field) for c in clips] == [("multiplier_a", "requant.shift_min")]
    m_a, m_b, shift, clips = mul.pow2_add_multipliers(1.0, 2.0 ** -40, 0, 31)
    assert (m_a, m_b, shift) == (1 << 31, 1, 31) and clips[0].what == "multiplier_b"
    assert mul.pow2_add_multipliers(4.0, 0.5, 0, 31)[:3] == (8, 1, 1)   # (8a + b) >> 1 = 4a + b/2


# ------------------------------------------------------------------------------------------
# lowering: only legal values, and a record of what was clipped


def _qp(scale, dtype="int8", axis=None, narrow=False):
    return QParams(np.asarray(scale, np.float32), np.zeros(np.size(scale), np.int64), dtype, axis=axis,
                   narrow_range=narrow)


def _conv_graph(s_in, s_w, s_out, codes, s_out2=None):
    """x -> Quantize -> Conv 1x1 (weights ``codes`` [M, C]) -> Dequantize; with ``s_out2`` a
    second 1x1 conv of ones follows (so a raised grid has a consumer)."""
    m, c = codes.shape
    t = {"x": Tensor("x", (None, c, 4, 4), "float32"),
         "xq": Tensor("xq", (None, c, 4, 4), "int8", _qp([s_in])),
         "w": Tensor("w", (m, c, 1, 1), "int8", _qp(s_w, axis=0, narrow=True), codes.reshape(m, c, 1, 1).astype(np.int8)),
         "y": Tensor("y", (None, m, 4, 4), "int8", _qp([s_out])),
         "out": Tensor("out", (None, m, 4, 4), "float32")}
    conv = {"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1), "group": 1, "layout": "NCHW"}
    nodes = [Node("Quantize", "quant", ["x"], ["xq"]), Node("Conv", "conv1", ["xq", "w"], ["y"], dict(conv))]
    last = "y"
    if s_out2 is not None:
        t["w2"] = Tensor("w2", (m, m, 1, 1), "int8", _qp(np.full(m, 2.0 ** -6), axis=0, narrow=True),
                         np.ones((m, m, 1, 1), np.int8))
        t["y2"] = Tensor("y2", (None, m, 4, 4), "int8", _qp([s_out2]))
        nodes.append(Node("Conv", "conv2", ["y", "w2"], ["y2"], dict(conv)))
        last = "y2"
    nodes.append(Node("Dequantize", "dq", [last], ["out"]))
    return Graph(t, nodes, ["x"], ["out"], name="conv_graph")


def test_lowering_clips_to_legal_values_and_records_the_need(rshift):
    codes = np.full((4, 2), 100)
    g = _conv_graph(2.0 ** -4, np.array([2.0 ** -7, 2.0 ** -7, 2.0 ** -3, 2.0 ** -2]), 2.0 ** -8, codes)
    lowered = lower(g, arithmetic_from_profile(rshift))
    step = next(s for s in lowered.program.steps if s.name == "conv1")
    assert list(step.params["rq_shift"]) == [3, 3, 0, 0]          # wanted -1 and -2: clipped
    assert program_violations(lowered.program, rshift, lowered.step_node) == []
    (v,) = lowered.limit_violations
    assert (v.step, v.node, v.field, v.value, v.limit, v.channel) == ("conv1", "conv1", "requant.shift_min", -2, 0, 2)
    assert "channels 2, 3" in str(v) and "real multiplier 2" in str(v)
    # the same model on the shipped profile (left shifts up to 16) needs nothing clipped
    shipped = lower(g, arithmetic_from_profile(load_profile("nna-sym8-pow2")))
    assert shipped.limit_violations == [] and list(next(
        s for s in shipped.program.steps if s.name == "conv1").params["rq_shift"]) == [3, 3, -1, -2]


def _add_graph(sa, sb, sy):
    t = {n: Tensor(n, (None, 4), "float32") for n in ("a", "b", "out")}
    for n, s in (("aq", sa), ("bq", sb), ("yq", sy)):
        t[n] = Tensor(n, (None, 4), "int8", _qp([s]))
    nodes = [Node("Quantize", "qa", ["a"], ["aq"]), Node("Quantize", "qb", ["b"], ["bq"]),
             Node("Add", "add1", ["aq", "bq"], ["yq"]), Node("Dequantize", "dq", ["yq"], ["out"])]
    return Graph(t, nodes, ["a", "b"], ["out"], name="add_graph")


def test_lowering_clips_add_fixed_multipliers():
    prof = _profile("nna-sym8", multiplier_bits=4)               # multipliers 0..15, right shifts only
    lowered = lower(_add_graph(0.2, 0.01, 0.01), arithmetic_from_profile(prof))
    step = next(s for s in lowered.program.steps if s.kind == "add")
    assert (step.params["multiplier_a"], step.params["multiplier_b"], int(step.params["rq_shift"][0])) == (15, 1, 0)
    (v,) = lowered.limit_violations
    assert v.step == "add1" and v.field == "requant.shift_min" and "multiplier_a" in str(v)
    assert program_violations(lowered.program, prof, lowered.step_node) == []


def test_shipped_profiles_lower_the_test_models_without_clipping():
    # by path: the module named ``conftest`` here may be another directory's (tests/conftest.py)
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "verification_conftest", os.path.join(ROOT, "tests", "verification", "conftest.py"))
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    make_cnn = models.make_cnn
    from mrq.demo import DEMO_MODEL
    from mrq.hw_profile import iter_profiles
    from mrq.onnx_import import load_model
    models = [load_model(DEMO_MODEL), make_cnn(0), make_cnn(0, pow2=True), make_cnn(1, layout="NHWC")]
    for prof in iter_profiles():
        for g in models:
            lowered = lower(g, arithmetic_from_profile(prof))
            assert lowered.limit_violations == [], (prof.name, g.name)
            bad = arithmetic_violations(program_violations(lowered.program, prof, lowered.step_node,
                                                           lowered.placement))
            assert bad == [], (prof.name, g.name, [str(v) for v in bad])


# ------------------------------------------------------------------------------------------
# the multiplier_limits pass


def _requant(graph, prof, disabled=()):
    from mrq.passes.base import Options
    from mrq.requant import requantize
    return requantize(graph, prof, None, Options(disabled=frozenset(disabled)))


def _clean(graph, prof):
    lowered = lower(graph, arithmetic_from_profile(prof))
    return list(lowered.limit_violations) + arithmetic_violations(
        program_violations(lowered.program, prof, lowered.step_node))


def test_pass_shrinks_weight_scales_exactly_where_the_codes_fit(rshift):
    codes = np.array([[100, -90], [80, 7], [3, -2], [1, 0]])
    g = _conv_graph(2.0 ** -4, np.array([2.0 ** -7, 2.0 ** -7, 2.0 ** -3, 2.0 ** -2]), 2.0 ** -8, codes)
    new, report = _requant(g, rshift)
    assert _clean(new, rshift) == []
    w = new.tensors["w"]
    assert list(w.qparams.scale) == [2.0 ** -7, 2.0 ** -7, 2.0 ** -4, 2.0 ** -4]
    np.testing.assert_array_equal(w.data.reshape(4, 2), [[100, -90], [80, 7], [6, -4], [4, 0]])
    assert new.tensors["y"].qparams.same_grid(g.tensors["y"].qparams)     # no output resolution lost
    (change,) = [c for c in report.changes if c.pass_name == "multiplier_limits"]
    assert change.tensor == "w" and change.lossless and "channel(s) 2, 3" in change.note
    before, _ = _requant(g, rshift, disabled=("multiplier_limits",))
    assert [v.field for v in _clean(before, rshift)] == ["requant.shift_min"]


def test_pass_raises_the_output_grid_where_the_weights_cannot_shrink(rshift):
    codes = np.array([[100, -90], [120, 7]])                # channel 1 needs x4; 120 * 4 > 127
    g = _conv_graph(2.0 ** -4, np.array([2.0 ** -7, 2.0 ** -2]), 2.0 ** -8, codes, s_out2=2.0 ** -13)
    assert _clean(g, rshift)[0].step == "conv1" and len(_clean(g, rshift)) == 1     # conv2: 0.5
    new, report = _requant(g, rshift)
    assert _clean(new, rshift) == []
    assert new.tensors["y"].qparams.scale[0] == 2.0 ** -6                  # x4: 2**-4 * 2**-2 / 2**-6 = 1
    np.testing.assert_array_equal(new.tensors["w"].data, g.tensors["w"].data)
    # the consumer reads the coarser grid: its multiplier grew (2**-6 * 2**-6 / 2**-13 = 2) and
    # the walk fixed it too, by its weights (codes 1 -> 2)
    ours = [(c.tensor, c.role, c.lossless) for c in report.changes if c.pass_name == "multiplier_limits"]
    assert ours == [("y", "activations", False), ("w2", "weights", True)]
    w2 = new.tensors["w2"]
    assert w2.qparams.scale[0] == 2.0 ** -7 and int(w2.data.max()) == 2


def test_pass_handles_float_scales_with_a_narrow_multiplier():
    prof = _profile("nna-sym8", multiplier_bits=4)                # largest multiplier 15
    codes = np.array([[10, -9], [100, 20]])
    g = _conv_graph(0.05, np.array([0.01, 0.1]), 0.0003, codes)    # channel 1: 16.7 > 15
    assert [v.field for v in _clean(g, prof)] == ["requant.shift_min"]
    new, report = _requant(g, prof)
    assert _clean(new, prof) == []
    s_w = new.tensors["w"].qparams.scale
    assert s_w[0] == np.float32(0.01) and s_w[1] < np.float32(0.1)
    real = float(np.float32(0.05)) * float(s_w[1]) / float(np.float32(0.0003))
    assert 14.5 < real < 15.5 and int(np.abs(new.tensors["w"].data[1]).max()) <= 127
    ours = [c for c in report.changes if c.pass_name == "multiplier_limits"]
    assert [(c.tensor, c.lossless) for c in ours] == [("w", False)]


def test_pass_raises_add_and_concat_outputs():
    prof = _profile("nna-sym8", multiplier_bits=4)
    new, report = _requant(_add_graph(0.2, 0.01, 0.01), prof)
    assert _clean(new, prof) == []
    assert float(new.tensors["yq"].qparams.scale[0]) >= 0.2 / 15
    rshift = _profile("nna-sym8-pow2", shift_min=0)
    t = {"x": Tensor("x", (None, 2, 4, 4), "float32"), "out": Tensor("out", (None, 4, 4, 4), "float32")}
    for n, s in (("a", 2.0 ** -5), ("b", 2.0 ** -7), ("c", 2.0 ** -7)):
        t[n] = Tensor(n, (None, 2 if n != "c" else 4, 4, 4), "int8", _qp([s]))
    nodes = [Node("Quantize", "qa", ["x"], ["a"]), Node("Quantize", "qb", ["x"], ["b"]),
             Node("Concat", "cat", ["a", "b"], ["c"], {"axis": 1}), Node("Dequantize", "dq", ["c"], ["out"])]
    g = Graph(t, nodes, ["x"], ["out"], name="concat_graph")
    assert [v.step for v in _clean(g, rshift)] == ["cat/rescale0"]
    new, _ = _requant(g, rshift)
    assert _clean(new, rshift) == [] and new.tensors["c"].qparams.scale[0] == 2.0 ** -5


# ------------------------------------------------------------------------------------------
# end to end: a profile without left shifts


def left_shift_model(path, seed=0):
    """A QDQ CNN on power-of-two grids (the format of nna-sym8-pow2) whose requantization needs
    left shifts: conv1's channels 0 and 1 have coarse weight scales (2x and 4x the accumulator
    LSB the output grid needs; a few codes within +-2), and the global average pool's output
    grid is 4x finer than its input's (averaging shrinks the range)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def qdq(src, name, scale):
        s, z = init(name + "_scale", np.float32(scale)), init(name + "_zp", np.int8(0))
        nodes.append(helper.make_node("QuantizeLinear", [src, s, z], [name + "_q"], name=name + "_Q"))
        nodes.append(helper.make_node("DequantizeLinear", [name + "_q", s, z], [name], name=name + "_DQ"))
        return name

    def const(name, codes, scales, dtype):
        q = init(name + "_codes", codes.astype(dtype))
        s, z = init(name + "_scale", scales.astype(np.float32)), init(name + "_zp", np.zeros(scales.shape, dtype))
        nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [name], axis=0, name=name + "_DQ"))
        return name

    sx = 2.0 ** -8
    x = qdq("x", "xq", sx)
    w1 = np.clip(np.rint(rng.normal(0, 20, (8, 4, 3, 3))), -127, 127)
    s1 = np.full(8, 2.0 ** -7)
    for c, e in ((0, -1), (1, 0)):
        w1[c] = np.where(rng.random((4, 3, 3)) < 0.1, rng.integers(-2, 3, (4, 3, 3)), 0)
        s1[c] = 2.0 ** e
    b1 = rng.integers(-200, 200, 8)
    b1[:2] = (3, -2)
    nodes.append(helper.make_node("Conv", [x, const("w1", w1, s1, np.int8), const("b1", b1, sx * s1, np.int32)],
                                  ["c1"], pads=[1, 1, 1, 1], name="conv1"))
    y1 = qdq("c1", "y1", 2.0 ** -10)
    nodes.append(helper.make_node("GlobalAveragePool", [y1], ["g"], name="gap"))
    g = qdq("g", "gq", 2.0 ** -12)
    nodes.append(helper.make_node("Flatten", [g], ["f"], name="flatten"))
    f = qdq("f", "fq", 2.0 ** -12)
    wfc = np.clip(np.rint(rng.normal(0, 40, (5, 8))), -127, 127)
    sfc = np.full(5, 2.0 ** -6)
    nodes.append(helper.make_node("Gemm", [f, const("wfc", wfc, sfc, np.int8),
                                          const("bfc", rng.integers(-50, 50, 5), 2.0 ** -12 * sfc, np.int32)],
                                  ["l"], transB=1, name="classifier"))
    s, z = init("l_scale", np.float32(2.0 ** -12)), init("l_zp", np.int8(0))
    nodes.append(helper.make_node("QuantizeLinear", ["l", s, z], ["l_q"], name="l_Q"))
    nodes.append(helper.make_node("DequantizeLinear", ["l_q", s, z], ["logits"], name="l_DQ"))
    graph = helper.make_graph(nodes, "left_shift_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _inputs(n, seed):
    return {"x": np.random.default_rng(seed).normal(0, 0.03, (n, 4, 8, 8)).astype(np.float32)}


def _cli(*args):
    # in this process (tests/cli_in_process.py): exit codes and stderr as a subprocess gives them
    from cli_in_process import mrq_in_process
    return mrq_in_process(*args)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    d = tmp_path_factory.mktemp("limits")
    text = open(os.path.join(ROOT, "hw_profiles", "nna-sym8-pow2.yaml")).read()
    assert "shift_min: -16" in text
    profile = d / "rshift.yaml"
    profile.write_text(text.replace("name: nna-sym8-pow2", "name: nna-sym8-pow2-rshift")
                       .replace("shift_min: -16", "shift_min: 0"))
    model = left_shift_model(d / "model.onnx")
    np.savez(d / "calib.npz", **_inputs(64, 1))
    np.savez(d / "in.npz", **_inputs(2, 2))
    return d, str(profile), model


def test_check_names_the_steps_that_need_left_shifts(e2e):
    d, profile, model = e2e
    r = _cli("check", model, "--profile", profile, "-q")
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2, r.stdout
    assert lines[0].startswith("conv1 (node conv1): the real multiplier 2 at channels 0, 1 needs shift -1, "
                               "below requant.shift_min 0")
    assert lines[1].startswith("gap (node gap): the real multiplier 4 needs shift -2, below requant.shift_min 0")
    # the same model is fine where left shifts exist: the format itself conforms
    assert _cli("check", model, "--profile", "nna-sym8-pow2", "-q").returncode == 0


def test_golden_refuses_and_sim_warns(e2e):
    d, profile, model = e2e
    r = _cli("golden", model, "--profile", profile, "--inputs", d / "in.npz", "-o", d / "g_refused")
    assert r.returncode == 1 and not (d / "g_refused").exists()
    assert "refusing to write a golden set" in r.stderr and "gap (node gap)" in r.stderr
    assert f"run `mrq requant {model} --profile {profile}" in r.stderr
    r = _cli("sim", model, "--profile", profile, "--inputs", d / "in.npz", "--out", d / "o.npz", "-q")
    assert r.returncode == 0 and "outside the limits of profile 'nna-sym8-pow2-rshift'" in r.stderr


def test_requant_fixes_the_grids_and_the_golden_set_has_no_left_shift(e2e):
    d, profile, model = e2e
    out, rep = d / "requant.onnx", d / "report.json"
    r = _cli("requant", model, "--profile", profile, "-o", out, "--calib", d / "calib.npz", "--report", rep)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "satisfies profile 'nna-sym8-pow2-rshift'" in r.stdout and "end-to-end SQNR" in r.stdout
    data = json.loads(rep.read_text())
    assert data["violations"] == []
    ours = {c["tensor"]: c for c in data["changes"] if c["pass_name"] == "multiplier_limits"}
    assert set(ours) == {"w1_q", "gq_q"} and ours["w1_q"]["lossless"] and not ours["gq_q"]["lossless"]
    assert float(data["end_to_end_sqnr_db"]["logits"]) > 20.0
    assert _cli("check", out, "--profile", profile, "-q").returncode == 0
    g = d / "golden"
    r = _cli("golden", out, "--profile", profile, "--inputs", d / "in.npz", "-o", g, "-q")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((g / "manifest.json").read_text())
    shifts = [t for t in manifest["tensors"] if t["role"] == "rq_shift"]
    assert {t["layer"] for t in shifts} == {"conv1", "gap", "classifier"}
    for t in shifts:
        assert np.load(g / t["files"]["npy"]).min() >= 0, t["name"]
        assert t["min"] >= 0
    for layer in manifest["layers"]:
        for key in ("rq_shift",):
            if key in layer.get("params", {}):
                assert min(layer["params"][key]["values"]) >= 0, layer["name"]


def test_requant_without_the_pass_fails_loudly_and_keeps_the_output(e2e):
    d, profile, model = e2e
    out = d / "unfixed.onnx"
    r = _cli("requant", model, "--profile", profile, "-o", out, "--calib", d / "calib.npz",
             "--disable", "multiplier_limits")
    assert r.returncode == 1 and out.exists()
    assert "does not satisfy profile 'nna-sym8-pow2-rshift' (2 violation(s))" in r.stderr
    assert "gap (node gap)" in r.stderr and "was written so you can inspect it" in r.stderr
