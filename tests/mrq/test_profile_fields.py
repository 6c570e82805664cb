"""The profile is the truth: every field of every shipped profile, changed to each other value
the schema allows, changes the lowered program or the check verdict on a model that exercises
it, or is refused when the profile loads. A field that changes nothing is a field the simulator
silently ignores, and fails this test."""
from __future__ import annotations

import copy
import hashlib
import json
import pathlib
import sys

import numpy as np
import onnx
import pytest
import yaml
from onnx import helper

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from mrq.errors import MrqError  # noqa: E402
from mrq.hw_profile import load_profile  # noqa: E402
from tests.parity import zoo  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "hw_profiles" / "schema.json").read_text())
PROFILES = sorted(p.stem for p in (ROOT / "hw_profiles").glob("*.yaml"))
# Fields that name or describe a profile: they change no arithmetic by design.
METADATA = {"name", "description"}
# yaml.safe_dump's dumper; libyaml's emitter where PyYAML has it (the same text for these
# profiles, in a fraction of the time: the test writes ~1,500 of them)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


# --------------------------------------------------------------------------------------------
# A model with every op kind the lowering has a profile field for
# --------------------------------------------------------------------------------------------
def _float_model() -> onnx.ModelProto:
    rng = np.random.default_rng(12)
    b = zoo._Builder(rng)
    x = zoo.FM(zoo.INPUT_NAME, 4, 12, 12)
    x = b.conv(x)
    x = b.residual(x)
    x = b.mul(x)
    x = b.concat(x)
    x = b.maxpool(x)
    x = b.avgpool(x)
    x = b.squeeze_excite(x)
    outs = b.head(x)
    (prob,) = b.node("Softmax", [outs[0][0]], axis=-1)
    graph = helper.make_graph(
        b.nodes, "profile_fields",
        [helper.make_tensor_value_info(zoo.INPUT_NAME, onnx.TensorProto.FLOAT, ["N", 4, 12, 12])],
        [helper.make_tensor_value_info(prob, onnx.TensorProto.FLOAT, outs[0][1])],
        initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", zoo.OPSET)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    from mrq.onnx_import import load_model
    path = tmp_path_factory.mktemp("fields") / "model.onnx"
    cfg = zoo.QuantConfig("QDQ", "QUInt8", "QInt8", True, False, True)
    zoo.quantize(_float_model(), path, cfg, zoo.calibration_batches((4, 12, 12), 1.0, 3))
    g = load_model(str(path))
    ops = {n.op for n in g.nodes}
    assert {"Conv", "Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool",
            "Softmax", "Gemm"} <= ops, ops
    return g


# --------------------------------------------------------------------------------------------
# What a user can observe of a profile on that model
# --------------------------------------------------------------------------------------------
def _digest_value(h, value) -> None:
    if isinstance(value, np.ndarray):
        h.update(value.dtype.str.encode() + repr(value.shape).encode() + value.tobytes())
    elif isinstance(value, (tuple, list)):
        for v in value:
            _digest_value(h, v)
    else:
        h.update(repr(value).encode())


def _format_probes():
    """Tensors on grids that a format field admits or refuses: every storage dtype, zero points
    symmetric or not, narrow-range codes, pow2 / fixed-point / arbitrary / tiny / huge scales,
    per-channel scales and zero points, values near each width's limits."""
    rng = np.random.default_rng(5)
    scales = [np.float32(0.25), np.float32(0.1), np.float32(2.0 ** -30), np.float32(2.0 ** 20),
              np.float32(3 * 2.0 ** -9), np.array([0.5, 0.125, 0.3], np.float32)]
    probes = []
    for dtype in ("int8", "uint8", "int16", "uint16", "int32"):
        info = np.iinfo(dtype)
        mid = (int(info.min) + int(info.max) + 1) // 2
        for zp in sorted({0, mid, mid + 3}):
            for scale in scales:
                zps = zp if np.ndim(scale) == 0 else np.array([zp, zp, zp + (dtype != "int32")])
                values = np.array([info.min, info.min + 1, 0, info.max], np.int64)
                values = np.concatenate([values, rng.integers(info.min, info.max, 8,
                                                              dtype=np.int64, endpoint=True)])
                probes.append((dtype, scale, zps, 0 if np.ndim(scale) else None, values))
    for bits in (7, 8, 15, 16, 30, 31):
        probes.append(("int32", np.float32(0.01), 0, None, np.array([-(2 ** bits), 2 ** bits])))
    for bits in (40, 46, 47, 62):
        probes.append(("int64", np.float32(0.01), 0, None, np.array([-(2 ** bits), 2 ** bits])))
    return probes


FORMAT_PROBES = _format_probes()
REAL_MULTIPLIERS = np.concatenate([
    [2.0 ** -60, 2.0 ** -40, 2.0 ** -31.3, 2.0 ** -20, 1e-5, 0.3, 0.999, 1.0, 1.5, 3.7,
     2.0 ** 20, 2.0 ** 29.7],
    np.random.default_rng(9).uniform(2.0 ** -14, 1.0, 2000)])


# (activations, weights, bias formats) -> the lines of _format_lines
_FORMAT_LINES: dict = {}


def _format_lines(profile) -> tuple:
    """The check of every format probe. HwProfile.check_tensor reads only the profile's
    activation, weight and bias formats (frozen dataclasses), so the lines are computed once per
    distinct triple of them: a mutation that leaves the three as they were gets the lines it
    would compute. (Were check_tensor to read another field, that field's mutations would get
    the base profile's lines and be reported as changing nothing: a failure, never a pass.)"""
    key = (profile.activations, profile.weights, profile.bias)
    if key not in _FORMAT_LINES:
        lines = []
        for role in ("activations", "weights", "bias"):
            for dtype, scale, zp, axis, values in FORMAT_PROBES:
                try:
                    lines += profile.check_tensor(role, dtype, scale, zp, axis, values=values)
                except (ValueError, TypeError) as err:
                    lines.append(f"{role}: {err}")
        _FORMAT_LINES[key] = tuple(lines)
    return _FORMAT_LINES[key]


def _probe(profile, graph) -> tuple:
    """The check of every format probe, and the requantization parameters the lowering
    derives for a battery of real multipliers (limits and encodings a model may not hit)."""
    from mrq.ir import QParams
    from mrq.lower import _Lowerer, arithmetic_from_profile
    lines = _format_lines(profile)
    h = hashlib.sha256()
    lowerer = _Lowerer(graph, arithmetic_from_profile(profile))
    out_qp = QParams(np.array([1.0], np.float32), np.array([0], np.int64), "int8")
    try:
        block = lowerer.requant_block(REAL_MULTIPLIERS, out_qp, None, -1)
        for key, value in sorted(block.items()):
            h.update(key.encode())
            _digest_value(h, value)
        for v in getattr(lowerer, "_limit_violations", lambda: [])():
            h.update(str(v).encode())
    except MrqError as err:
        h.update(f"error: {type(err).__name__}".encode())
    # a runtime's own float kernel in a table op (runtime: onnxruntime): Logistic on a grid
    # where MLAS's clamp at -18 changes codes (tests/mrq/test_pointwise_ort.py ADVERSARIAL)
    x_qp = QParams(np.array([0.0791], np.float32), np.array([115], np.int64), "int8")
    y_qp = QParams(np.array([7.6e-09], np.float32), np.array([-36], np.int64), "int8")
    h.update(lowerer.pointwise_table("Logistic", {}, x_qp, y_qp).tobytes())
    # an 8-bit Add whose scale ratio (300) XNNPACK refuses: runtime xnnpack then runs the
    # profile's ops.add, which the model's own adds (all taken by XNNPACK) never reach
    h.update(_add_probe(profile).encode())
    h.update(_float_softmax_probe(profile).encode())
    return lines, h.hexdigest()


def _add_probe(profile) -> str:
    from mrq.ir import Graph, Node, QParams, Tensor

    def qp(scale, zp):
        return QParams(np.array([scale], np.float32), np.array([zp], np.int64), "uint8")

    tensors = {"a": Tensor("a", (None, 8), "uint8", qp(0.9, 128)),
               "b": Tensor("b", (None, 8), "uint8", qp(0.01, 120)),
               "y": Tensor("y", (None, 8), "uint8", qp(0.003, 130))}
    g = Graph(tensors, [Node("Add", "probe_add", ["a", "b"], ["y"], {})], ["a", "b"], ["y"])
    return _steps_digest(profile, g)


def _float_softmax_probe(profile) -> str:
    """A float Softmax island (runtime onnxruntime: MLAS's float kernels, which runtime_isa
    selects; the model's own Softmax is ORT's table-driven QLinearSoftmax)."""
    from mrq.ir import Graph, Node, Tensor

    tensors = {n: Tensor(n, (None, 20), "float32", None) for n in ("x", "y")}
    g = Graph(tensors, [Node("FloatSoftmax", "probe_softmax", ["x"], ["y"], {"axis": -1})],
              ["x"], ["y"])
    return _steps_digest(profile, g)


def _steps_digest(profile, g) -> str:
    """The digest of ``g``'s lowered steps under ``profile``, or the lowering's error."""
    from mrq.lower import arithmetic_from_profile, lower
    try:
        steps = lower(g, arithmetic_from_profile(profile)).program.steps
    except MrqError as err:
        return f"error: {type(err).__name__}"
    h = hashlib.sha256()
    for step in steps:
        h.update(step.kind.encode())
        for key, value in sorted(dict(step.params).items()):
            h.update(key.encode())
            _digest_value(h, value)
    return h.hexdigest()


def observe(profile, graph) -> tuple:
    """(lowered program digest or the lowering's error, the check verdict's lines, the
    probes)."""
    from mrq.commands.check import check_model
    from mrq.lower import arithmetic_from_profile, lower
    try:
        lowered_model = lower(graph, arithmetic_from_profile(profile))
        program = lowered_model.program
        h = hashlib.sha256()
        # which steps run on the host is part of what a profile decides
        h.update(repr(sorted(lowered_model.placement.items())).encode())
        for step in program.steps:
            h.update(f"{step.kind}|{step.name}|{step.inputs}|{step.outputs}".encode())
            for key, value in sorted(dict(step.params).items()):
                h.update(key.encode())
                _digest_value(h, value)
        lowered = h.hexdigest()
    except MrqError as err:
        lowered = f"error: {type(err).__name__}"
    try:
        lines = tuple(check_model(graph, profile)[0])
    except MrqError as err:
        lines = (f"error: {type(err).__name__}",)
    return lowered, lines, _probe(profile, graph)


# --------------------------------------------------------------------------------------------
# Every field, every other allowed value
# --------------------------------------------------------------------------------------------
def _resolve(node):
    while "$ref" in node:
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target = SCHEMA
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **extra, "properties": {**target.get("properties", {}),
                                                  **extra.get("properties", {})}}
    return node


