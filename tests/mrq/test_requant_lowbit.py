"""4-bit activations (nna-w4a4): the input-error target of weight correction and the low-bit
clipping candidates reduce the error, the lowered program keeps every 4-bit activation code in
-8..7 (clamps, input quantization, residual add, pooling), and re-quantization is deterministic."""
import numpy as np
import pytest

from mrq.api import profile_violations, resolve_profile, simulate
from mrq.demo import DEMO_MODEL, demo_inputs
from mrq.float_ref import FloatReference
from mrq.onnx_import import load_model
from mrq.passes.activation_grids import candidate_grids
from mrq.passes.base import Options
from mrq.passes.bias_grids import bias_scale
from mrq.passes.input_error_target import input_aware_rows
from mrq.requant import requantize

PROFILE = "nna-w4a4"


@pytest.fixture(scope="module")
def demo_graph():
    return load_model(DEMO_MODEL)


@pytest.fixture(scope="module")
def calib():
    return demo_inputs(64, seed=1)


@pytest.fixture(scope="module")
def full(demo_graph, calib):
    return requantize(demo_graph, PROFILE, calib)


def _quantize(x, scale, qmin=-8, qmax=7):
    return np.clip(np.rint(x / scale), qmin, qmax) * scale


def _patch_rng_state(seed=0):
    return np.random.default_rng(seed).bit_generator.state


class _Gemm:
    """A one-Gemm graph: for a Gemm, the input patches are the input rows themselves."""

    def __init__(self):
        from mrq.ir import Graph, Node
        self.node = Node("Gemm", "fc", ["x", "w"], ["y"])
        self.graph = Graph(tensors={}, nodes=[self.node], inputs=["x"], outputs=["y"])


def test_input_aware_rows_fit_the_old_output_from_coarse_inputs():
    rng = np.random.default_rng(3)
    k, m, n = 12, 5, 4000
    # correlated ReLU outputs (channels driven by a few common factors, as in a real layer)
    mixing = rng.normal(0.0, 1.0, (3, k)) / np.sqrt(3)
    x_old = np.maximum(rng.normal(0.0, 1.0, (n, 3)) @ mixing + 0.3, 0.0)
    x_new = _quantize(x_old, 0.2)                                   # 4-bit grid, clipped at 1.4
    w = rng.normal(0.0, 1.0, (m, k))
    gemm = _Gemm()
    fitted = input_aware_rows(gemm.graph, gemm.node, x_new[None].astype(np.float32), x_old,
                              _patch_rng_state(), w[None])
    assert fitted is not None and fitted.shape == (1, m, k)

    def err(rows):
        return float(np.mean(np.square(x_new @ rows.T - x_old @ w.T)))
    # the regression removes the part of the input error that x_new predicts (clipping, the
    # non-zero-mean rounding after ReLU); plain W leaves all of it
    assert err(fitted[0]) < 0.5 * err(w)
    # unchanged inputs: nothing to fit
    assert input_aware_rows(gemm.graph, gemm.node, x_old[None].astype(np.float32), x_old,
                            _patch_rng_state(), w[None]) is None


def test_low_bit_grids_search_deeper_clipping():
    a4 = resolve_profile(PROFILE).activations
    a8 = resolve_profile("nna-w4a8").activations
    deepest = lambda fmt: min(float(g.scale[0]) for g in candidate_grids(0.0, 6.0, fmt, True))
    covering4 = float(candidate_grids(0.0, 6.0, a4, False)[0].scale[0])
    covering8 = float(candidate_grids(0.0, 6.0, a8, False)[0].scale[0])
    assert deepest(a4) <= 0.21 * covering4
    assert deepest(a8) >= 0.49 * covering8       # 8-bit profiles keep their candidate set


