"""Low-bit and per-layer grids survive a written model (issues 15/17: "the profile is the truth").

A 4-bit grid is written as ONNX INT4/UINT4 (opset 21); what no ONNX type says (other widths,
narrow ranges, 4-bit graph inputs/outputs) travels in the ``mrq.code_grids`` model property. A
re-read model must hold the grids it was simulated with, and simulate bit for bit the same.
"""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mrq.api import profile_violations, resolve_profile
from mrq.demo import DEMO_MODEL, demo_inputs
from mrq.errors import HwProfileError, ModelError
from mrq.ir import storage_dtype
from mrq.mixed_precision import LayerFormats
from mrq.onnx_export import export_onnx
from mrq.onnx_import import CODE_GRIDS_KEY, load_model
from mrq.pipeline import Pipeline
from mrq.requant import requantize

LOW_BIT = ["nna-w4a4", "nna-w4a4-fl8"]
_CACHE: dict = {}


def _requanted(profile: str):
    if profile not in _CACHE:
        _CACHE[profile] = requantize(load_model(DEMO_MODEL), profile, demo_inputs(32, seed=1))[0]
    return _CACHE[profile]


def _write_read(graph, path):
    onnx.save(export_onnx(graph), str(path))
    return load_model(str(path))


def _grid(t):
    qp = t.qparams
    if qp is None:
        return (t.dtype, None)
    return (storage_dtype(qp.dtype), qp.qmin, qp.qmax, bool(qp.narrow_range), qp.scale.tolist(),
            qp.zero_point.tolist(), qp.axis if qp.per_channel else None)


def _assert_same_grids(a, b):
    """``b`` has ``a``'s nodes in ``a``'s order, with the same grids (and constants) on every
    input and output, position by position."""
    assert [n.op for n in a.nodes] == [n.op for n in b.nodes]
    compared = 0
    for node, other in zip(a.nodes, b.nodes):
        for x, y in zip(node.inputs + node.outputs, other.inputs + other.outputs):
            tx, ty = a.tensors[x], b.tensors[y]
            assert _grid(tx) == _grid(ty), (node.name, x, y)
            if tx.is_const:
                np.testing.assert_array_equal(np.asarray(tx.data), np.asarray(ty.data))
            compared += 1
    assert compared >= 20


@pytest.mark.parametrize("profile", LOW_BIT)
def test_written_low_bit_model_reads_back_with_its_grids_and_simulates_identically(profile, tmp_path):
    new = _requanted(profile)
    back = _write_read(new, tmp_path / "m.onnx")
    _assert_same_grids(new, back)
    # the profile's per-layer code ranges hold on the file (problem 2 needs problem 1 fixed)
    assert profile_violations(back, resolve_profile(profile)) == []
    widths = {(_grid(t)[1], _grid(t)[2]) for t in back.tensors.values()
              if t.qparams is not None and not t.is_const and t.dtype != "int32"}
    assert (-8, 7) in widths and ((-128, 127) in widths) == (profile == "nna-w4a4-fl8")
    feeds = demo_inputs(8, seed=5)
    ra = Pipeline(new, profile, layout="native").run(feeds, trace=True)
    rb = Pipeline(back, profile, layout="native").run(feeds, trace=True)
    np.testing.assert_array_equal(ra.outputs["logits"], rb.outputs["logits"])
    common = [n for n in ra.trace if n in rb.trace and n in new.tensors and new.tensors[n].qparams is not None]
    assert len(common) >= 8
    for name in common:
        np.testing.assert_array_equal(ra.trace[name], rb.trace[name], err_msg=name)


def test_a_read_model_writes_and_reads_back_again(tmp_path):
    """Names the importer makes up for views (``src__maxpool_y``) are names a re-written file
    holds: the second read must not take one for the other."""
    once = _write_read(_requanted("nna-w4a4"), tmp_path / "once.onnx")
    twice = _write_read(once, tmp_path / "twice.onnx")
    _assert_same_grids(once, twice)
    feeds = demo_inputs(4, seed=6)
    np.testing.assert_array_equal(Pipeline(once, "nna-w4a4").run(feeds).outputs["logits"],
                                  Pipeline(twice, "nna-w4a4").run(feeds).outputs["logits"])


@pytest.mark.parametrize("profile", LOW_BIT)
def test_file_holds_int4_codes_and_onnxruntime_runs_them(profile, tmp_path):
    new = _requanted(profile)
    path = tmp_path / "m.onnx"
    model = export_onnx(new)
    onnx.save(model, str(path))
    assert model.opset_import[0].version >= 21
    zp_types = {t.name: t.data_type for t in model.graph.initializer}
    four_bit = {n for n, t in new.tensors.items() if t.qparams is not None and t.qparams.qmax == 7}
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.output[0] in four_bit]
    assert q_nodes and all(zp_types[n.input[2]] == TensorProto.INT4 for n in q_nodes)
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    # ORT 1.32's extended QDQ rewrites (ClipQuantFusion, integer MaxPool) reject INT4
    # activations; the basic level runs the graph as written
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = demo_inputs(32, seed=3)
    (ort_logits,) = sess.run(None, feeds)
    ours = Pipeline(new, profile).run(feeds).outputs["logits"]
    # ORT clamps to the 4-bit grids too: its float rounding differs from the fixed-point
    # requantization only at ties
    assert np.mean(ort_logits == ours) >= 0.99   # measured: 5120 of 5120 logits on 512 inputs