def _alternatives(schema, current):
    schema = _resolve(schema)
    if "const" in schema:
        return []
    if "enum" in schema:
        return [v for v in schema["enum"] if v != current or type(v) is not type(current)]
    kind = schema.get("type")
    if kind == "boolean":
        return [not current] if isinstance(current, bool) else [True, False]
    if kind == "integer":
        lo, hi = schema.get("minimum", -64), schema.get("maximum", 64)
        if isinstance(current, int):
            cands = {lo, hi, current - 1, current + 1}
        else:
            # an absent bound: its extreme values are the same as no bound, so try values
            # inside the range
            cands = {-20, -5, 0, 5}
        return sorted(v for v in cands if lo <= v <= hi and v != current)
    return []


def mutations(data):
    """(dotted field, new value or a callable editing the profile dict) for every field."""
    out = []

    def walk(schema, value, prefix):
        schema = _resolve(schema)
        props = schema.get("properties", {})
        for key, sub in props.items():
            path = f"{prefix}.{key}" if prefix else key
            if path in METADATA:
                continue
            sub_r = _resolve(sub)
            cur = value.get(key) if isinstance(value, dict) else None
            if sub_r.get("type") == "object" or sub_r.get("properties"):
                if isinstance(cur, dict):
                    walk(sub_r, cur, path)
                continue
            for alt in _alternatives(sub_r, cur):
                default = sub_r.get("default")
                if key == "zero_point_granularity":
                    default = value.get("granularity")   # never finer than the scale's
                if cur is None and alt == default:
                    continue   # writing out the default is the same profile
                out.append((path, alt))
    walk(SCHEMA, data, "")
    # list fields: drop an op the model needs from supported_ops; move Softmax to the host
    out.append(("supported_ops", [op for op in data["supported_ops"] if op != "Conv"]))
    out.append(("host_ops", "move Softmax"))
    for op in data.get("ops", {}).get("shared_grid", []) or []:
        out.append(("ops.shared_grid", [o for o in data["ops"]["shared_grid"] if o != op]))
    if not data.get("ops", {}).get("shared_grid"):
        out.append(("ops.shared_grid", ["Concat"]))
    return out


def _apply(data, path, value):
    data = copy.deepcopy(data)
    if path == "host_ops" and value == "move Softmax":
        data["supported_ops"] = [op for op in data["supported_ops"] if op != "Softmax"]
        data.get("ops", {}).pop("softmax", None)
        data["host_ops"] = ["Softmax"]
        return data
    node = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return data


@pytest.mark.parametrize("name", PROFILES)
def test_every_field_changes_the_program_or_is_refused(name, graph, tmp_path):
    src = ROOT / "hw_profiles" / f"{name}.yaml"
    data = yaml.safe_load(src.read_text())
    base = observe(load_profile(src), graph)
    ignored, counted = [], 0
    for i, (path, value) in enumerate(mutations(data)):
        mutated = _apply(data, path, value)
        f = tmp_path / f"m{i}.yaml"
        f.write_text(yaml.dump(mutated, Dumper=_DUMPER, sort_keys=False))
        counted += 1
        try:
            prof = load_profile(f)
        except MrqError:
            continue   # refused at load: the value does not apply to this profile
        if observe(prof, graph) == base:
            ignored.append(f"{path} = {value!r}")
    print(f"{name}: {counted} mutations")
    assert not ignored, f"{name}: fields that change nothing: {ignored}"
