"""Mixed precision per layer: `layers:` overrides in profiles (validation, resolution), a layer
overridden to 8 bits re-quantizes, lowers and simulates with 8-bit codes (bit-exact against the
Python reference), and `mrq requant --budget` chooses layers under a weight-memory budget."""
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mrq.api import profile_violations, resolve_profile, simulate
from mrq.compare import weight_bytes
from mrq.demo import DEMO_MODEL, demo_inputs
from mrq.errors import HwProfileError, MrqError
from mrq.hw_profile import load_profile
from mrq.mixed_precision import LayerFormats
from mrq.onnx_import import load_model
from mrq.passes.base import Options
from mrq.precision_search import parse_budget, search, with_high_layers
from mrq.requant import requantize
from tests.reference import conv_ref, quant_ref

BASE = (ROOT / "hw_profiles" / "nna-w4a4.yaml").read_text()
LAYERS = ("stem_conv", "dw_conv", "pw_conv", "down_conv", "classifier")   # the demo CNN's


def _profile(tmp_path, layers_yaml: str, name="mixed"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(BASE.replace("name: nna-w4a4", f"name: {name}") + "\nlayers:\n" + layers_yaml)
    return path


@pytest.fixture(scope="module")
def demo_graph():
    return load_model(DEMO_MODEL)


# ------------------------------------------------------------------------------------------
# validation: one line per problem, naming the field


@pytest.mark.parametrize("entry, field, fragment", [
    ("  - {op: Dwconv, weights: {bits: 8}}", "layers[0].op", "must be one of Conv, DepthwiseConv, Gemm"),
    ("  - {position: middle, weights: {bits: 8}}", "layers[0].position", "must be one of first, last"),
    ("  - {name: '', weights: {bits: 8}}", "layers[0].name", "non-empty glob pattern"),
    ("  - {weights: {bits: 8}}", "layers[0]", "selects nothing"),
    ("  - {op: Conv}", "layers[0]", "overrides nothing"),
    ("  - {op: Conv, layer: x, weights: {bits: 8}}", "layers[0].layer", "unknown field"),
    ("  - {op: Conv, weights: {bitz: 8}}", "layers[0].weights.bitz", "did you mean 'bits'"),
    ("  - {op: Conv, weights: {bits: 17}}", "layers[0].weights.bits", "[2, 16]; got 17"),
    ("  - {op: Conv, weights: {bits: 8.0}}", "layers[0].weights.bits", "got the number 8.0"),
    ("  - {op: Conv, activations: {granularity: per_channel}}", "layers[0].activations.granularity",
     "per-tensor activation quantization only"),
    ("  - {op: Conv, weights: {scale: {form: fixed_point}}}", "layers[0].weights.scale.mantissa_bits",
     "missing required field"),
    ("  - {op: Conv, weights: 8}", "layers[0].weights", "must be a mapping"),
])
def test_bad_entries_are_one_line_errors_naming_the_field(tmp_path, entry, field, fragment):
    with pytest.raises(HwProfileError) as exc:
        load_profile(_profile(tmp_path, entry + "\n"))
    assert exc.value.field == field, str(exc.value)
    assert fragment in exc.value.problem
    assert len(str(exc.value).splitlines()) == len(exc.value.errors)
    assert "line " in exc.value.problem


def test_every_bad_entry_is_reported_at_once(tmp_path):
    with pytest.raises(HwProfileError) as exc:
        load_profile(_profile(tmp_path, "  - {op: Gem, weights: {bits: 8}}\n"
                                        "  - {position: first, weights: {bits: 1}}\n"))
    assert [f for _, f, _ in exc.value.errors] == ["layers[0].op", "layers[1].weights.bits"]
    with pytest.raises(HwProfileError, match="non-empty list"):
        load_profile(_profile(tmp_path, "  []\n"))


def test_shipped_fl8_profile_and_round_trip(tmp_path):
    prof = resolve_profile("nna-w4a4-fl8")
    assert [(e.position, e.weights.bits, e.activations.bits) for e in prof.layers] == \
        [("first", 8, 8), ("last", 8, 8)]
    # the entries complete the profile's own blocks: narrow range and per-channel stay
    assert prof.layers[0].weights.narrow_range and prof.layers[0].weights.granularity == "per_channel"
    import yaml
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(prof.to_dict(), sort_keys=False))
    assert load_profile(again).layers == prof.layers
    jsonschema = pytest.importorskip("jsonschema")
    import json
    schema = json.loads((ROOT / "hw_profiles" / "schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(yaml.safe_load((ROOT / "hw_profiles" / "nna-w4a4-fl8.yaml").read_text())))
    bad = yaml.safe_load(_profile(tmp_path, "  - {op: Dwconv, weights: {bits: 8}}\n").read_text())
    assert list(validator.iter_errors(bad))
    assert schema["properties"]["layers"]["items"]["properties"]["op"]["enum"] == ["Conv", "DepthwiseConv", "Gemm"]


# ------------------------------------------------------------------------------------------
# resolution


def test_resolution_selectors_and_last_entry_wins(tmp_path, demo_graph):
    prof = load_profile(_profile(tmp_path, "  - {op: Conv, weights: {bits: 6}}\n"
                                           "  - {op: DepthwiseConv, weights: {bits: 8}}\n"
                                           "  - {name: 'c*', activations: {bits: 8}}\n"
                                           "  - {position: last, op: Gemm, weights: {bits: 5}}\n"))
    f = LayerFormats.of(demo_graph, prof)
    assert f.rows() == [("stem_conv", "Conv", 6, 4), ("dw_conv", "DepthwiseConv", 8, 4),
                        ("pw_conv", "Conv", 6, 4), ("down_conv", "Conv", 6, 4),
                        ("classifier", "Gemm", 5, 8)]
    assert f.matched == {0: ["stem_conv", "dw_conv", "pw_conv", "down_conv"], 1: ["dw_conv"],
                         2: ["classifier"], 3: ["classifier"]}


def test_tensor_formats_follow_the_producer(demo_graph):
    f = LayerFormats.of(demo_graph, resolve_profile("nna-w4a4-fl8"))
    bits = {name: f.for_tensor(name).activations.bits for name in demo_graph.tensors}
    assert bits["input"] == bits["input_QuantizeLinear_Output"] == 8        # read by the 8-bit stem
    assert bits["r1_QuantizeLinear_Output"] == 8                            # written by the stem
    assert bits["r2_QuantizeLinear_Output"] == 4                            # dw_conv reads 8, writes 4
    assert bits["a1_QuantizeLinear_Output"] == 4     # residual Add: its main branch (pw_conv), not the stem
    assert bits["g_QuantizeLinear_Output__f"] == 4                          # the classifier's input
    assert bits["logits_QuantizeLinear_Output"] == 8
    assert f.for_tensor("wfc_DequantizeLinear_Output_q").weights.bits == 8
    assert f.for_tensor("w2_DequantizeLinear_Output_q").weights.bits == 4


def test_an_entry_that_selects_no_layer_is_an_error(tmp_path, demo_graph, capsys):
    path = _profile(tmp_path, "  - {name: 'block9.*', weights: {bits: 8}}\n")
    with pytest.raises(HwProfileError) as exc:
        LayerFormats.of(demo_graph, load_profile(path))
    assert exc.value.field == "layers[0]" and "selects no layer" in exc.value.problem
    with pytest.raises(HwProfileError, match="selects no layer"):
        requantize(demo_graph, load_profile(path), demo_inputs(2, seed=1))
    with pytest.raises(HwProfileError, match="selects no layer"):
        simulate(DEMO_MODEL, load_profile(path), demo_inputs(1, seed=1), fidelity=False)
    from mrq.cli import main
    assert main(["check", DEMO_MODEL, "--profile", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layers[0]" in err[0] and "selects no layer" in err[0]


# ------------------------------------------------------------------------------------------
# an overridden layer lowers and simulates with its own bits


@pytest.fixture(scope="module")
def fl8_model(demo_graph):
    new, _ = requantize(demo_graph, "nna-w4a4-fl8", demo_inputs(16, seed=1))
    return new


def test_overridden_layers_get_their_own_codes(demo_graph, fl8_model):
    fl8, w4a4 = resolve_profile("nna-w4a4-fl8"), resolve_profile("nna-w4a4")
    assert profile_violations(fl8_model, fl8) == []
    # the same model breaks plain w4a4 exactly at the 8-bit layers: their weights, and the
    # 8-bit grids of the tensors they read (the image) and write
    broken = {line.split(":")[0] for line in profile_violations(fl8_model, w4a4)}
    assert broken == {"w1_DequantizeLinear_Output_q", "wfc_DequantizeLinear_Output_q",
                      "input_QuantizeLinear_Output", "r1_QuantizeLinear_Output",
                      "logits_QuantizeLinear_Output"}
    t = fl8_model.tensors
    for name, wide in (("r1_QuantizeLinear_Output", True), ("r2_QuantizeLinear_Output", False),
                       ("logits_QuantizeLinear_Output", True)):
        qp = t[name].qparams
        problems = w4a4.check_tensor("activations", qp.dtype, qp.scale, qp.zero_point,
                                     code_range=(qp.qmin, qp.qmax))
        assert bool(problems) == wide and all("codes span [-128, 127]" in p for p in problems)
    stem_w = np.asarray(t[fl8_model.node("stem_conv").inputs[1]].data)
    dw_w = np.asarray(t[fl8_model.node("dw_conv").inputs[1]].data)
    assert np.abs(stem_w).max() > 7 and np.abs(stem_w).max() <= 127
    assert np.abs(dw_w).max() <= 7
    assert (t["r1_QuantizeLinear_Output"].qparams.qmin, t["r1_QuantizeLinear_Output"].qparams.qmax) == (-128, 127)
    assert (t["r2_QuantizeLinear_Output"].qparams.qmin, t["r2_QuantizeLinear_Output"].qparams.qmax) == (-8, 7)
    # weight memory counts each layer at its own width
    assert weight_bytes(fl8_model, fl8) > weight_bytes(requantize(demo_graph, "nna-w4a4", demo_inputs(4, seed=1),
                                                                  Options(weight_correction=False))[0], w4a4)


def test_8bit_stem_and_4bit_dw_simulate_bit_exact(fl8_model):
    feeds = demo_inputs(1, seed=5)
    sim = simulate(fl8_model, "nna-w4a4-fl8", feeds, fidelity=False, trace=True)
    steps = {sim.lowered.step_node.get(s.name): s for s in sim.lowered.program.steps if s.kind == "conv"}
    ranges = {}
    for node in ("stem_conv", "dw_conv"):
        step = steps[node]
        p = step.params
        x = np.asarray(sim.trace[step.inputs[0]])
        acc, _ = conv_ref.conv2d_acc(x, np.asarray(p.weight), p.weight_zero_point, p.bias,
                                       p.input_zero_point, p.strides, p.pads, p.dilations, p.group,
                                       p.layout, p.acc_bits, p.acc_overflow)
        want, _ = quant_ref.requantize(acc, p.rq_mode, p.rq_multiplier, p.rq_shift, p.rq_rounding,
                                       p.out_zero_point, p.out_min, p.out_max, p.out_dtype,
                                       1 if p.layout == "NCHW" else 3)
        got = np.asarray(sim.trace[step.outputs[0]])
        np.testing.assert_array_equal(got, want)
        ranges[node] = (p.out_min, p.out_max, int(got.min()), int(got.max()))
    # (out_min is the fused ReLU's 0 where the layer has one)
    assert ranges["stem_conv"][1] == 127 and ranges["stem_conv"][3] > 7    # 8-bit codes
    assert ranges["dw_conv"][1] == 7 and ranges["dw_conv"][0] >= -8        # 4-bit codes


# ------------------------------------------------------------------------------------------
# the automatic choice under a budget


@pytest.mark.parametrize("text, ok", [("weight_bytes=1000", True), ("weight_bytes=60%", True),
                                      ("sqnr_db=12.5", True), ("weight_bytes=0", False),
                                      ("weight_bytes=101%", False), ("weight_bytes=1.5", False),
                                      ("sqnr_db=3%", False), ("bytes=10", False), ("weight_bytes", False),
                                      ("sqnr_db=nan", False)])
def test_parse_budget(text, ok):
    if ok:
        assert parse_budget(text).text == text
    else:
        with pytest.raises(MrqError, match="--budget"):
            parse_budget(text)


@pytest.fixture(scope="module")
def budget_search(demo_graph):
    return search(demo_graph, resolve_profile("nna-w4a4"), demo_inputs(4, seed=2),
                  parse_budget("weight_bytes=60%"), 8)


def test_budget_choice_fits_and_is_the_best_measured(demo_graph, budget_search):
    r = budget_search
    w4a4 = resolve_profile("nna-w4a4")
    all_high = with_high_layers(w4a4, LAYERS, 8)
    assert r.high_bytes == weight_bytes(demo_graph, all_high) == weight_bytes(demo_graph, resolve_profile("nna-sym8"))
    assert r.low_bytes == weight_bytes(demo_graph, w4a4) and r.limit_bytes == int(0.6 * r.high_bytes)
    assert [s[0] for s in r.sensitivity] == list(LAYERS)
    assert r.frontier[0].high_layers == () and r.frontier[0].weight_bytes == r.low_bytes
    sizes = [p.weight_bytes for p in r.frontier]
    assert sizes == sorted(sizes) and sizes[-1] <= r.limit_bytes
    assert [p.high_layers[:-1] for p in r.frontier[1:]] == [p.high_layers for p in r.frontier[:-1]]
    assert r.chosen.sqnr_db == max(p.sqnr_db for p in r.frontier)
    chosen = LayerFormats.of(demo_graph, r.profile)
    assert {n for n, _, w, a in chosen.rows() if w == a == 8} == set(r.chosen.high_layers)
    assert weight_bytes(demo_graph, r.profile) == r.chosen.weight_bytes <= r.limit_bytes
    assert r.profile.name == "nna-w4a4-mixed"


def test_budget_below_the_all_low_model_and_unreachable_floor(demo_graph):
    with pytest.raises(MrqError, match="below the model with every layer at its lowest precision"):
        search(demo_graph, resolve_profile("nna-w4a4"), demo_inputs(2, seed=2),
               parse_budget("weight_bytes=100"), 8)
    with pytest.raises(MrqError, match="needs --calib"):
        search(demo_graph, resolve_profile("nna-w4a4"), None, parse_budget("weight_bytes=60%"), 8)
    with pytest.raises(MrqError, match="already at 8 bits"):
        search(demo_graph, resolve_profile("nna-sym8"), demo_inputs(2, seed=2), parse_budget("sqnr_db=10"), 8)


def test_requant_budget_cli_writes_the_chosen_profile(tmp_path, capsys):
    from mrq.cli import main
    calib = tmp_path / "calib.npz"
    np.savez(calib, **demo_inputs(8, seed=2))
    out = tmp_path / "out.onnx"
    code = main(["requant", DEMO_MODEL, "--profile", "nna-w4a4", "--calib", str(calib), "-o", str(out),
                 "--budget", "weight_bytes=100"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "below the model" in err[0]
    assert not out.exists()
    code = main(["requant", DEMO_MODEL, "--profile", "nna-w4a4", "--calib", str(calib), "-o", str(out),
                 "--budget", "sqnr_db=-50", "--json", str(tmp_path / "r.json")])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "precision frontier" in text
    chosen = load_profile(tmp_path / "out.profile.yaml")
    assert chosen.name == "nna-w4a4-mixed"
    import json
    report = json.loads((tmp_path / "r.json").read_text())
    search_report = report["precision_search"]
    # the all-4-bit model meets -50 dB: nothing is measured beyond it
    assert search_report["chosen"] == [] and len(search_report["frontier"]) == 1
    assert search_report["sensitivity"] == []
    assert main(["check", str(out), "--profile", str(tmp_path / "out.profile.yaml"), "-q"]) == 0


GAINS = {"stem_conv": 3.0, "dw_conv": 1.0, "pw_conv": 0.5, "down_conv": 2.0, "classifier": 4.0}


class _FakeMeasure:
    """SQNR as a known sum of per-layer gains (GAINS), so the greedy choice can be checked
    exactly without re-quantizing."""

    def __init__(self, graph, calib, progress):
        pass

    def __call__(self, profile, what):
        return 10.0 + sum(GAINS[e.name] for e in profile.layers)


def test_greedy_choice_order_floor_and_budget(demo_graph, monkeypatch):
    import mrq.precision_search as ps
    monkeypatch.setattr(ps, "_Measure", _FakeMeasure)
    w4a4 = resolve_profile("nna-w4a4")
    calib = demo_inputs(1, seed=0)
    extra = {n: weight_bytes(demo_graph, with_high_layers(w4a4, [n], 8)) - weight_bytes(demo_graph, w4a4)
             for n in LAYERS}
    order = sorted(LAYERS, key=lambda n: -GAINS[n] / extra[n])
    r = search(demo_graph, w4a4, calib, parse_budget("sqnr_db=14.5"), 8)
    sqnrs = [p.sqnr_db for p in r.frontier]
    assert [p.high_layers for p in r.frontier] == [tuple(order[:i]) for i in range(len(r.frontier))]
    assert r.chosen is r.frontier[-1] and sqnrs[-1] >= 14.5 > max(sqnrs[:-1])
    with pytest.raises(MrqError, match="no choice of 8-bit layers reaches 100 dB"):
        search(demo_graph, w4a4, calib, parse_budget("sqnr_db=100"), 8)
    # a budget that leaves out the widest layer: it is skipped, cheaper ones after it still come in
    widest = max(LAYERS, key=lambda n: extra[n])
    limit = weight_bytes(demo_graph, with_high_layers(w4a4, [n for n in LAYERS if n != widest], 8))
    r = search(demo_graph, w4a4, calib, parse_budget(f"weight_bytes={limit}"), 8)
    assert set(r.chosen.high_layers) == set(LAYERS) - {widest}
    assert r.chosen.sqnr_db == 10.0 + sum(GAINS.values()) - GAINS[widest]