def test_other_widths_and_narrow_ranges_survive_through_the_model_property(tmp_path):
    graph = _requanted("nna-w4a4").copy()
    acts = [n for n, t in graph.tensors.items() if t.qparams is not None and not t.is_const
            and t.dtype != "int32" and n not in graph.inputs]
    six, three = acts[1], acts[2]
    graph.tensors[six].qparams = graph.tensors[six].qparams.with_(bits=6, narrow_range=True)
    graph.tensors[three].qparams = graph.tensors[three].qparams.with_(bits=3)
    model = export_onnx(graph)
    grids = json.loads(next(p.value for p in model.metadata_props if p.key == CODE_GRIDS_KEY))
    assert {"bits": 6, "narrow_range": True} in grids.values()
    assert {"bits": 3, "narrow_range": False} in grids.values()
    back = _write_read(graph, tmp_path / "m.onnx")
    assert (back.tensors[six].qparams.qmin, back.tensors[six].qparams.qmax) == (-31, 31)
    assert (back.tensors[three].qparams.qmin, back.tensors[three].qparams.qmax) == (-4, 3)
    _assert_same_grids(graph, back)
    feeds = demo_inputs(4, seed=2)
    np.testing.assert_array_equal(Pipeline(graph, "nna-w4a4").run(feeds).outputs["logits"],
                                  Pipeline(back, "nna-w4a4").run(feeds).outputs["logits"])


@pytest.mark.parametrize("value, match", [
    ("{not json", "must map zero-point names"),
    ('{"z": {"bits": 40, "narrow_range": false}}', "must map zero-point names"),
    ('{"z": {"bits": 4}}', "must map zero-point names"),
])
def test_malformed_code_grid_property_is_a_one_line_model_error(value, match, tmp_path):
    model = export_onnx(_requanted("nna-w4a4"))
    helper.set_model_props(model, {CODE_GRIDS_KEY: value})
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ModelError, match=match):
        load_model(str(tmp_path / "m.onnx"))


def test_code_grid_wider_than_its_type_is_refused(tmp_path):
    model = export_onnx(_requanted("nna-w4a4"))
    zp = next(n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear")
    helper.set_model_props(model, {CODE_GRIDS_KEY: json.dumps({zp: {"bits": 8, "narrow_range": False}})})
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ModelError, match="8 bits, more than its int4 type holds"):
        load_model(str(tmp_path / "m.onnx"))


def test_opset_too_old_for_int4_is_refused():
    with pytest.raises(ModelError, match="opset 17 cannot hold the model's 4-bit grids"):
        export_onnx(_requanted("nna-w4a4"), opset=17)


def test_an_8bit_grid_under_a_4bit_layer_is_a_violation():
    fl8 = resolve_profile("nna-w4a4-fl8")
    graph = _requanted("nna-w4a4-fl8").copy()
    formats = LayerFormats.of(graph, fl8)
    four = next(n for n, t in graph.tensors.items() if t.qparams is not None and not t.is_const
                and formats.for_tensor(n).activations.bits == 4)
    eight = next(n for n, t in graph.tensors.items() if t.qparams is not None and not t.is_const
                 and formats.for_tensor(n).activations.bits == 8 and n not in graph.inputs)
    assert profile_violations(graph, fl8) == []
    graph.tensors[four].qparams = graph.tensors[four].qparams.with_(bits=None)   # int8 [-128, 127]
    lines = profile_violations(graph, fl8)
    assert lines == [(f"{four}: activations: the grid's codes span [-128, 127], outside the "
                      f"profile's [-8, 7] (4-bit int8)")]
    # the same 8-bit grid is right under an 8-bit layer
    assert graph.tensors[eight].qparams.qmax == 127


def test_program_limits_check_each_step_against_its_own_layer():
    from mrq.limits import program_violations
    fl8 = resolve_profile("nna-w4a4-fl8")
    graph = _requanted("nna-w4a4-fl8")
    lowered = Pipeline(graph, fl8, layout="native").lowered
    formats = LayerFormats.of(graph, fl8)
    args = (lowered.program, fl8, lowered.step_node, lowered.placement)
    assert [str(v) for v in program_violations(*args, formats=formats)] == []
    base_only = [v for v in program_violations(*args) if v.field == "activations.bits"]
    # without the per-layer formats, the 8-bit first and last layers break the base 4 bits
    assert {v.node for v in base_only} >= {"stem_conv", "classifier"}
    assert all("outside the profile's 4-bit int8 range [-8, 7]" in str(v) for v in base_only)