def test_full_beats_naive_and_the_input_error_target_helps(demo_graph, calib, full):
    feeds = demo_inputs(64, seed=11)
    target = FloatReference(demo_graph, fake_quant=True).run(feeds)["logits"]
    naive, _ = requantize(demo_graph, PROFILE, calib, Options(False, False, False, False))
    _, report_no_target = requantize(demo_graph, PROFILE, calib, Options(input_error_target=False))
    new, report = full
    out_err = lambda g: float(np.mean(np.square(FloatReference(g, fake_quant=True).run(feeds)["logits"] - target)))
    assert out_err(new) < 0.4 * out_err(naive)
    # what the target minimises: each layer's output error against the input model's, with the
    # new model's own (4-bit) inputs (0.85x of plain weight correction's on this model)
    layer_err = lambda r: sum(after for _, after in r.layer_errors["weight_correction"].values())
    assert layer_err(report) < 0.92 * layer_err(report_no_target)


def test_lowered_program_keeps_4_bit_codes_in_range(full):
    new, _ = full
    assert profile_violations(new, resolve_profile(PROFILE)) == []
    four_bit = {n for n, t in new.tensors.items() if t.qparams is not None and t.data is None
                and t.qparams.bits == 4}
    assert len(four_bit) >= 8
    # inputs far outside the calibration range drive every clamp (input quantization too)
    feeds = {k: v * 8.0 for k, v in demo_inputs(8, seed=5).items()}
    trace = simulate(new, PROFILE, feeds, fidelity=False, trace=True).trace
    seen = four_bit & set(trace)
    assert seen >= four_bit - set(new.inputs)
    hit_max = hit_min = False
    for name in seen:
        codes = np.asarray(trace[name])
        assert codes.dtype == np.int8, name
        lo, hi = int(codes.min()), int(codes.max())
        assert -8 <= lo and hi <= 7, (name, lo, hi)
        hit_max |= hi == 7
        hit_min |= lo == -8
    assert hit_max and hit_min      # the range is used to its ends, not merely respected


def test_activation_offsets_keep_the_function_and_use_every_code(demo_graph, calib, full):
    """The demo's depthwise ReLU output (read only by a 1x1 conv) is shifted; the residual-read
    and padded-conv-read ReLU outputs are not. Without rounding (grids clamp only) the network
    computes the same function as without the shift, up to the bias codes' rounding."""
    new, report = full
    shifted = [c.tensor for c in report.changes if c.pass_name == "activation_offsets"]
    assert shifted == ["r2_QuantizeLinear_Output"]
    producer = new.producer(shifted[0])
    assert producer.attrs["clamp"][0] < 0 < producer.attrs["output_offset"]
    naive = Options(False, False, False, False, disabled=frozenset({"activation_offsets"}))
    plain, _ = requantize(demo_graph, PROFILE, calib, naive)
    offset, _ = requantize(demo_graph, PROFILE, calib, Options(False, False, False, False))
    feeds = demo_inputs(16, seed=4)
    a = FloatReference(plain, fake_quant=False).run(feeds)
    b = FloatReference(offset, fake_quant=False).run(feeds)
    # the shift itself is exact; each model rounds its (shifted) bias to half an accumulator LSB
    c = offset.node(producer.name).attrs["output_offset"]
    lsb = float(bias_scale(plain, plain.node(producer.name)).max() + bias_scale(offset, offset.node(producer.name)).max())
    assert np.abs(b[shifted[0]] - (a[shifted[0]] - c)).max() <= 0.5 * lsb + 1e-5
    # ... which the rest of the network carries to the logits (a consumer bias that missed the
    # rounding of its weights, V_new - V, is off by ~35% of the logits' range)
    np.testing.assert_allclose(b["logits"], a["logits"], atol=0.1 * np.abs(a["logits"]).max())
    # with rounding, the shifted tensor's codes reach both ends of -8..7
    trace = simulate(offset, PROFILE, feeds, fidelity=False, trace=True).trace[shifted[0]]
    assert int(np.min(trace)) == -8 and int(np.max(trace)) == 7


