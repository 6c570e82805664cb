"""The second core's share of a cold start (simulator/precompile.py, mrq/warm_up.py): the kernel
signatures listed for a program are exactly the ones its run dispatches, so a child that
compiles them leaves cache entries the run loads; the child works from the last one back and
stops where the run has been; ``mrq sim`` and ``mrq demo`` print the same with or without it."""
import json
import os
import re

import numba
import numpy as np
import pytest
from cli_in_process import mrq_in_process

from mrq import warm_up
from mrq.demo import DEMO_MODEL, demo_inputs
from mrq.pipeline import Pipeline
from simulator.kernels import jitcache
from simulator.precompile import compile_last_first, kernel_signatures
from simulator.run import run, set_threads
from tests.ort_host import ORT_PROFILE

MLPERF = os.environ.get("MRQ_MLPERF_TINY", "/work/shared/models/mlperf_tiny")
QAT = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "models", "fmnist_mnv2_qat_qdq.onnx")

CASES = [(DEMO_MODEL, ORT_PROFILE), (DEMO_MODEL, "tflite-int8"), (DEMO_MODEL, "nna-sym8"),
         (DEMO_MODEL, "nna-sym8-acc16"), (QAT, ORT_PROFILE),
         (os.path.join(MLPERF, "kws_ref_model.tflite"), "litert-default"),
         (os.path.join(MLPERF, "pretrainedResnet_quant.tflite"), "litert-default"),
         (os.path.join(MLPERF, "ad01_int8.tflite"), "litert-default")]


# the layout, batch (batch-1 matrix-vector kernels) and thread count (parallel drivers) change
# the launches
@pytest.mark.parametrize("layout,batch,threads", [("native", 1, 1), ("nhwc", 3, 2)])
@pytest.mark.parametrize("model,profile", CASES, ids=lambda v: os.path.basename(str(v)))
def test_listed_signatures_are_the_ones_the_run_dispatches(model, profile, layout, batch, threads):
    if not os.path.exists(model):
        pytest.fail(f"{model} is missing")
    pipe = Pipeline(model, profile, layout)
    rng = np.random.default_rng(batch)
    feeds = {}
    for spec in pipe.program.inputs:
        shape = (batch, *spec.shape[1:])
        if np.dtype(spec.dtype).kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            info = np.iinfo(spec.dtype)
            feeds[spec.name] = rng.integers(info.min, info.max + 1, shape, dtype=spec.dtype)
    before = numba.get_num_threads()
    set_threads(threads)
    try:
        signatures = kernel_signatures(pipe.program, feeds)
        run(pipe.program, feeds)
    finally:
        set_threads(before)
    assert signatures, "no kernel listed"
    missing = [(fn.py_func.__qualname__, sig) for fn, sig in signatures if sig not in fn.overloads]
    assert not missing, f"listed but never dispatched (a child would compile them for nothing): {missing}"
    assert len({(fn, sig) for fn, sig in signatures}) == len(signatures)


class _Cache:
    """Stands in for a dispatcher: ``on_disk`` signatures load, others compile."""

    def __init__(self, on_disk, compiled):
        self.overloads = {}
        self.on_disk = on_disk
        self.compiled = compiled
        self.hits = 0

    @property
    def stats(self):
        return type("Stats", (), {"cache_hits": {"any": self.hits}})()

    def compile(self, sig):
        if sig in self.on_disk:
            self.hits += 1
        else:
            self.compiled.append(sig)
        self.overloads[sig] = object()


def test_compiles_from_the_last_back_and_stops_where_the_run_has_been():
    compiled = []
    fn = _Cache(on_disk={1, 2}, compiled=compiled)   # the run has compiled kernels 0..2
    fn.overloads[4] = object()                      # already in this process: skipped
    assert compile_last_first([(fn, i) for i in range(7)]) == (3, 1)
    assert compiled == [6, 5, 3]
    compiled.clear()
    fresh = _Cache(on_disk=set(), compiled=compiled)
    assert compile_last_first([(fresh, i) for i in range(4)]) == (4, 0)
    assert compiled == [3, 2, 1, 0]


def test_precompile_on_a_warm_cache_compiles_nothing():
    spec = warm_up.input_spec({name: (a.shape, a.dtype) for name, a in demo_inputs().items()})
    jobs = [(DEMO_MODEL, ORT_PROFILE, "native", spec), (DEMO_MODEL, "tflite-int8", "native", spec)]
    for _model, profile, _layout, _spec in jobs:
        Pipeline(DEMO_MODEL, profile, "native").run(demo_inputs(), trace=True)
    assert warm_up.precompile(jobs)[0] == 0


