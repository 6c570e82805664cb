"""Hardware profiles: shipped files load, malformed files fail with precise errors, the JSON
schema agrees with the loader, and check_tensor finds format violations."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from mrq import hw_profile as H
from mrq.errors import HwProfileError, MrqError
from mrq.hw_profile import list_profiles, load_profile

REPO = Path(__file__).resolve().parents[2]
PROFILE_DIR = REPO / "hw_profiles"
SCHEMA_PATH = PROFILE_DIR / "schema.json"
SHIPPED = ["litert-default", "nna-a16w8", "nna-sym8", "nna-sym8-acc20", "nna-sym8-pow2",
           "nna-w4a8", "nna-w4a8-pow2", "onnxruntime-cpu", "tflite-int8"]


def _raw(name: str) -> dict:
    return yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text())


# --------------------------------------------------------------------------------------------
# shipped profiles


def test_list_profiles_names_and_descriptions():
    got = list_profiles()
    assert [n for n, _ in got] == SHIPPED
    for name, desc in got:
        assert isinstance(desc, str) and desc.strip() == desc and desc
        assert "\n" not in desc and len(desc) <= H.DESCRIPTION_MAX


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads(name):
    p = load_profile(name)
    assert p.name == name
    assert Path(p.source).resolve() == (PROFILE_DIR / f"{name}.yaml").resolve()
    # by path gives the same profile
    assert load_profile(PROFILE_DIR / f"{name}.yaml") == dataclasses.replace(
        p, source=str(PROFILE_DIR / f"{name}.yaml"))
    text = (PROFILE_DIR / f"{name}.yaml").read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=./schema.json"
    assert p.bias.bits <= p.accumulator.bits
    assert p.requant.rq_mode in H.RQ_MODES
    assert set(p.supported_ops) <= set(H.KNOWN_OPS)
    for role in ("activations", "weights"):
        for dt in p.tensor_format(role).dtypes():
            lo, hi = p.qmin_qmax(role, dt)
            assert np.iinfo(dt).min <= lo < hi <= np.iinfo(dt).max


def test_profiles_are_frozen():
    p = load_profile("nna-sym8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.name = "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.accumulator.bits = 16


def test_key_facts_of_shipped_profiles():
    ort = load_profile("onnxruntime-cpu")
    assert ort.activation_dtypes() == ("int8", "uint8")
    assert ort.weight_dtypes() == ("int8", "uint8")
    assert ort.weights.granularity == "per_channel"
    assert ort.weights.zero_point_granularity == "per_tensor"
    assert ort.requant.rq_mode == "fp32" and ort.requant.rounding == "half_even"
    assert ort.requant.multiplier_precision == "float32"
    assert (ort.ops.add, ort.ops.mul, ort.ops.avgpool, ort.ops.global_avgpool) == \
        ("ort_fma", "fp32_zp_in", "ort_float", "fp32")
    assert ort.ops.quantize == H.QuantizeSpec("divide", "half_even")
    assert ort.ops.rescale == "float_dq_q"

    tfl = load_profile("tflite-int8")
    assert tfl.requant.rq_mode == "double_q31" and tfl.requant.rounding == "half_away"
    assert tfl.requant.multiplier_max == 2**31 - 1
    assert tfl.qmin_qmax("weights", "int8") == (-127, 127)
    assert tfl.qmin_qmax("activations", "int8") == (-128, 127)
    assert (tfl.ops.add, tfl.ops.avgpool) == ("tflite", "tflite_raw")
    assert tfl.ops.quantize == H.QuantizeSpec("divide", "half_away")

    lit = load_profile("litert-default")
    assert lit.requant.rq_mode == "fp32" and lit.requant.rounding == "half_even"

    sym8 = load_profile("nna-sym8")
    assert sym8.requant.rq_mode == "fixed" and sym8.requant.multiplier_bits == 16
    assert sym8.requant.multiplier_max == 65535 and sym8.requant.rounding == "half_up"
    assert sym8.ops.add == "fixed" and sym8.ops.avgpool == "fixed"
    assert sym8.activations.symmetric and sym8.weights.symmetric

    pow2 = load_profile("nna-sym8-pow2")
    assert pow2.requant.rq_mode == "shift" and pow2.requant.rounding == "half_up"
    assert pow2.activations.scale.form == pow2.weights.scale.form == "pow2"

    a16 = load_profile("nna-a16w8")
    assert a16.activation_dtypes() == ("int16",) and a16.weight_dtypes() == ("int8",)
    assert a16.accumulator.bits == 48 and a16.accumulator_dtype() == "int64"
    assert a16.bias_dtype() == "int64"

    acc20 = load_profile("nna-sym8-acc20")
    assert (acc20.accumulator.bits, acc20.accumulator.overflow) == (20, "saturate")
    assert acc20.qmin_qmax("accumulator") == (-2**19, 2**19 - 1)

    w4 = load_profile("nna-w4a8")
    assert w4.weight_dtypes() == ("int8",) and w4.qmin_qmax("weights", "int8") == (-7, 7)
    assert w4.requant.rq_mode == "fixed"
    w4p = load_profile("nna-w4a8-pow2")
    assert w4p.requant.rq_mode == "shift" and w4p.weights.bits == 4
    assert w4p.weights.scale.form == "pow2"


def test_qmin_qmax_rejects_disallowed_dtype():
    with pytest.raises(ValueError, match="uint8"):
        load_profile("nna-sym8").qmin_qmax("activations", "uint8")


# --------------------------------------------------------------------------------------------
# malformed profiles: (id, base profile, mutation, field, fragment of the message, schema rejects)


def _set(path, value):
    def mut(d):
        *parents, last = path.split(".")
        for k in parents:
            d = d[k]
        d[last] = value
    return mut


def _del(path):
    def mut(d):
        *parents, last = path.split(".")
        for k in parents:
            d = d[k]
        del d[last]
    return mut


def _append_op(op):
    return lambda d: d["supported_ops"].append(op)


MALFORMED = [
    ("wrong-enum", "nna-sym8", _set("accumulator.overflow", "wrapp"), "accumulator.overflow",
     "must be one of wrap, saturate, error; got 'wrapp'", True),
    ("missing-field", "nna-sym8", _del("accumulator.overflow"), "accumulator.overflow",
     "missing required field", True),
    ("missing-block", "nna-sym8", _del("requant"), "requant", "missing required field", True),
    ("unknown-field", "nna-sym8", _set("accumulator.overfow", "wrap"), "accumulator.overfow",
     "unknown field; allowed fields of 'accumulator' are bits, overflow", True),
    ("unknown-top-field", "nna-sym8", _set("vendor", "acme"), "vendor", "allowed fields", True),
    ("wrong-type-str", "nna-sym8", _set("accumulator.bits", "32"), "accumulator.bits",
     "must be an integer in [16, 64]", True),
    ("wrong-type-bool", "nna-sym8", _set("activations.bits", True), "activations.bits",
     "must be an integer in [2, 16]", True),
    ("wrong-type-mapping", "nna-sym8", _set("weights", [8]), "weights", "must be a mapping", True),
    ("bits-too-big", "nna-sym8", _set("weights.bits", 32), "weights.bits",
     "must be an integer in [2, 16]; got 32", True),
    ("acc-bits-too-small", "nna-sym8", _set("accumulator.bits", 8), "accumulator.bits",
     "[16, 64]", True),
    ("signed-enum", "nna-sym8", _set("activations.signed", "maybe"), "activations.signed",
     "true, false, any", True),
    ("act-per-channel", "nna-sym8", _set("activations.granularity", "per_channel"),
     "activations.granularity", "must be per_tensor", True),
    ("zp-granularity-finer", "nna-sym8-pow2", _set("activations.zero_point_granularity",
                                                   "per_channel"),
     "activations.zero_point_granularity", "never finer", True),
    ("scale-form", "nna-sym8", _set("weights.scale.form", "log"), "weights.scale.form",
     "float, fixed_point, pow2", True),
    ("mantissa-on-float", "nna-sym8", _set("weights.scale.mantissa_bits", 8),
     "weights.scale.mantissa_bits", "only with fixed_point", True),
    ("fixed-point-no-mantissa", "nna-sym8", _set("weights.scale.form", "fixed_point"),
     "weights.scale.mantissa_bits", "missing required field", True),
    ("rounding-enum", "nna-sym8", _set("requant.rounding", "nearest"), "requant.rounding",
     "half_even, half_away, half_up, floor, toward_zero", True),
    ("multiplier-bits-missing", "nna-sym8", _del("requant.multiplier_bits"),
     "requant.multiplier_bits", "missing required field", True),
    ("multiplier-bits-range", "nna-sym8", _set("requant.multiplier_bits", 40),
     "requant.multiplier_bits", "[2, 32]", True),
    ("shift-on-float32", "onnxruntime-cpu", _set("requant.shift_min", 0), "requant.shift_min",
     "not allowed when arithmetic is float32", True),
    ("multiplier-bits-on-q31", "tflite-int8", _set("requant.multiplier_bits", 31),
     "requant.multiplier_bits", "only with fixed_point", True),
    ("precision-on-shift", "nna-sym8-pow2", _set("requant.multiplier_precision", "float64"),
     "requant.multiplier_precision", "not allowed when arithmetic is shift", True),
    ("zp-before-fixed", "nna-sym8", _set("requant.zero_point", "before_rounding"),
     "requant.zero_point", "before_rounding needs float32", True),
    ("q31-half-even", "tflite-int8", _set("requant.rounding", "half_even"), "requant.rounding",
     "half_away, half_up", True),
    ("q31-shift-range", "tflite-int8", _set("requant.shift_min", 0), "requant.shift_min",
     "[1, 62]", True),
    ("bias-scale", "nna-sym8", _set("bias.scale", "own"), "bias.scale",
     "input_scale * weight_scale", True),
    ("add-enum", "nna-sym8", _set("ops.add", "fma"), "ops.add",
     "ort_fma, tflite, fixed, float", True),
    ("add-fixed-needs-int", "onnxruntime-cpu", _set("ops.add", "fixed"), "ops.add",
     "requant.arithmetic fixed_point or shift", True),
    ("mul-fixed-on-shift", "nna-sym8-pow2", _set("ops.mul", "fixed"), "ops.mul",
     "requant.arithmetic fixed_point", True),
    ("quantize-method", "nna-sym8", _set("ops.quantize.method", "round"),
     "ops.quantize.method", "divide, multiply", True),
    ("unknown-op", "nna-sym8", _append_op("Conv2D"), "supported_ops[18]", "did you mean 'Conv'",
     True),
    ("duplicate-op", "nna-sym8", _append_op("Conv"), "supported_ops[18]", "duplicate", True),
    ("bad-name", "nna-sym8", _set("name", "NNA Sym8"), "name", "lower-case", True),
    ("multiline-description", "nna-sym8", _set("description", "two\nlines"), "description",
     "one non-empty line", True),
    # checks JSON Schema cannot express (the loader is stricter)
    ("bias-wider-than-acc", "nna-sym8", _set("bias.bits", 40), "bias.bits",
     "must be <= accumulator.bits (32)", False),
    ("shift-min-gt-max", "nna-sym8", _set("requant.shift_min", 50), "requant.shift_max",
     "must be >= shift_min (50)", False),
    ("exponent-min-gt-max", "nna-sym8-pow2", _set("activations.scale.exponent_min", 9),
     "activations.scale.exponent_max", "must be >= exponent_min (9)", False),
    ("float-for-int", "nna-sym8", _set("accumulator.bits", 32.0), "accumulator.bits",
     "must be an integer", False),
]


def _write(tmp_path: Path, base: str, mutation) -> tuple[Path, dict]:
    data = copy.deepcopy(_raw(base))
    mutation(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, data


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_profile_error_names_file_field_and_allowed(tmp_path, case):
    _, base, mutation, field, fragment, _ = case
    path, _ = _write(tmp_path, base, mutation)
    with pytest.raises(HwProfileError) as ei:
        load_profile(path)
    e = ei.value
    msg = str(e)
    assert isinstance(e, MrqError)
    assert e.path == str(path) and e.field == field
    assert msg.startswith(f"{path}: field '{field}': "), msg
    assert fragment in msg, msg
    assert "(line " in msg or "(in the mapping at line " in msg, msg
    assert "\n" not in msg


def test_line_number_points_at_the_field(tmp_path):
    text = (PROFILE_DIR / "nna-sym8.yaml").read_text().replace("overflow: wrap",
                                                                "overflow: wrapp")
    path = tmp_path / "p.yaml"
    path.write_text(text)
    line = 1 + next(i for i, s in enumerate(text.splitlines()) if "overflow: wrapp" in s)
    with pytest.raises(HwProfileError, match=rf"accumulator\.overflow.*\(line {line}\)"):
        load_profile(path)


def test_duplicate_key_rejected(tmp_path):
    text = (PROFILE_DIR / "nna-sym8.yaml").read_text().replace(
        "  overflow: wrap", "  overflow: wrap\n  overflow: saturate")
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(HwProfileError, match=r"field 'accumulator\.overflow': duplicate key"):
        load_profile(path)


def test_yaml_syntax_error_has_line(tmp_path):
    path = tmp_path / "syntax.yaml"
    path.write_text("name: x\ndescription: y\nactivations: {bits: 8, signed: true\n"
                    "weights: 3\n")
    with pytest.raises(HwProfileError) as ei:
        load_profile(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: field '<document>': YAML syntax error at line ")
    assert ei.value.field == "<document>"


@pytest.mark.parametrize("text,fragment", [("- a\n- b\n", "got a list"),
                                           ("just a string\n", "got the string"),
                                           ("", "the file is empty")])
def test_not_a_mapping(tmp_path, text, fragment):
    path = tmp_path / "nm.yaml"
    path.write_text(text)
    with pytest.raises(HwProfileError) as ei:
        load_profile(path)
    assert str(ei.value).startswith(f"{path}: field '<document>': ")
    assert fragment in str(ei.value)
    if text:
        assert "must be a mapping" in str(ei.value) and "(line 1)" in str(ei.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(HwProfileError, match=r"nope\.yaml: field '<file>': file not found"):
        load_profile(path)
    with pytest.raises(HwProfileError, match="file not found"):
        load_profile(str(path))


def test_unknown_profile_name_lists_available():
    with pytest.raises(HwProfileError) as ei:
        load_profile("nna-sym9")
    msg = str(ei.value)
    assert ei.value.field == "<file>"
    assert "did you mean 'nna-sym8'" in msg
    for name in SHIPPED:
        assert name in msg


# --------------------------------------------------------------------------------------------
# JSON schema


def test_schema_vocabulary_matches_loader():
    s = json.loads(SCHEMA_PATH.read_text())
    d = s["$defs"]
    assert d["rounding"]["enum"] == list(H.ROUNDING_MODES)
    assert d["accumulator"]["properties"]["overflow"]["enum"] == list(H.OVERFLOW_MODES)
    assert d["scale"]["properties"]["form"]["enum"] == list(H.SCALE_FORMS)
    rq = d["requant"]["properties"]
    assert rq["arithmetic"]["enum"] == list(H.REQUANT_ARITHMETIC)
    assert rq["zero_point"]["enum"] == list(H.ZERO_POINT_PLACEMENTS)
    assert rq["multiplier_precision"]["enum"] == list(H.MULTIPLIER_PRECISIONS)
    ops = d["ops"]["properties"]
    assert ops["add"]["enum"] == list(H.ADD_MODES)
    assert ops["mul"]["enum"] == list(H.MUL_MODES)
    assert ops["avgpool"]["enum"] == list(H.AVGPOOL_MODES)
    assert ops["global_avgpool"]["enum"] == list(H.GLOBAL_AVGPOOL_MODES)
    assert ops["rescale"]["enum"] == list(H.RESCALE_MODES)
    assert ops["softmax"]["enum"] == list(H.SOFTMAX_MODES)
    assert ops["quantize"]["properties"]["method"]["enum"] == list(H.QUANTIZE_METHODS)
    assert s["properties"]["supported_ops"]["items"]["enum"] == list(H.KNOWN_OPS)
    assert d["tensor"]["properties"]["bits"]["minimum"] == H.ACT_BITS[0]
    assert d["tensor"]["properties"]["bits"]["maximum"] == H.ACT_BITS[1]
    assert s["properties"]["runtime"]["enum"] == list(H.RUNTIMES)
    assert set(s["required"]) == {f.name for f in dataclasses.fields(H.HwProfile)} - {"source", "runtime"}


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_validates_against_schema(validator, name):
    errors = [e.message for e in validator.iter_errors(_raw(name))]
    assert errors == []


def test_schema_and_loader_agree_on_malformed(validator, tmp_path):
    for cid, base, mutation, _, _, schema_rejects in MALFORMED:
        path, data = _write(tmp_path, base, mutation)
        with pytest.raises(HwProfileError):
            load_profile(path)
        errors = list(validator.iter_errors(data))
        assert bool(errors) == schema_rejects, (cid, [e.message for e in errors])


# --------------------------------------------------------------------------------------------
# check_tensor


def test_check_tensor_conforming():
    ort = load_profile("onnxruntime-cpu")
    assert ort.check_tensor("activations", "uint8", 0.02, 128) == []
    assert ort.check_tensor("activations", np.int8, np.float32(0.02), np.int8(-3)) == []
    assert ort.check_tensor("weights", "int8", [0.1, 0.2, 0.3], [0, 0, 0], axis=0) == []
    sym = load_profile("nna-sym8")
    assert sym.check_tensor("weights", "int8", np.array([0.1, 0.2], np.float32), 0, axis=0,
                            values=np.array([[-127, 127], [3, 4]], np.int8)) == []
    assert sym.check_tensor("bias", "int32", [0.001, 0.002], 0, axis=0,
                            values=np.array([-5, 1000], np.int32)) == []


def test_check_tensor_pow2():
    p = load_profile("nna-sym8-pow2")
    assert p.check_tensor("activations", "int8", 0.25, 0) == []
    assert p.check_tensor("activations", "int8", 2.0**-24, 0) == []
    v = p.check_tensor("activations", "int8", 0.3, 0)
    assert len(v) == 1 and "not an exact power of two" in v[0] and "0.3" in v[0]
    # float32 0.1 is not a power of two; tolerance is zero
    v = p.check_tensor("activations", "int8", np.float32(0.1), 0)
    assert len(v) == 1 and "power of two" in v[0]
    # 0.25 * (1 + 2**-23), the float32 next to 0.25
    v = p.check_tensor("activations", "int8", np.nextafter(np.float32(0.25), np.float32(1)), 0)
    assert len(v) == 1 and "power of two" in v[0]
    v = p.check_tensor("weights", "int8", [0.5, 0.375, 0.125, 0.3], [0, 0, 0, 0], axis=0)
    assert len(v) == 1 and "at channels 1, 3" in v[0]
    v = p.check_tensor("activations", "int8", 2.0**-30, 0)
    assert len(v) == 1 and "exponent" in v[0] and "-30" in v[0] and "[-24, 8]" in v[0]
    v = p.check_tensor("weights", "int8", [2.0, 0.5], 0, axis=0)
    assert len(v) == 1 and "at channel 0" in v[0] and "[-24, 0]" in v[0]


def test_check_tensor_fixed_point_mantissa_bits():
    p = load_profile("nna-sym8")
    fp = dataclasses.replace(p, weights=dataclasses.replace(
        p.weights, scale=H.ScaleFormat("fixed_point", mantissa_bits=4)))
    assert fp.check_tensor("weights", "int8", [0.75, 0.9375, 2.0**-20, 12.0], 0, axis=0) == []
    v = fp.check_tensor("weights", "int8", [0.75, 31 / 32], 0, axis=0)
    assert len(v) == 1 and "needs 5 mantissa bits" in v[0] and "allows 4" in v[0]
    assert "at channel 1" in v[0]
    v = fp.check_tensor("weights", "int8", np.float32(0.1), 0)
    assert len(v) == 1 and "needs 24 mantissa bits" in v[0]


def test_check_tensor_symmetric_signedness_granularity():
    sym = load_profile("nna-sym8")
    v = sym.check_tensor("activations", "int8", 0.1, 3)
    assert len(v) == 1 and "symmetric" in v[0] and "must be 0" in v[0]
    v = sym.check_tensor("activations", "uint8", 0.1, 128)
    assert len(v) == 1 and "dtype uint8 not allowed" in v[0] and "int8" in v[0]
    v = sym.check_tensor("weights", "int8", [0.1, 0.2], [0, 1], axis=0)
    assert len(v) == 1 and "zero point 1 at channel 1" in v[0]
    v = sym.check_tensor("activations", "int8", [0.1, 0.2], 0, axis=1)
    assert len(v) == 1 and "per_tensor only" in v[0]
    # equal per-channel values are per-tensor in effect
    assert sym.check_tensor("activations", "int8", [0.1, 0.1], [0, 0], axis=1) == []
    v = sym.check_tensor("activations", "int8", -0.1, 0)
    assert len(v) == 1 and "positive and finite" in v[0]

    ort = load_profile("onnxruntime-cpu")
    v = ort.check_tensor("weights", "uint8", [0.1, 0.2], [128, 127], axis=0)
    assert len(v) == 1 and "one zero point per tensor" in v[0]
    v = ort.check_tensor("activations", "uint8", 0.1, 300)
    assert len(v) == 1 and "outside" in v[0] and "[0, 255]" in v[0]
    v = ort.check_tensor("activations", "int16", 0.1, 0)
    assert len(v) == 1 and "dtype int16 not allowed" in v[0]


def test_check_tensor_narrow_range_and_4bit_values():
    sym = load_profile("nna-sym8")
    v = sym.check_tensor("weights", "int8", 0.1, 0, values=np.array([-128, 5], np.int8))
    assert len(v) == 1 and "[-127, 127]" in v[0] and "narrow range" in v[0]
    assert sym.check_tensor("activations", "int8", 0.1, 0,
                            values=np.array([-128, 127], np.int8)) == []
    w4 = load_profile("nna-w4a8")
    assert w4.check_tensor("weights", "int8", 0.1, 0, values=np.array([-7, 7], np.int8)) == []
    v = w4.check_tensor("weights", "int8", 0.1, 0, values=np.array([-8, 3, 8], np.int8))
    assert len(v) == 1 and "2 outside the allowed [-7, 7]" in v[0] and "4-bit" in v[0]


def test_check_tensor_bias():
    tfl = load_profile("tflite-int8")
    v = tfl.check_tensor("bias", "int64", 0.001, 0)
    assert len(v) == 1 and "dtype int64 not allowed" in v[0]
    v = tfl.check_tensor("bias", "int32", 0.001, 1)
    assert len(v) == 1 and "zero point must be 0" in v[0]
    a16 = load_profile("nna-a16w8")
    assert a16.check_tensor("bias", "int64", 0.001, 0, values=np.array([2**40])) == []
    v = load_profile("nna-sym8-acc20").check_tensor("bias", "int32", 0.001, 0,
                                                    values=np.array([2**19]))
    assert len(v) == 1 and "20-bit" in v[0]


def test_check_tensor_unknown_role():
    with pytest.raises(ValueError):
        load_profile("nna-sym8").check_tensor("output", "int8", 0.1, 0)