def test_8_bit_activations_keep_their_weights(demo_graph, calib):
    """The refit is for coarse input grids only: nna-w4a8 (8-bit activations, 4-bit weights,
    so weight correction runs on every layer) gives the same codes with and without it."""
    few = demo_inputs(16, seed=2)
    on, _ = requantize(demo_graph, "nna-w4a8", few)
    off, _ = requantize(demo_graph, "nna-w4a8", few, Options(input_error_target=False))
    for name, t in on.tensors.items():
        if t.data is not None:
            np.testing.assert_array_equal(np.asarray(t.data), np.asarray(off.tensors[name].data), err_msg=name)


def test_requantization_is_deterministic(demo_graph, calib, full):
    again, _ = requantize(demo_graph, PROFILE, calib)
    first, _ = full
    for name, t in first.tensors.items():
        u = again.tensors[name]
        if t.data is not None:
            np.testing.assert_array_equal(np.asarray(t.data), np.asarray(u.data), err_msg=name)
        if t.qparams is not None:
            assert t.qparams.same_grid(u.qparams), name


def test_top1_agreement_counts_a_tie_as_the_fraction_it_gets_right():
    from mrq.passes.output_grids import top1_agreement
    scores = np.array([[3, 3, 1], [0, 2, 2], [5, 1, 1], [1, 1, 1]])
    reference_top = np.array([1, 0, 0, 2])
    assert top1_agreement(scores, reference_top) == pytest.approx((0.5 + 0.0 + 1.0 + 1 / 3) / 4)


def _scores(graph, feeds):
    return FloatReference(graph, fake_quant=True).run(feeds)["logits"]


def test_output_grids_raise_the_argmax_agreement_and_pass_check(demo_graph, calib, full):
    """The class scores' grid is re-chosen (its objective, the argmax agreement with the input
    model on the calibration data, rises above the MSE choice's) and the model still passes
    ``mrq check``; 8-bit scores keep the MSE choice."""
    from mrq.commands.check import check_model
    from mrq.passes.output_grids import top1_agreement
    new, report = full
    mse_choice, _ = requantize(demo_graph, PROFILE, calib, Options(disabled=frozenset({"output_grids"})))
    changed = [c for c in report.changes if c.pass_name == "output_grids"]
    assert [c.tensor for c in changed] == ["logits_QuantizeLinear_Output"]
    reference_top = _scores(demo_graph, calib).argmax(axis=1)
    agreement = lambda g: top1_agreement(np.round(_scores(g, calib) / float(
        g.tensors["logits_QuantizeLinear_Output"].qparams.scale[0])), reference_top)
    assert agreement(new) > agreement(mse_choice)
    assert check_model(new, PROFILE)[0] == []
    few = demo_inputs(16, seed=2)
    _, report8 = requantize(demo_graph, "nna-w4a8", few)
    assert not [c for c in report8.changes if c.pass_name == "output_grids"]


def test_error_folding_leaves_refitted_layers_alone_and_the_output_improves(demo_graph, calib, full):
    """Layers rounded to the input-error target get no folded constant (it would fight the
    refit); the network output is then closer to the input model's than with the whole mean
    shift folded into every layer (the behaviour before), on held-out inputs."""
    from mrq.passes import error_folding
    new, report = full
    folded = set(report.layer_errors["error_folding"])
    refitted = set(report.layer_errors["weight_correction"]) - folded
    assert refitted and "stem_conv" in refitted
    everywhere = error_folding.error_folding_hook

    def fold_every_layer(graph, ctx):
        ctx.cache["refitted_layers"] = set()
        return everywhere(graph, ctx)
    import mrq.requant as requant_module
    passes = [p if p.name != "error_folding" else type(p)(p.name, p.fn, p.needs_calib, p.doc, fold_every_layer)
              for p in requant_module.PASSES]
    saved = requant_module.PASSES
    requant_module.PASSES = passes
    try:
        before, report_before = requantize(demo_graph, PROFILE, calib)
    finally:
        requant_module.PASSES = saved
    assert set(report_before.layer_errors["error_folding"]) >= refitted
    feeds = demo_inputs(256, seed=21)
    target = _scores(demo_graph, feeds)
    err = lambda g: float(np.mean(np.square(_scores(g, feeds) - target)))
    assert err(new) < err(before)