class _Started(list):
    """A list that can carry the fixture's ``cold`` switch."""


@pytest.fixture
def children(monkeypatch):
    """``(jobs, threads, child)`` of every cold-start child started; ``cold(flag)`` declares the
    JIT cache cold or warm."""
    started = _Started()
    start = warm_up.start_precompile

    def spy(jobs, threads=None):
        child = start(jobs, threads)
        started.append((jobs, threads, child))
        return child

    monkeypatch.setattr(warm_up, "start_precompile", spy)
    started.cold = lambda flag: monkeypatch.setattr(jitcache, "is_cold", lambda: flag)
    return started


def _cold_then_warm(children, argv, read):
    """``read(tag)`` after ``mrq *argv(tag)`` with the JIT cache declared cold (tag True), then
    warm (tag False)."""
    got = {}
    for cold in (True, False):
        children.cold(cold)
        r = mrq_in_process(*argv(cold))
        assert r.returncode == 0, r.stderr
        got[cold] = read(cold)
    return got


def test_cold_sim_starts_a_child_for_its_first_batch_and_writes_the_same(tmp_path, children):
    inputs = tmp_path / "in.npz"
    np.savez(inputs, input=demo_inputs(batch=5, seed=2)["input"])

    def read(tag):
        with np.load(tmp_path / f"out_{tag}.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    outs = _cold_then_warm(children, lambda tag: (
        "sim", DEMO_MODEL, "--profile", "tflite-int8", "--inputs", inputs, "-o",
        tmp_path / f"out_{tag}.npz", "--batch-size", "2", "--threads", "1", "-q"), read)
    (jobs, threads, child), = children                 # the warm run started none
    assert [tuple(job[:3]) for job in jobs] == [(DEMO_MODEL, "tflite-int8", "native")]
    assert jobs[0][3] == {"input": [np.dtype(np.float32).str, [2, 3, 16, 16]]}
    assert threads == 1
    assert child is not None and child.returncode is not None   # ended with the command
    assert json.loads(child.args[-2])[0][1] == "tflite-int8"
    assert outs[True].keys() == outs[False].keys()
    assert all(np.array_equal(outs[True][k], outs[False][k]) for k in outs[True])


def test_a_child_only_for_programs_with_enough_kernels():
    def first_batch(model, profile):
        pipe = Pipeline(model, profile, "native")
        return pipe.program, {s.name: ((1, *s.shape[1:]), s.dtype) for s in pipe.program.inputs}

    assert warm_up.worth_a_child(*first_batch(DEMO_MODEL, "tflite-int8"))
    # MLPerf Tiny AD01: two kernels, which the command compiles faster alone
    assert not warm_up.worth_a_child(*first_batch(os.path.join(MLPERF, "ad01_int8.tflite"),
                                                  "litert-default"))


def test_no_child_on_a_single_cpu(monkeypatch):
    monkeypatch.setattr(warm_up, "_usable_cpus", lambda: 1)
    assert warm_up.start_child("pass") is None


def test_cold_compare_starts_one_child_for_every_profile_and_reports_the_same(tmp_path, children):
    inputs = tmp_path / "in.npz"
    np.savez(inputs, input=demo_inputs(batch=6, seed=4)["input"])

    def read(tag):
        rep = json.loads((tmp_path / f"rep_{tag}.json").read_text())
        for row in rep["profiles"] + [rep["baseline"]]:   # less what the clock says
            row.pop("seconds")
            row["note"] = re.sub(r"[0-9.]+ s\b", "", row["note"])
        return rep["profiles"], rep["baseline"]

    reports = _cold_then_warm(children, lambda tag: (
        "compare", DEMO_MODEL, "--profiles", "tflite-int8", "nna-sym8", "--inputs", inputs,
        "--batch-size", "4", "-o", tmp_path / f"r_{tag}.html", "--json", tmp_path / f"rep_{tag}.json",
        "-q"), read)
    (jobs, _, child), = children                        # the warm run started none
    assert [tuple(job[1:3]) for job in jobs] == [("tflite-int8", "native"), ("nna-sym8", "native")]
    assert jobs[0][3] == {"input": [np.dtype(np.float32).str, [4, 3, 16, 16]]}
    assert child is not None and child.returncode is not None
    assert reports[True] == reports[False]
