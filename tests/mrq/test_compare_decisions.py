"""`mrq compare` as a decision: accuracy with 95% intervals, the paired change against the
input model, PASS/FAIL/INCONCLUSIVE against --max-loss (including a profile that must FAIL),
the per-layer split of the error and of the clamps, bias headroom, provenance, and bad input."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_in_process import mrq_in_process

from mrq import compare as cmp
from mrq.commands.common import finite
from mrq.compare import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    PairedCounts,
    paired_change_interval,
    verdict,
    wilson_interval,
)
from mrq.demo import DEMO_MODEL, demo_inputs
from tests.ort_host import ORT_PROFILE

Z = 1.959963984540054
ROOT_PROFILES = Path(__file__).resolve().parents[2] / "hw_profiles"


# --- the statistics -------------------------------------------------------------------------


def test_wilson_interval_published_value_and_score_equation():
    # Newcombe (1998), Statistics in Medicine 17:857, example 81/263: 0.2553 to 0.3662
    lo, hi = wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    # each limit p solves the score equation (k - n p)^2 = z^2 n p (1 - p)
    for k, n in [(0, 10), (10, 10), (1, 7), (450, 1000), (9180, 10000)]:
        lo, hi = wilson_interval(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0
        for p in (lo, hi):
            if 0.0 < p < 1.0:
                assert (k - n * p) ** 2 == pytest.approx(Z * Z * n * p * (1 - p), rel=1e-9)
    assert math.isnan(wilson_interval(0, 0)[0])


def _multinomial_tables(n):
    for both in range(n + 1):
        for base_only in range(n - both + 1):
            for new_only in range(n - both - base_only + 1):
                yield PairedCounts(both, base_only, new_only, n - both - base_only - new_only)


def _coverage(n, probs):
    """Exact coverage of the paired interval: the probability, over every 2x2 table of n pairs,
    that the interval holds the true change."""
    true = probs[2] - probs[1]
    logs = [math.log(p) for p in probs]
    cov = 0.0
    for t in _multinomial_tables(n):
        cells = (t.both, t.base_only, t.new_only, t.neither)
        logp = math.lgamma(n + 1) + sum(c * lp - math.lgamma(c + 1) for c, lp in zip(cells, logs))
        lo, hi = paired_change_interval(t)
        if lo - 1e-12 <= true <= hi + 1e-12:
            cov += math.exp(logp)
    return cov


def test_paired_interval_has_95_percent_coverage():
    """Exact coverage over a grid of true 2x2 probabilities (concordant-heavy like model
    comparisons, and balanced): on average nominal, as Newcombe reports for method 10, and never
    far below it at these sizes."""
    grid = [(0.5, 0.1, 0.05, 0.35), (0.8, 0.06, 0.02, 0.12), (0.3, 0.2, 0.2, 0.3),
            (0.6, 0.05, 0.05, 0.3), (0.45, 0.15, 0.05, 0.35), (0.7, 0.1, 0.1, 0.1)]
    cov = [_coverage(n, probs) for n in (30, 40) for probs in grid]
    assert 0.935 <= sum(cov) / len(cov) <= 0.965, cov
    assert min(cov) >= 0.91, cov


def test_pairing_narrows_the_interval_and_signs_are_symmetric():
    c = PairedCounts(both=880, base_only=12, new_only=5, neither=103)
    lo, hi = paired_change_interval(c)
    assert lo < c.change < hi
    # the unpaired (independent-samples) Newcombe interval of the same accuracies is far wider
    p1, p2 = (c.both + c.new_only) / c.n, (c.both + c.base_only) / c.n
    l1, u1 = wilson_interval(c.both + c.new_only, c.n)
    l2, u2 = wilson_interval(c.both + c.base_only, c.n)
    unpaired = (p1 - p2 - math.hypot(p1 - l1, u2 - p2), p1 - p2 + math.hypot(u1 - p1, p2 - l2))
    assert (hi - lo) < 0.5 * (unpaired[1] - unpaired[0])
    swapped = paired_change_interval(PairedCounts(880, 5, 12, 103))
    assert swapped == pytest.approx((-hi, -lo), abs=1e-12)
    # identical predictions at 50% accuracy: no change, no width
    assert paired_change_interval(PairedCounts(500, 0, 0, 500)) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_verdict_rule_and_the_issue_numbers():
    assert verdict((-0.004, 0.002), 0.005) == PASS
    assert verdict((-0.005, 0.002), 0.005) == PASS            # the worst end exactly at the limit
    assert verdict((-0.02, -0.006), 0.005) == FAIL
    assert verdict((-0.02, 0.001), 0.005) == INCONCLUSIVE
    assert verdict((-0.02, 0.001), None) is None
    # issue 16: -0.3 points on 1,000 images is noise, -0.67 on 10,000 is a real loss
    small = PairedCounts(both=900, base_only=10, new_only=7, neither=83)
    assert small.change == pytest.approx(-0.003)
    assert verdict(paired_change_interval(small), 0.005) == INCONCLUSIVE
    big = PairedCounts(both=9000, base_only=100, new_only=33, neither=867)
    assert big.change == pytest.approx(-0.0067)
    lo, hi = paired_change_interval(big)
    assert hi < -0.001 and verdict((lo, hi), 0.001) == FAIL


# --- the report, end to end -----------------------------------------------------------------


N = 16


@pytest.fixture(scope="module")
def broken_profile(tmp_path_factory):
    """nna-sym8 with 4-bit weights and a 16-bit *wrapping* accumulator: re-quantized without
    data, the demo model's predictions change and the threshold must FAIL it. (The 16-bit
    accumulator alone no longer does: accumulator_budget proves the re-quantized sums never
    wrap.)"""
    text = (ROOT_PROFILES / "nna-sym8-acc20.yaml").read_text()
    text = text.replace("name: nna-sym8-acc20", "name: nna-acc16-wrap")
    text = text.replace("bits: 20                # must fit", "bits: 16                # must fit")
    text = text.replace("  bits: 20\n  overflow: saturate", "  bits: 16\n  overflow: wrap")
    text = text.replace("weights:\n  bits: 8", "weights:\n  bits: 4")
    path = tmp_path_factory.mktemp("prof") / "nna-acc16-wrap.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def decided(broken_profile):
    """The demo model on inputs scaled x2 (its predictions then vary), the broken profile's
    predictions computed beforehand the way compare runs it, and labels built so that the input
    model is right on every sample where the broken profile disagrees with it, and right on
    exactly half of all samples. Returns (result, expected paired counts of the broken profile,
    the inputs)."""
    from mrq.onnx_import import load_model
    from mrq.pipeline import Pipeline, resolve_profile
    feeds = {k: 2 * v for k, v in demo_inputs(N).items()}
    graph = load_model(DEMO_MODEL)
    base = np.argmax(Pipeline(graph, ORT_PROFILE).run(feeds).outputs["logits"], axis=1)
    prof = resolve_profile(broken_profile)
    hook = cmp.requantize_for_profile(graph, prof)
    new = np.argmax(Pipeline(hook.graph, prof).run(feeds).outputs["logits"], axis=1)
    disagree = base != new
    assert 4 <= int(disagree.sum()) <= N // 2, (base, new)     # enough to FAIL, few enough for 50%
    labels = (base + 5) % 10                                   # wrong for both
    labels[disagree] = base[disagree]                          # the input model right, the profile wrong
    agree_idx = np.flatnonzero(~disagree)
    both_right = agree_idx[:N // 2 - int(disagree.sum())]
    labels[both_right] = base[both_right]
    n_dis = int(disagree.sum())
    expected = PairedCounts(both=len(both_right), base_only=n_dis, new_only=0,
                            neither=N - len(both_right) - n_dis)
    source = _RecordingSource(feeds)
    res = cmp.run_compare(DEMO_MODEL, [ORT_PROFILE, broken_profile], source, labels=labels,
                          batch_size=6, progress=False, max_loss=0.5, argv=["compare", "demo"])
    # the inputs are read once, a batch at a time: memory follows the batch, not the data set
    assert source.requests == [6] and source.served == [6, 6, 4]
    return res, expected, feeds


class _RecordingSource(cmp.ArraySource):
    """An input source (the interface of mrq.datasets) that records what is read."""

    def __init__(self, feeds):
        super().__init__(feeds)
        self.requests, self.served = [], []

    def batches(self, batch_size, start=0, stop=None):
        self.requests.append(batch_size)
        for chunk in super().batches(batch_size, start, stop):
            self.served.append(len(next(iter(chunk.values()))))
            yield chunk


def test_baseline_row_accuracy_change_and_verdicts(decided):
    res, expected, _ = decided
    base = res.baseline
    assert base.role == "baseline" and base.profile == ORT_PROFILE and not base.requantized
    assert base.accuracy == 0.5 and base.accuracy_ci == wilson_interval(N // 2, N)
    same, broken = res.profiles
    # the input model's own runtime as a profile: the same predictions, no change, PASS
    assert same.baseline_agreement == 1.0 and same.paired == PairedCounts(N // 2, 0, 0, N // 2)
    assert same.change == 0.0 and same.change_ci == pytest.approx((0.0, 0.0), abs=1e-12)
    assert same.verdict == PASS
    # the broken profile: every disagreement costs a correct answer; its 16-bit accumulator
    # never wraps (accumulator_budget's proof holds in compare's re-quantization too)
    assert broken.acc_overflow == 0
    assert broken.paired == expected
    assert broken.baseline_agreement == 1.0 - expected.base_only / N
    assert broken.accuracy == expected.both / N and broken.change == -expected.base_only / N
    assert broken.change_ci == paired_change_interval(expected)
    assert broken.change_ci[1] < -0.005 and broken.verdict == FAIL, broken.change_ci
    assert not res.ok
    assert sum(r.acc_overflow for r in broken.layers) == broken.acc_overflow


def test_layer_rows_split_error_and_clamps_and_bias_headroom(decided):
    res, _, feeds = decided
    base = res.baseline
    rows = {r.layer: r for r in base.layers}
    for r in base.layers:
        assert r.sqnr_rounding >= r.sqnr_single - 1e-9     # a part of the error is at most all of it
        # the simulator's clamp counter is the sum of the two kinds of clamp
        assert r.saturated_range is not None and r.saturated_range + r.clamped_activation == r.out_saturated
    # the demo's ReLU convs clamp at real zero (zero point -128 = out_min): below it is the
    # ReLU, above 127 saturation. Recomputed on another path: the accumulator, then the
    # requantization kernel with no clamp.
    from mrq.accumulators import compute_accumulator
    from mrq.pipeline import Pipeline
    from simulator.kernels.quant import requantize
    run = Pipeline(DEMO_MODEL, ORT_PROFILE, layout="native").run(feeds, trace=True)
    step = next(s for s in run.program.steps if s.name == "stem_conv")
    p = dict(step.params)
    assert p["out_min"] == p["out_zero_point"] == -128 and p["out_max"] == 127
    acc = compute_accumulator(step, run.trace[step.inputs[0]])
    u, _ = requantize(acc, rq_mode=p["rq_mode"], rq_multiplier=p["rq_multiplier"], rq_shift=p.get("rq_shift"),
                      rq_rounding=p["rq_rounding"], out_zero_point=-128, out_min=-(2 ** 30),
                      out_max=2 ** 30, out_dtype="int32", channel_axis=p["channel_axis"])
    assert rows["stem_conv"].saturated_range == int(np.count_nonzero(u > 127)) > 0
    assert rows["stem_conv"].clamped_activation == int(np.count_nonzero(u < -128)) > 0
    # the input model's own float reference is clamped to its grids: no clipping under its runtime
    assert all(math.isinf(r.sqnr_clipping) for r in base.layers)
    # bias headroom: largest |bias| code against the profile's bias width
    from mrq.pipeline import Pipeline
    prog = Pipeline(DEMO_MODEL, ORT_PROFILE, layout="native").lowered.program
    step = next(s for s in prog.steps if s.name == "stem_conv")
    biggest = int(np.max(np.abs(np.asarray(dict(step.params)["bias"], np.int64))))
    assert rows["stem_conv"].bias_max_code == biggest and rows["stem_conv"].bias_bits == 32
    assert rows["stem_conv"].bias_headroom_bits == 31 - biggest.bit_length()
    assert rows["gap"].bias_max_code is None
    # the error enters where the single-layer SQNR is lowest
    finite = [r for r in base.layers if not math.isinf(r.sqnr_single)]
    assert base.entry_layer == min(finite, key=lambda r: r.sqnr_single).layer


def test_clamp_split_counts_against_an_independent_requantization():
    """The split re-runs a step with its clamp widened: check it on a hand-made step against
    numpy (values below a ReLU bound at the zero point are activation clamps, values above the
    storage maximum are saturation)."""
    from mrq.accumulators import execute_step
    from mrq.ir import Node
    from simulator.steps import make_step
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (2, 3, 5, 5)).astype(np.int8)
    step = make_step("rescale", "r", ("x",), ("y",), out_dtype="int8", out_min=-20, out_max=127,
                     rq_mode="shift", rq_shift=np.array([-1], np.int64), rq_rounding="half_even",
                     out_zero_point=-20, input_zero_point=0, channel_axis=1)
    unclamped = 2 * x.astype(np.int64) - 20
    _, stats = execute_step(step, x)
    n = stats["out_saturated"]
    assert n == int(np.count_nonzero((unclamped > 127) | (unclamped < -20))) > 0
    got = cmp._clamp_split(step, [x], Node("Relu", "r", ["x"], ["y"]), n)
    assert got == (int(np.count_nonzero(unclamped > 127)), int(np.count_nonzero(unclamped < -20)))
    # with an explicit upper clamp (ReLU6-style) the top side is the activation's too
    got6 = cmp._clamp_split(step, [x], Node("Clip", "r", ["x"], ["y"], {"clamp": (0.0, 6.0)}), n)
    assert got6 == (0, n)


def test_report_html_json_and_provenance(decided, tmp_path):
    res, _, _ = decided
    html = cmp.render_html(res, png=b"\x89PNG\r\n\x1a\n")
    for text in (f"{ORT_PROFILE} (input model)", "change vs input model", "Threshold: lose at most 0.5",
                 "<td class='pass'", "<td class='fail'", "Per-layer differences between profiles",
                 "saturated at the storage range", "clamped by ReLU/ReLU6/Clip", "bias headroom",
                 "own error: clipping SQNR", "Provenance", "mrq compare demo", res.provenance["model_sha256"]):
        assert text in html, text
    d = json.loads(json.dumps(finite(res.as_dict())))
    assert d["max_loss_points"] == 0.5 and d["baseline"]["role"] == "baseline"
    assert d["profiles"][0]["verdict"] == PASS and d["profiles"][1]["verdict"] == FAIL
    prov = d["provenance"]
    assert prov["command"] == "mrq compare demo" and len(prov["model_sha256"]) == 64
    assert [p["name"] for p in prov["profiles"]] == [ORT_PROFILE, ORT_PROFILE, "nna-acc16-wrap"]
    # the profile hash is of the content: the same profile hashes alike, another differs
    assert prov["profiles"][0]["sha256"] == prov["profiles"][1]["sha256"] != prov["profiles"][2]["sha256"]
    table = cmp.format_table(res)
    assert "(input model)" in table and "FAIL" in table and "PASS" in table and "verdict rule" in table


# --- the command line: exit codes and bad input ---------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mrq.cli", "compare", *map(str, args)],
                          capture_output=True, text=True, check=False)


def test_cli_exit_1_on_a_failing_threshold_and_bad_input_is_one_line(broken_profile, tmp_path):
    feeds = demo_inputs(6)
    np.savez(tmp_path / "in.npz", **feeds)
    np.save(tmp_path / "labels.npy", np.arange(6) % 10)
    np.save(tmp_path / "short.npy", np.arange(4))
    out = tmp_path / "r.html"
    for bad, needle in ((("--labels", tmp_path / "short.npy"), "4 labels for 6 input samples"),
                        (("--max-loss", "nan"), "--max-loss")):
        # in this process (tests/cli_in_process.py): no interpreter start per user error; the
        # real process below is what records the command line in the provenance
        r = mrq_in_process("compare", DEMO_MODEL, "--profiles", "nna-sym8", "--inputs",
                           tmp_path / "in.npz", *bad, "-o", out, "--json", tmp_path / "r.json",
                           "--no-progress")
        assert r.returncode == 2, (bad, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr
        assert not out.exists() and not (tmp_path / "r.json").exists()
    r = _cli(DEMO_MODEL, "--profiles", broken_profile, "--inputs", tmp_path / "in.npz", "--labels",
             tmp_path / "labels.npy", "--max-loss", "0", "-o", out, "--json", tmp_path / "r.json", "--no-progress")
    assert r.returncode == 1, r.stdout + r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["profiles"][0]["verdict"] in (FAIL, INCONCLUSIVE)
    assert rep["provenance"]["command"].startswith("mrq compare ") and "--max-loss 0" in rep["provenance"]["command"]
    assert out.exists()


def test_profile_hash_is_of_the_content(tmp_path):
    from mrq.provenance import profile_sha256
    src = ROOT_PROFILES / "nna-sym8-acc20.yaml"
    same = tmp_path / "same.yaml"
    same.write_text("# the same hardware, described with another comment\n" + src.read_text())
    changed = tmp_path / "changed.yaml"
    changed.write_text(src.read_text().replace("rounding: half_up", "rounding: half_even", 1))
    assert profile_sha256(str(same)) == profile_sha256(str(src)) != profile_sha256(str(changed))


def test_sim_json_report_has_provenance(tmp_path):
    from mrq.cli import main
    from mrq.provenance import profile_sha256, sha256_file
    np.savez(tmp_path / "in.npz", **demo_inputs(2))
    argv = ["sim", DEMO_MODEL, "--profile", "nna-sym8", "--inputs", str(tmp_path / "in.npz"), "-o",
            str(tmp_path / "out.npz"), "--json", str(tmp_path / "r.json"), "-q"]
    assert main(argv) == 0
    prov = json.loads((tmp_path / "r.json").read_text())["provenance"]
    assert prov["command"] == "mrq " + " ".join(argv)
    assert prov["profiles"] == [{"name": "nna-sym8", "source": str(ROOT_PROFILES / "nna-sym8.yaml"),
                                 "sha256": profile_sha256("nna-sym8")}]
    assert prov["model_sha256"] == sha256_file(DEMO_MODEL) and prov["mrq_version"]


def test_api_refuses_bad_labels_and_thresholds_before_simulating(monkeypatch):
    from mrq.errors import InputDataError
    # nothing may be simulated before the checks: a run would fail this test
    monkeypatch.setattr(cmp, "_ProfileRun", None)
    feeds = demo_inputs(3)
    for kwargs, needle in (({"labels": np.arange(2)}, "2 labels for 3 input samples"),
                           ({"labels": np.zeros(3, np.float32)}, "integer class labels"),
                           ({"max_loss": -1.0}, "--max-loss"), ({"max_loss": 101.0}, "--max-loss")):
        with pytest.raises(InputDataError, match=needle):
            cmp.run_compare(DEMO_MODEL, ["nna-sym8"], feeds, progress=False, **kwargs)


def test_a_profile_equal_to_the_baseline_shares_its_run_with_the_same_numbers():
    """The runtime profile of the input model, listed among the profiles, reuses the baseline's
    run; it must report what a separate run of it reports (here against another baseline)."""
    feeds = {k: 2 * v for k, v in demo_inputs(4).items()}
    labels = np.array([1, 8, 8, 2])
    shared = cmp.run_compare(DEMO_MODEL, [ORT_PROFILE], feeds, labels=labels, progress=False).profiles[0]
    alone = cmp.run_compare(DEMO_MODEL, [ORT_PROFILE], feeds, labels=labels, progress=False,
                            baseline="tflite-int8").profiles[0]
    assert shared.seconds == 0.0 < alone.seconds and shared.accuracy == alone.accuracy
    assert [r.as_dict() for r in shared.layers] == [r.as_dict() for r in alone.layers]
    assert shared.paired == PairedCounts(int(shared.accuracy * 4), 0, 0, 4 - int(shared.accuracy * 4))