def test_class_bias_shifts_win_ties_for_the_class_that_is_right():
    """Two classes whose scores round to the same code: the hardware's argmax takes the first;
    a fraction of a code on the second class's bias makes it win the ties it should win, and
    nothing moves when the argmax already agrees."""
    from mrq.ir import QParams
    from mrq.passes.output_grids import class_bias_shifts
    grid = QParams(np.array([1.0], np.float32), np.zeros(1, np.int64), "int8", bits=4)
    rng = np.random.default_rng(0)
    n = 400
    y = np.stack([np.full(n, 3.0), 3.0 + rng.uniform(-0.45, 0.3, n)], axis=1)   # codes tie at 3
    right = (y[:, 1] > 3.0).astype(np.int64)                 # class 1 is right where it is larger
    shifts = class_bias_shifts(y, grid, right)
    codes = lambda sh: np.clip(np.rint((y + sh) / 1.0), -8, 7).argmax(axis=1)
    assert np.mean(codes(shifts) == right) > np.mean(codes(np.zeros(2)) == right) + 0.2
    assert np.all(np.abs(shifts) <= 0.5)
    assert not np.any(class_bias_shifts(y, grid, codes(np.zeros(2))))


def test_scale_search_lowers_the_network_output_error_and_passes_check(demo_graph, calib, full):
    """The objective recomputed outside the pass: the network output's squared error against the
    input model's on the search subset, for the graph right after activation_grids, falls when
    scale_search re-chooses the 4-bit clips (activation_offsets off, so the searched grids are the
    graph's own). In the pipeline (opt-in) it moves at least one grid, each move lowered the
    error, and the model passes ``mrq check``; by default it does not run."""
    import mrq.requant as requant_module
    from mrq.commands.check import check_model
    from mrq.passes.base import Context, RequantReport, run_passes
    from mrq.passes.scale_search import SEARCH_SAMPLES, scale_search
    options = Options(output_error_scales=True, disabled=frozenset({"activation_offsets"}))
    ctx = Context(profile=resolve_profile(PROFILE), original=demo_graph, calib=calib, options=options,
                  report=RequantReport(PROFILE))
    upto = requant_module.PASSES[:requant_module.PASS_NAMES.index("activation_grids") + 1]
    before = run_passes(demo_graph, upto, ctx)
    after = scale_search(before.copy(), ctx)
    subset = {k: v[:SEARCH_SAMPLES] for k, v in calib.items()}
    target = _scores(demo_graph, subset)
    err = lambda g: float(np.sum(np.square(_scores(g, subset) - target)))
    assert err(after) < 0.9 * err(before)
    new, report = requantize(demo_graph, PROFILE, calib, Options(output_error_scales=True))
    moved = report.layer_errors["scale_search"]
    assert moved and all(b > a for b, a in moved.values())
    assert {c.tensor for c in report.changes if c.pass_name == "scale_search"} == set(moved)
    assert check_model(new, PROFILE)[0] == []
    assert "scale_search" in full[1].passes_skipped and "scale_search" not in full[1].layer_errors


def test_cli_output_error_scales_switches_the_search_on(tmp_path):
    """`mrq requant --output-error-scales` runs scale_search; without the flag it is listed as off."""
    from tests.cli_in_process import mrq_in_process

    calib = tmp_path / "calib.npz"
    np.savez(calib, **demo_inputs(32))
    common = ["requant", DEMO_MODEL, "--profile", "nna-w4a4", "--calib", calib]
    on = mrq_in_process(*common, "--output-error-scales", "-o", tmp_path / "on.onnx")
    off = mrq_in_process(*common, "-o", tmp_path / "off.onnx")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    passes_on = next(line for line in on.stdout.splitlines() if line.startswith("passes:"))
    passes_off = next(line for line in off.stdout.splitlines() if line.startswith("passes:"))
    assert "scale_search" in passes_on.split("(off:")[0]
    assert "scale_search" in passes_off.split("(off:")[1]