def test_golden_metadata_gives_each_layer_its_own_bits():
    from mrq.golden import compute_golden
    fl8 = resolve_profile("nna-w4a4-fl8")
    graph = _requanted("nna-w4a4-fl8")
    golden = compute_golden(graph, fl8, demo_inputs(2, seed=4))
    rows = {r["node"]: r for r in golden.manifest["arithmetic"]["layers"]}
    assert rows["stem_conv"]["activation_bits"] == 8 and rows["dw_conv"]["activation_bits"] == 4
    assert rows["classifier"]["weight_bits"] == 8 and rows["pw_conv"]["weight_bits"] == 4
    formats = LayerFormats.of(graph, fl8)
    bits = {name: t.bits for name, t in golden.tensors.items()
            if name in graph.tensors and t.role in ("activation", "output") and not t.is_float}
    assert bits and all(b == formats.for_tensor(n).activations.bits for n, b in bits.items()), bits
    assert not [t.note for t in golden.tensors.values() if t.note]


# ---------------------------------------------------------------- shared grids across widths
def _concat_model(rng):
    """x -> conv a (4-bit) and conv b (8-bit by name) -> Concat -> conv c (last, 8-bit). The
    Concat belongs to conv b's layer (the later producer), so its class starts 8-bit."""
    def conv(name, cin, cout, scale):
        return numpy_helper.from_array((rng.standard_normal((cout, cin, 1, 1)) * scale).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a"),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b"),
             helper.make_node("Concat", ["a", "b"], ["cat"], axis=1, name="cat"),
             helper.make_node("Conv", ["cat", "wc"], ["y"], name="conv_c")]
    graph = helper.make_graph(nodes, "cat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 4, 4])],
                              [conv("wa", 3, 4, 0.3), conv("wb", 3, 4, 1.5), conv("wc", 8, 4, 0.2)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def concat_model(tmp_path_factory):
    ort_q = pytest.importorskip("onnxruntime.quantization")
    rng = np.random.default_rng(7)
    tmp = tmp_path_factory.mktemp("cat")
    src, dst = tmp / "f.onnx", tmp / "q.onnx"
    onnx.save(_concat_model(rng), str(src))
    calib = [{"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32)} for _ in range(8)]

    class Reader(ort_q.CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            return next(self.items, None)

    ort_q.quantize_static(str(src), str(dst), Reader(), quant_format=ort_q.QuantFormat.QDQ,
                          activation_type=ort_q.QuantType.QInt8, weight_type=ort_q.QuantType.QInt8)
    return load_model(str(dst)), {"x": np.concatenate([c["x"] for c in calib])}


def _shared_profile(tmp_path, first_activations="{bits: 8}"):
    """nna-w4a4-fl8 with Concat on one shared grid and conv_b (not the first layer) at 8 bits."""
    with open(resolve_profile("nna-w4a4-fl8").source) as f:
        text = f.read()
    text = text.replace("  softmax: float", "  softmax: float\n  shared_grid: [Concat]")
    text = text.replace("  - position: first\n    weights: {bits: 8}    # -127..127 (narrow range, from the block above)\n"
                        "    activations: {bits: 8}",
                        f"  - name: conv_b\n    weights: {{bits: 8}}\n    activations: {first_activations}")
    path = tmp_path / "shared.yaml"
    path.write_text(text)
    return resolve_profile(str(path))


def test_a_grid_shared_by_layers_of_different_widths_is_the_narrowest(concat_model, tmp_path):
    graph, calib = concat_model
    profile = _shared_profile(tmp_path)
    formats = LayerFormats.of(graph, profile)
    cat = next(n for n in graph.nodes if n.op == "Concat")
    a, b = cat.inputs
    assert formats.for_tensor(a).activations.bits == 4 and formats.for_tensor(b).activations.bits == 8
    assert formats.for_tensor(cat.outputs[0]).activations.bits == 8
    new, _ = requantize(graph, profile, calib)
    grids = {n: (new.tensors[n].qparams.qmin, new.tensors[n].qparams.qmax) for n in (a, b, cat.outputs[0])}
    assert set(grids.values()) == {(-8, 7)}, grids
    assert profile_violations(new, profile) == []
    back = _write_read(new, tmp_path / "m.onnx")
    assert profile_violations(back, profile) == []


def test_a_grid_shared_by_layers_with_incompatible_formats_is_an_error(concat_model, tmp_path):
    graph, calib = concat_model
    profile = _shared_profile(tmp_path, "{bits: 8, signed: false}")
    with pytest.raises(HwProfileError, match=r"must share one grid .*Concat.* no one grid satisfies"):
        requantize(graph, profile, calib)
