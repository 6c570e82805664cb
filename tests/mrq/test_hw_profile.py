"""Hardware profiles: shipped files load, malformed files fail with precise errors (every
independent problem at once), the JSON schema agrees with the loader, profiles are found along
the search path, host_ops resolve, to_dict round-trips, and check_tensor finds format
violations."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
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
SHIPPED = ["litert-default", "nna-a16w8", "nna-sym8", "nna-sym8-acc16", "nna-sym8-acc18", "nna-sym8-acc20",
           "nna-sym8-pow2",
           "nna-w4a4", "nna-w4a4-fl8", "nna-w4a8", "nna-w4a8-pow2", "onnxruntime-cpu",
           "onnxruntime-cpu-avx2", "onnxruntime-cpu-avx512", "onnxruntime-cpu-avxvnni", "tflite-int8"]


def _raw(name: str) -> dict:
    return yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text())


@pytest.fixture(autouse=True)
def _isolated_search_path(tmp_path_factory, monkeypatch):
    """Name lookups see the shipped profiles only, whatever the caller's environment and
    current directory hold."""
    monkeypatch.delenv(H.PROFILE_PATH_ENV, raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


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
    for key, op in H.OP_FIELDS.items():
        assert (getattr(p.ops, key) is not None) == p.supports(op), (key, op)
    assert p.host_ops == {} and not p.runs_on_host("Softmax")
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
        ("ort_fma", "fp32_zp_in", "ort_float", "requant")
    assert ort.ops.divider is True
    assert (ort.accumulator.bias, ort.accumulator.product_order) == ("first", "channel_row_col")
    assert ort.ops.quantize == H.QuantizeSpec("divide", "half_even")
    assert ort.ops.rescale == "float_dq_q"

    tfl = load_profile("tflite-int8")
    assert tfl.requant.rq_mode == "double_q31" and tfl.requant.rounding == "half_away"
    assert tfl.requant.multiplier_max == 2**31 - 1
    assert tfl.qmin_qmax("weights", "int8") == (-127, 127)
    assert tfl.qmin_qmax("activations", "int8") == (-128, 127)
    assert (tfl.ops.add, tfl.ops.mul, tfl.ops.avgpool, tfl.ops.global_avgpool) == \
        ("tflite", "requant", "tflite_raw", "requant")
    assert tfl.ops.quantize == H.QuantizeSpec("divide", "half_away")

    lit = load_profile("litert-default")
    assert lit.requant.rq_mode == "fp32" and lit.requant.rounding == "half_even"
    assert (lit.ops.mul, lit.ops.global_avgpool) == ("requant", "requant")

    sym8 = load_profile("nna-sym8")
    assert sym8.requant.rq_mode == "fixed" and sym8.requant.multiplier_bits == 16
    assert sym8.requant.multiplier_max == 65535 and sym8.requant.rounding == "half_up"
    assert sym8.ops.add == "fixed" and sym8.ops.avgpool == "fixed"
    assert sym8.ops.mul == sym8.ops.global_avgpool == "requant"
    assert sym8.activations.symmetric and sym8.weights.symmetric

    pow2 = load_profile("nna-sym8-pow2")
    assert pow2.requant.rq_mode == "shift" and pow2.requant.rounding == "half_up"
    assert pow2.activations.scale.form == pow2.weights.scale.form == "pow2"
    assert (pow2.ops.mul, pow2.ops.global_avgpool) == ("requant", "avgpool")

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


def _remove_op(op, *op_fields):
    """Drop ``op`` from supported_ops and the ops.* fields that would then be rejected."""
    def mut(d):
        d["supported_ops"].remove(op)
        for key in op_fields:
            del d["ops"][key]
    return mut


def _chain(*mutations):
    def mut(d):
        for m in mutations:
            m(d)
    return mut


# index of an op appended to nna-sym8's supported_ops, and of AveragePool in nna-sym8-pow2's
_APPENDED = f"supported_ops[{len(_raw('nna-sym8')['supported_ops'])}]"
_AVGPOOL_AT = _raw("nna-sym8-pow2")["supported_ops"].index("AveragePool")

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
     "requant.multiplier_bits", "[1, 32]", True),
    ("multiplier-bits-zero", "nna-sym8", _set("requant.multiplier_bits", 0),
     "requant.multiplier_bits", "[1, 32]", True),
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
    ("mul-old-vocabulary", "nna-sym8", _set("ops.mul", "fixed"), "ops.mul",
     "must be one of requant, fp32_zp_in; got 'fixed'", True),
    ("global-avgpool-old-vocabulary", "onnxruntime-cpu", _set("ops.global_avgpool", "fp32"),
     "ops.global_avgpool", "must be one of requant, avgpool; got 'fp32'", True),
    ("mul-zp-in-on-fixed-point", "nna-sym8", _set("ops.mul", "fp32_zp_in"), "ops.mul",
     "needs requant.arithmetic float32; requant.arithmetic is fixed_point", True),
    ("field-for-unsupported-op", "nna-sym8", _remove_op("Mul"), "ops.mul",
     "Mul is not in supported_ops; remove this field or add Mul (got 'requant')", True),
    ("softmax-field-for-unsupported-op", "onnxruntime-cpu", _remove_op("Softmax"),
     "ops.softmax", "Softmax is not in supported_ops; remove this field or add Softmax", True),
    ("field-missing-for-supported-op", "nna-sym8", _del("ops.add"), "ops.add",
     "missing required field: Add is in supported_ops (one of ort_fma", True),
    ("divider-not-bool", "nna-sym8", _set("ops.divider", "no"), "ops.divider",
     "must be true or false; got 'no'", True),
    ("divider-false-ort-float", "onnxruntime-cpu", _set("ops.divider", False), "ops.avgpool",
     "'ort_float' divides the window sum by its count, but ops.divider is false", True),
    ("divider-false-tflite-raw", "tflite-int8", _set("ops.divider", False), "ops.avgpool",
     "'tflite_raw' divides", True),
    ("global-avgpool-avgpool-without-avgpool", "nna-sym8-pow2",
     _remove_op("AveragePool", "avgpool"), "ops.global_avgpool",
     "AveragePool is not in supported_ops (so there is no ops.avgpool)", True),
    ("shared-grid-unsupported-op", "nna-sym8",
     _chain(_remove_op("Add", "add"), _set("ops.shared_grid", ["Add"])), "ops.shared_grid[0]",
     "Add is not in supported_ops", True),
    ("acc-bias-order", "nna-sym8-acc20", _set("accumulator.bias", "last"), "accumulator.bias",
     "must be first (the simulator implements only this order", True),
    ("acc-product-order", "nna-sym8-acc20", _set("accumulator.product_order", "col_row_channel"),
     "accumulator.product_order", "must be one of channel_row_col, row_col_channel (conv products",
     True),
    ("acc-pair-sums", "onnxruntime-cpu", _set("accumulator.pair_sums", "saturate_int8"),
     "accumulator.pair_sums", "must be one of exact, saturate_int16; got 'saturate_int8'", True),
    ("runtime-isa", "onnxruntime-cpu", _set("runtime_isa", "avx2"), "runtime_isa",
     "must be one of avx512f, fma3 (the x86 float kernels", True),
    # checks JSON Schema cannot express (the loader is stricter)
    ("acc-pair-sums-without-u8s8", "onnxruntime-cpu-avx2", _set("activations.signed", True),
     "accumulator.pair_sums", "changes only dot products of unsigned 8-bit activations and "
     "signed 8-bit weights, which this profile does not allow", False),
    ("acc-pair-sums-without-ort", "nna-sym8",
     _chain(_set("accumulator.pair_sums", "saturate_int16"),
            _set("accumulator.product_order", "row_col_channel")),
     "accumulator.pair_sums", "reproduces ONNX Runtime's u8s8 kernels (which ops pair, in which "
     "order) and needs runtime: onnxruntime; got runtime 'generic'", False),
    ("acc-pair-sums-order", "onnxruntime-cpu-avx2",
     _set("accumulator.product_order", "channel_row_col"), "accumulator.product_order",
     "must be row_col_channel with pair_sums saturate_int16", False),
    ("acc-order-without-pair-sums", "onnxruntime-cpu", _set("accumulator.product_order",
     "row_col_channel"), "accumulator.product_order", "decides only which products form the "
     "pairs of pair_sums saturate_int16", False),
    ("acc-pair-sums-saturating", "onnxruntime-cpu-avx2", _set("accumulator.overflow", "saturate"),
     "accumulator.pair_sums", "is simulated on a wrapping accumulator", False),
    ("runtime-isa-without-ort", "nna-sym8", _set("runtime_isa", "fma3"), "runtime_isa",
     "needs runtime: onnxruntime; got runtime 'generic'", False),
    ("multiplier-1-shift-max-0", "nna-sym8",
     _chain(_set("requant.multiplier_bits", 1), _set("requant.shift_max", 0)),
     "requant.shift_max", "must be >= 1 for arithmetic fixed_point: with shift_max 0 no "
     "multiplier below 1 is representable", True),
    ("shift-max-0-on-shift", "nna-sym8-pow2", _set("requant.shift_max", 0), "requant.shift_max",
     "must be >= 1 for arithmetic shift", True),
    ("double-q31-wide-accumulator", "tflite-int8", _set("accumulator.bits", 48),
     "requant.arithmetic", "double_q31 requantizes a 32-bit accumulator", True),
    ("host-unknown-op", "nna-sym8", _set("host_ops", ["Softmaxx"]), "host_ops[0]",
     "did you mean 'Softmax'?", True),
    ("host-unknown-op-mapping", "nna-sym8", _set("host_ops", {"Sofmax": "float"}),
     "host_ops.Sofmax", "did you mean 'Softmax'?", True),
    ("host-not-a-list", "nna-sym8", _set("host_ops", "Softmax"), "host_ops",
     "must be a list of op types", True),
    ("host-bad-arithmetic", "nna-sym8",
     _chain(_remove_op("Softmax", "softmax"), _set("host_ops", {"Softmax": 3})),
     "host_ops.Softmax", "must be float or the name of a profile", True),
    # checks JSON Schema cannot express (the loader is stricter)
    ("host-op-also-supported", "nna-sym8", _set("host_ops", ["Conv"]), "host_ops[0]",
     "Conv is also in supported_ops", False),
    ("host-profile-not-found", "nna-sym8",
     _chain(_remove_op("Softmax", "softmax"), _set("host_ops", {"Softmax": "tflite-int9"})),
     "host_ops.Softmax", "no profile named 'tflite-int9' on the search path (did you mean "
     "'tflite-int8'?)", False),
    ("host-profile-lacks-op", "tflite-int8",
     _chain(_remove_op("Tanh"), _set("host_ops", {"Tanh": "nna-sym8"})),
     "host_ops.Tanh", "does not support Tanh (not in its supported_ops)", False),
    ("pow2-exponents-leave-no-shift", "nna-sym8-pow2",
     _chain(_set("activations.scale.exponent_min", 0), _set("activations.scale.exponent_max", 0),
            _set("weights.scale.exponent_min", 0), _set("requant.shift_min", 1)),
     "requant.shift_min", "no conv can be requantized", False),
    ("quantize-method", "nna-sym8", _set("ops.quantize.method", "round"),
     "ops.quantize.method", "divide, multiply", True),
    ("unknown-op", "nna-sym8", _append_op("Conv2D"), _APPENDED, "did you mean 'Conv'", True),
    ("duplicate-op", "nna-sym8", _append_op("Conv"), _APPENDED, "duplicate", True),
    # a misspelt supported op does not also make the ops.* fields that depend on it errors
    ("misspelt-op-hides-op-checks", "nna-sym8-pow2",
     _chain(lambda d: d["supported_ops"].__setitem__(_AVGPOOL_AT, "AveragPool"),
            _del("ops.avgpool")),
     f"supported_ops[{_AVGPOOL_AT}]", "did you mean 'AveragePool'?", True),
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
    # one mistake, one problem: nothing that depends on the broken field is reported again
    assert len(e.errors) == 1 and "\n" not in msg, msg


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


def test_every_independent_problem_is_reported_at_once(tmp_path):
    data = _raw("nna-sym8")
    data["accumulator"]["overflow"] = "wrapp"
    data["requant"]["rounding"] = "nearest"
    data["ops"]["mul"] = "fixed"
    data["host_ops"] = ["Softmaxx"]
    data["weights"] = {"bits": 99}          # broken parent: its missing fields are not listed
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(HwProfileError) as ei:
        load_profile(path)
    e = ei.value
    fields = [f for _, f, _ in e.errors]
    assert sorted(fields) == sorted(["weights.bits", "weights.signed", "weights.symmetric",
                                     "weights.narrow_range", "weights.granularity",
                                     "weights.scale", "accumulator.overflow",
                                     "requant.rounding", "ops.mul", "host_ops[0]"])
    lines = str(e).splitlines()
    assert len(lines) == len(e.errors)
    for (p, f, m), line in zip(e.errors, lines):
        assert p == str(path) and line == f"{path}: field '{f}': {m}"
        assert "(line " in m or "(in the mapping at line " in m
    # in file order
    line_no = [int(line.rsplit("line ", 1)[1].rstrip(")")) for line in lines]
    assert line_no == sorted(line_no)
    assert (e.path, e.field) == (str(path), e.errors[0][1])


def test_broken_requant_block_skips_the_checks_that_depend_on_it(tmp_path):
    data = _raw("nna-sym8")
    data["requant"]["arithmetic"] = "fixedpoint"
    data["ops"]["add"] = "fixed"          # would need fixed_point or shift: not decidable
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(HwProfileError) as ei:
        load_profile(path)
    assert [f for _, f, _ in ei.value.errors] == ["requant.arithmetic"]


def test_multiplier_bits_1_is_a_valid_width(tmp_path):
    data = _raw("nna-sym8")
    data["requant"]["multiplier_bits"] = 1
    path = tmp_path / "m1.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    p = load_profile(path)
    assert p.requant.multiplier_bits == 1 and p.requant.multiplier_max == 1


def test_unsupported_ops_have_no_mode(tmp_path):
    data = _raw("nna-sym8")
    for op in ("Mul", "Softmax", "AveragePool"):
        data["supported_ops"].remove(op)
    for key in ("mul", "softmax", "avgpool"):
        del data["ops"][key]
    data["ops"]["divider"] = False
    path = tmp_path / "nomul.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    p = load_profile(path)
    assert (p.ops.mul, p.ops.softmax, p.ops.avgpool) == (None, None, None)
    assert p.ops.add == "fixed" and p.ops.divider is False
    assert not p.supports("Mul")


def test_divider_false_keeps_fixed_avgpool(tmp_path):
    data = _raw("nna-sym8")
    data["ops"]["divider"] = False
    path = tmp_path / "nodiv.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    p = load_profile(path)
    assert p.ops.divider is False and p.ops.avgpool == "fixed"


# --------------------------------------------------------------------------------------------
# host_ops


def _profile_file(dir_: Path, name: str, base: str = "nna-sym8", mutation=None) -> Path:
    data = copy.deepcopy(_raw(base))
    data["name"] = name
    if mutation:
        mutation(data)
    dir_.mkdir(parents=True, exist_ok=True)
    path = dir_ / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _host(spec):
    """Move Softmax from the NPU to the host with ``spec`` as host_ops."""
    return _chain(_remove_op("Softmax", "softmax"), _set("host_ops", spec))


def test_host_ops_list_means_float(tmp_path):
    path = _profile_file(tmp_path, "h", mutation=_host(["Softmax"]))
    p = load_profile(path)
    assert p.host_ops == {"Softmax": "float"}
    assert p.runs_on_host("Softmax") and not p.runs_on_host("Conv")
    assert p.host_profile("Softmax") is None and not p.supports("Softmax")
    assert p.ops.softmax is None


def test_host_ops_mapping_names_a_profile(tmp_path):
    path = _profile_file(tmp_path, "h", mutation=_host({"Softmax": "tflite-int8"}))
    p = load_profile(path)
    assert p.host_ops == {"Softmax": "tflite-int8"}
    ref = p.host_profile("Softmax")
    assert ref.name == "tflite-int8" and ref == load_profile("tflite-int8")
    hash(p)     # the dict fields do not make a profile unhashable


def test_host_profile_is_found_along_the_search_path(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    _profile_file(mine, "host-cpu", base="onnxruntime-cpu")
    path = _profile_file(tmp_path, "h", mutation=_host({"Softmax": "host-cpu"}))
    with pytest.raises(HwProfileError, match="no profile named 'host-cpu'"):
        load_profile(path)
    monkeypatch.setenv(H.PROFILE_PATH_ENV, str(mine))
    assert load_profile(path).host_profile("Softmax").source == str(mine / "host-cpu.yaml")


@pytest.mark.parametrize("ref_mutation,fragment", [
    (_host(["Softmax"]), "has host_ops itself; a host profile must run its ops itself (no chains)"),
    (_set("accumulator.overflow", "wrapp"), "does not load: accumulator.overflow: must be one of"),
])
def test_host_profile_must_load_and_not_chain(tmp_path, monkeypatch, ref_mutation, fragment):
    lib = tmp_path / "lib"
    _profile_file(lib, "helper", mutation=ref_mutation)
    monkeypatch.setenv(H.PROFILE_PATH_ENV, str(lib))
    path = _profile_file(tmp_path, "h", mutation=_host({"Softmax": "helper"}))
    with pytest.raises(HwProfileError) as ei:
        load_profile(path)
    assert [f for _, f, _ in ei.value.errors] == ["host_ops.Softmax"]
    assert fragment in str(ei.value) and "'helper'" in str(ei.value)


def test_host_profile_cycle_does_not_recurse(tmp_path, monkeypatch):
    monkeypatch.setenv(H.PROFILE_PATH_ENV, str(tmp_path))
    _profile_file(tmp_path, "a", mutation=_host({"Softmax": "b"}))
    _profile_file(tmp_path, "b", mutation=_host({"Softmax": "a"}))
    for name, other in (("a", "b"), ("b", "a")):
        with pytest.raises(HwProfileError, match=f"profile '{other}'.*no chains"):
            load_profile(name)


# --------------------------------------------------------------------------------------------
# search path


def _described(dir_: Path, name: str, desc: str) -> Path:
    return _profile_file(dir_, name, mutation=_set("description", desc))


def test_search_path_order(tmp_path, monkeypatch):
    env1, env2, cwd = tmp_path / "env1", tmp_path / "env2", tmp_path / "work"
    _described(env2, "nna-sym8", "from env2")
    _described(env2, "only-env2", "env2 only")
    _described(env1, "only-env2", "env1 wins")
    _described(cwd / "hw_profiles", "nna-sym8", "from cwd")
    _described(cwd / "hw_profiles", "only-cwd", "cwd only")
    monkeypatch.chdir(cwd)

    monkeypatch.setenv(H.PROFILE_PATH_ENV, os.pathsep.join([str(env1), "", str(tmp_path / "nope"),
                                                            str(env2)]))
    dirs = [(d, o) for d, o in H.profile_search_path()]
    assert dirs[:4] == [(env1, "MRQ_PROFILE_PATH"), (tmp_path / "nope", "MRQ_PROFILE_PATH"),
                        (env2, "MRQ_PROFILE_PATH"), (cwd / "hw_profiles", "./hw_profiles")]
    assert [o for _, o in dirs[4:]] == ["shipped"] * len(H.profile_dirs())
    assert load_profile("nna-sym8").description == "from env2"
    assert load_profile("only-env2").description == "env1 wins"
    assert load_profile("only-cwd").description == "cwd only"
    assert load_profile("tflite-int8").source == str(PROFILE_DIR / "tflite-int8.yaml")

    entries = [(e.name, e.origin, e.shadowed_by) for e in H.find_profiles()
               if e.name in ("nna-sym8", "only-env2")]
    assert entries == [
        ("nna-sym8", "MRQ_PROFILE_PATH", None),
        ("nna-sym8", "./hw_profiles", env2 / "nna-sym8.yaml"),
        ("nna-sym8", "shipped", env2 / "nna-sym8.yaml"),
        ("only-env2", "MRQ_PROFILE_PATH", None),
        ("only-env2", "MRQ_PROFILE_PATH", env1 / "only-env2.yaml"),
    ]
    names = [n for n, _ in H.list_profiles()]
    assert names == sorted(set(SHIPPED) | {"only-cwd", "only-env2"})

    monkeypatch.delenv(H.PROFILE_PATH_ENV)
    assert load_profile("nna-sym8").description == "from cwd"
    with pytest.raises(HwProfileError, match="no hardware profile named 'only-env2'"):
        load_profile("only-env2")
    monkeypatch.chdir(tmp_path)
    assert load_profile("nna-sym8").source == str(PROFILE_DIR / "nna-sym8.yaml")


def test_cwd_that_is_the_shipped_directory_is_listed_once(monkeypatch):
    monkeypatch.chdir(REPO)
    dirs = H.profile_search_path()
    assert [d.resolve() for d, _ in dirs].count(PROFILE_DIR.resolve()) == 1
    assert dict((d.resolve(), o) for d, o in dirs)[PROFILE_DIR.resolve()] == "shipped"


# --------------------------------------------------------------------------------------------
# to_dict (mrq profiles show) and bounded reading


@pytest.mark.parametrize("name", SHIPPED)
def test_to_dict_round_trips(tmp_path, name):
    p = load_profile(name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(p.to_dict(), sort_keys=False))
    assert load_profile(path) == dataclasses.replace(p, source=str(path))


def test_to_dict_round_trips_host_ops_and_optional_fields(tmp_path):
    src = _profile_file(tmp_path / "src", "h", base="nna-sym8-pow2", mutation=_chain(
        _host({"Softmax": "tflite-int8"}), _set("ops.divider", False),
        _set("accumulator.bias", "first")))
    p = load_profile(src)
    d = p.to_dict()
    assert d["host_ops"] == {"Softmax": "tflite-int8"} and "softmax" not in d["ops"]
    assert d["ops"]["divider"] is False and d["accumulator"]["product_order"] == "channel_row_col"
    path = tmp_path / "shown.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    q = load_profile(path)
    assert q == dataclasses.replace(p, source=str(path))
    assert q.host_profile("Softmax") == p.host_profile("Softmax")


def test_oversized_file_is_not_parsed(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * H.MAX_PROFILE_BYTES + "\n")
    with pytest.raises(HwProfileError, match=r"field '<file>': larger than 256 KiB"):
        load_profile(path)


def test_alias_bomb_and_deep_nesting_stay_bounded(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = (PROFILE_DIR / "nna-sym8.yaml").read_text()
    path = tmp_path / "bomb.yaml"
    path.write_text(text.replace("supported_ops: [", "x_bomb: {" + ", ".join(
        f"b{i}: {line.split(': ', 1)[1]}" for i, line in enumerate(lines)) + "}\nsupported_ops: ["))
    t0 = time.perf_counter()
    with pytest.raises(HwProfileError) as ei:
        load_profile(path)
    assert time.perf_counter() - t0 < 5
    # refused by the YAML loader's alias-expansion bound (mrq/safe_yaml.py), before any field
    assert [f for _, f, _ in ei.value.errors] == ["<document>"]
    assert "expands (through aliases)" in str(ei.value)

    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 50000 + "]" * 50000 + "\n")
    with pytest.raises(HwProfileError, match="<document>"):
        load_profile(deep)


# --------------------------------------------------------------------------------------------
# JSON schema


def test_schema_vocabulary_matches_loader():
    s = json.loads(SCHEMA_PATH.read_text())
    d = s["$defs"]
    assert d["rounding"]["enum"] == list(H.ROUNDING_MODES)
    # the vocabulary is the simulator's one rounding table itself, and every narrower rounding
    # enum (double_q31: gemmlowp or ruy) names modes of that table
    from simulator import rounding
    assert H.ROUNDING_MODES is rounding.NAMES

    def rounding_enums(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "rounding" and isinstance(value, dict) and "enum" in value:
                    yield value["enum"]
                yield from rounding_enums(value)
        elif isinstance(node, list):
            for value in node:
                yield from rounding_enums(value)

    narrower = list(rounding_enums(s))
    assert narrower and all(set(e) <= set(rounding.NAMES) for e in narrower)
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
    assert ops["divider"]["type"] == "boolean" and ops["divider"]["default"] is True
    assert d["ops"]["required"] == ["quantize", "rescale"]
    assert set(ops) == set(H.OP_FIELDS) | {"quantize", "rescale", "divider", "shared_grid"}
    acc = d["accumulator"]["properties"]
    assert acc["bias"]["enum"] == list(H.BIAS_ORDERS)
    assert acc["product_order"]["enum"] == list(H.PRODUCT_ORDERS)
    assert rq["multiplier_bits"]["minimum"] == H.MULTIPLIER_BITS[0]
    assert rq["multiplier_bits"]["maximum"] == H.MULTIPLIER_BITS[1]
    assert d["op"]["enum"] == list(H.KNOWN_OPS)
    assert s["properties"]["supported_ops"]["items"] == {"$ref": "#/$defs/op"}
    list_form, map_form = s["properties"]["host_ops"]["oneOf"]
    assert list_form["items"] == {"$ref": "#/$defs/op"}
    assert map_form["propertyNames"] == {"$ref": "#/$defs/op"}
    assert map_form["additionalProperties"]["pattern"] == H.NAME_RE.pattern
    # every ops.<field> is tied to its op: required when supported, forbidden otherwise
    tied = {c["if"]["properties"]["supported_ops"]["contains"]["const"]:
            (c["then"]["properties"]["ops"]["required"], c["else"]["properties"]["ops"]["properties"])
            for c in s["allOf"] if "else" in c}
    assert tied == {op: ([key], {key: False}) for key, op in H.OP_FIELDS.items()}
    assert d["tensor"]["properties"]["bits"]["minimum"] == H.ACT_BITS[0]
    assert d["tensor"]["properties"]["bits"]["maximum"] == H.ACT_BITS[1]
    assert s["properties"]["runtime"]["enum"] == list(H.RUNTIMES)
    assert s["properties"]["runtime_isa"]["enum"] == list(H.RUNTIME_ISAS)
    assert acc["pair_sums"]["enum"] == list(H.PAIR_SUMS)
    # the simulator keeps its own copy (it never imports mrq): the step parameter's values
    from simulator.kernels.pair_sums import PAIR_SUMS as STEP_PAIR_SUMS
    assert H.PAIR_SUMS == STEP_PAIR_SUMS
    assert set(s["required"]) == {f.name for f in dataclasses.fields(H.HwProfile)} - {
        "source", "runtime", "runtime_isa", "host_ops", "host_profiles", "layers"}
    assert set(s["properties"]) == set(H.TOP_REQUIRED) | set(H.TOP_OPTIONAL)


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


def test_onnxruntime_profiles_per_host_class():
    """One shipped ORT profile per x86-64 host class MLAS tells apart; the host's own is one of
    them, and each states the two facts that differ."""
    host = {"avx2": True, "fma": True}
    want = {(): ("onnxruntime-cpu-avx2", "saturate_int16", "fma3"),
            ("avxvnni",): ("onnxruntime-cpu-avxvnni", "exact", "fma3"),
            ("avx512f", "avx512bw"): ("onnxruntime-cpu-avx512", "saturate_int16", "avx512f"),
            ("avx512f", "avx512bw", "avx512vnni"): ("onnxruntime-cpu", "exact", "avx512f"),
            ("avx512f", "avx512bw", "avx512vnni", "amx-int8"): ("onnxruntime-cpu", "exact",
                                                                 "avx512f")}
    for extra, (name, pairs, isa) in want.items():
        assert H.onnxruntime_profile_for_host({**host, **dict.fromkeys(extra, True)}) == name
        prof = load_profile(name)
        assert (prof.accumulator.pair_sums, prof.runtime_isa) == (pairs, isa)
        assert prof.to_dict()["accumulator"]["pair_sums"] == pairs
        assert prof.to_dict()["runtime_isa"] == isa
    assert H.onnxruntime_profile_for_host() in {v[0] for v in want.values()}
    assert load_profile("nna-sym8").runtime_isa == ""
    assert "runtime_isa" not in load_profile("nna-sym8").to_dict()
