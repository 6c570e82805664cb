"""`mrq sweep` on Dask: rows equal to a direct single-process computation, a separately started
scheduler with two workers, a worker and the client killed mid-sweep (nothing finished is lost,
the re-run computes only the rest), a failing cell recorded, bad input refused in one line."""
import csv
import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest

import mrq
from mrq.cli import main
from mrq.compare import wilson_interval as wilson
from mrq.demo import DEMO_MODEL
from mrq.float_ref import FloatReference
from mrq.onnx_import import load_model
from mrq.pipeline import Pipeline
from mrq.sweep import load_plan
from mrq.sweep_cells import (
    ExactSum,
    Shard,
    requantize_cell,
    row_metrics,
    run_shard,
)

pytest.importorskip("distributed")   # the dev extra installs it; CI runs these tests

N_SAMPLES = 24


def _write_sweep(path, *, profiles, shard_size, samples=N_SAMPLES, labels="labels.npy",
                 methods="[naive, full]"):
    path.write_text(f"models: [{DEMO_MODEL}]\nprofiles: [{', '.join(profiles)}]\n"
                    f"methods: {methods}\n"
                    f"datasets:\n  - {{name: rnd, inputs: in.npz, labels: {labels}, calibration: calib.npz}}\n"
                    f"shard_size: {shard_size}\nbatch_size: 4\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(7)
    np.savez(d / "in.npz", input=rng.random((N_SAMPLES, 3, 16, 16)).astype(np.float32))
    np.save(d / "labels.npy", rng.integers(0, 10, N_SAMPLES))
    np.savez(d / "calib.npz", input=rng.random((8, 3, 16, 16)).astype(np.float32))
    # a profile the demo model cannot be re-quantized to: its cells fail, the sweep goes on
    text = (mrq_profile_dir() / "nna-sym8.yaml").read_text()
    (d / "no-conv.yaml").write_text(text.replace("supported_ops: [Conv, ", "supported_ops: [")
                                    .replace("name: nna-sym8", "name: no-conv"))
    return d


def mrq_profile_dir():
    from mrq.hw_profile import find_profiles
    return next(e.directory for e in find_profiles() if e.name == "nna-sym8")


def _one_error_line(capsys_or_text):
    text = capsys_or_text if isinstance(capsys_or_text, str) else capsys_or_text.readouterr().err
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mrq sweep: error: "), text
    return lines[0]


# --------------------------------------------------------------------------------------------
# Exact reduction
# --------------------------------------------------------------------------------------------


def test_exact_sum_is_exact_on_random_and_extreme_values():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.random(500) * 10.0 ** rng.integers(-300, 300, 500),
                             [0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
                              1.0, 2.0 ** -1074 * 3, np.nextafter(1.0, 2.0)]])
    exact = sum(Fraction(float(v)) for v in values) * 2 ** 1074
    assert ExactSum.of(values) == exact
    # any split into parts adds up to the same integer
    cuts = sorted(rng.choice(len(values), 5, replace=False))
    assert sum(ExactSum.of(p) for p in np.split(values, cuts)) == exact
    with pytest.raises(ValueError):
        ExactSum.of(np.array([1.0, -1.0]))
    assert ExactSum.ratio_db(100, 1) == pytest.approx(20.0) and ExactSum.ratio_db(1, 0) == math.inf


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (81, 263), (9999, 10000), (1, 1)])
def test_wilson_interval_is_the_score_test_inversion(k, n):
    # the interval's ends are the p where the score statistic equals z:
    # (k/n - p)^2 = z^2 p (1 - p) / n, a quadratic in p
    z2 = 1.959963984540054 ** 2
    phat = k / n
    roots = np.sort(np.roots([1 + z2 / n, -(2 * phat + z2 / n), phat * phat]).real)
    assert wilson(k, n) == pytest.approx(tuple(np.clip(roots, 0, 1)), abs=1e-12)
    assert wilson(0, 10)[1] == pytest.approx(z2 / (10 + z2), abs=1e-15)


# --------------------------------------------------------------------------------------------
# A local cluster: rows equal to a direct computation, a failing cell recorded
# --------------------------------------------------------------------------------------------


def test_local_cluster_rows_equal_direct_computation(data, tmp_path, capsys):
    sweep = _write_sweep(data / "local.yaml", profiles=["nna-sym8", "no-conv.yaml"], shard_size=8)
    out, report = tmp_path / "out", tmp_path / "sweep.json"
    code = main(["sweep", str(sweep), "-o", str(out), "-j", "2", "--json", str(report), "-q"])
    err = capsys.readouterr().err
    assert code == 1, err        # the no-conv cells failed; everything else was computed
    result = json.loads(report.read_text())
    rows = {(r["profile"], r["method"]): r for r in result["rows"]}
    assert set(rows) == {("no-conv.yaml", "full"), ("no-conv.yaml", "naive"),
                         ("nna-sym8", "full"), ("nna-sym8", "naive")}
    for method in ("naive", "full"):
        bad = rows[("no-conv.yaml", method)]
        assert bad["status"] == "failed" and "unsupported op 'Conv'" in bad["error"]
        assert f"no-conv.yaml / {method} / rnd: UnsupportedOpError" in err
    assert result["computed"] == 2 * 3 and result["reused"] == 0     # 2 cells x 3 shards
    assert len(list((out / "state").glob("*.shard.json"))) == 6

    plan = load_plan(str(sweep))
    for cell in plan.cells[:2]:                                      # the nna-sym8 cells
        row = rows[("nna-sym8", cell.method.name)]
        rq = requantize_cell(cell)
        direct = run_shard([cell], [rq], Shard(0, N_SAMPLES))[cell.key]
        want = row_metrics(direct, has_labels=True)
        for k, v in want.items():
            if k != "simulate_seconds":
                assert row[k] == (str(v) if isinstance(v, float) and math.isinf(v) else v), k
        assert row["n_samples"] == N_SAMPLES and row["model_sha256"] == cell.model_hash
        assert row["mrq_version"] == mrq.__version__ and row["command"].startswith("mrq sweep")

        # and against a plain computation over all samples at once
        x = np.load(data / "in.npz")["input"]
        labels = np.load(data / "labels.npy")
        ref = FloatReference(load_model(str(DEMO_MODEL))).run({"input": x})["logits"]
        ref = ref.astype(np.float64)
        sim = Pipeline(rq.graph, "nna-sym8", layout="native").run({"input": x}).outputs["logits"]
        sim = np.asarray(sim, dtype=np.float64)
        assert row["agreement"] == np.mean(sim.argmax(1) == ref.argmax(1))
        assert row["accuracy"] == np.mean(sim.argmax(1) == labels)
        assert row["input_model_accuracy"] == np.mean(ref.argmax(1) == labels)
        plain_db = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - sim) ** 2))
        assert row["output_sqnr_db"] == pytest.approx(plain_db, rel=1e-9)
        assert row["agreement_ci_low"] <= row["agreement"] <= row["agreement_ci_high"]
        assert row["requant_seconds"] > 0 and row["weight_bytes"] > 0 and row["worst_layer"]

    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["profile"], r["method"], r["status"]) for r in table] == \
        [(r["profile"], r["method"], r["status"]) for r in result["rows"]]
    assert float(table[0]["output_sqnr_db"]) == result["rows"][0]["output_sqnr_db"]
    from mrq.sweep_report import parquet_available
    if parquet_available():      # Parquet is optional (pyarrow): the same rows when written
        import pyarrow.parquet as pq
        parquet = pq.read_table(out / "results.parquet")
        assert parquet.column("cell_key").to_pylist() == [r["cell_key"] for r in table]
        assert parquet.schema.metadata[b"mrq_version"] == mrq.__version__.encode()
    html = (out / "summary.html").read_text()
    assert "data:image/png;base64," in html and f"mrq {mrq.__version__}" in html
    assert rows[("nna-sym8", "full")]["model_sha256"][:16] in html

    # the same command again: every cell-shard comes from the store
    code = main(["sweep", str(sweep), "-o", str(out), "-j", "1", "--json", str(report), "-q"])
    again = json.loads(report.read_text())
    assert code == 1 and again["computed"] == 0 and again["reused"] == 6
    strip = ("date", "simulate_seconds", "command")
    assert [{k: v for k, v in r.items() if k not in strip} for r in again["rows"]] == \
        [{k: v for k, v in r.items() if k not in strip} for r in result["rows"]]


# --------------------------------------------------------------------------------------------
# A separately started scheduler and two workers
# --------------------------------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """`dask scheduler` + 2 `dask worker` processes (no nanny: a killed worker stays dead)."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "dask.log", "w")   # noqa: SIM115  (closed when the processes end)
    cmd = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen(cmd + ["scheduler", "--host", "127.0.0.1", "--port", str(port),
                                     "--no-dashboard"], stdout=log, stderr=log)]
    try:
        workers = [subprocess.Popen(cmd + ["worker", address, "--nthreads", "1", "--no-nanny",
                                           "--no-dashboard", "--name", f"w{i}"], stdout=log, stderr=log)
                   for i in range(2)]
        procs += workers
        from distributed import Client
        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield address, workers
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


def _shard_files(out):
    return set((out / "state").glob("*.shard.json")) if (out / "state").exists() else set()


def _wait_for(pred, timeout, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if proc is not None and proc.poll() is not None:
            return pred()
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_scheduler_killed_worker_and_client_resume(data, tmp_path, dask_cluster, capsys, monkeypatch):
    address, workers = dask_cluster
    # one sample per shard: enough tasks for the kills to land mid-sweep
    sweep = _write_sweep(data / "remote.yaml", profiles=["nna-sym8"], shard_size=1, methods="[naive]")
    out, report = tmp_path / "out", tmp_path / "sweep.json"
    argv = [sys.executable, "-m", "mrq", "sweep", str(sweep), "-o", str(out), "--scheduler", address,
            "--json", str(report), "-q"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: len(_shard_files(out)) >= 2, 120, first), first.communicate()
        os.kill(workers[0].pid, signal.SIGKILL)           # a worker dies mid-sweep
        before = _shard_files(out)
        # the sweep goes on with the other worker (or had just finished)
        progressed = _wait_for(lambda: len(_shard_files(out)) >= len(before) + 3, 60, first)
        finished_early = first.poll() is not None
        assert progressed or first.returncode == 0
        first.kill()                                       # and then the client
        first.communicate()
    finally:
        if first.poll() is None:
            first.kill()
    kept = _shard_files(out)
    assert before <= kept                                  # nothing finished was lost
    if not finished_early:
        assert not list(out.glob("results.*"))             # the killed run wrote no table
    # the re-run in this process: what is tested is the store the killed client left, and the
    # first client above ran the real entry point
    capsys.readouterr()
    assert main(argv[3:]) == 0, capsys.readouterr().err
    result = json.loads(report.read_text())
    assert result["reused"] == len(kept) and result["computed"] == N_SAMPLES - len(kept)
    assert finished_early or result["computed"] > 0
    row, = result["rows"]
    assert row["status"] == "ok" and row["n_samples"] == N_SAMPLES
    # the rows of the interrupted, resumed sweep equal those of a direct computation
    cell = load_plan(str(sweep)).cells[0]
    want = row_metrics(run_shard([cell], [requantize_cell(cell)], Shard(0, N_SAMPLES))[cell.key], True)
    assert row["agreement"] == want["agreement"] and row["output_sqnr_db"] == want["output_sqnr_db"]
    assert row["worst_layer_sqnr_db"] == want["worst_layer_sqnr_db"]

    # the last worker gone: new work is refused in one line instead of waiting forever
    os.kill(workers[1].pid, signal.SIGKILL)
    workers[1].wait()
    from distributed import Client
    with Client(address, timeout=30, set_as_default=False) as client:
        assert _wait_for(lambda: not client.scheduler_info()["workers"], 30)
    import mrq.sweep
    monkeypatch.setattr(mrq.sweep, "WORKER_WAIT_S", 1)
    capsys.readouterr()
    code = main(["sweep", str(sweep), "-o", str(tmp_path / "idle"), "--scheduler", address])
    assert code == 2 and "has had no worker for 1 s" in _one_error_line(capsys)
    assert not (tmp_path / "idle").exists()


def test_a_worker_that_sees_other_inputs_fails_the_cell_for_this_run_only(data):
    sweep = _write_sweep(data / "mismatch.yaml", profiles=["nna-sym8"], shard_size=8, methods="[naive]")
    cell = load_plan(str(sweep)).cells[0]
    for changed, what in ((dataclasses.replace(cell, profile_hash="0" * 64), "profile 'nna-sym8'"),
                          (dataclasses.replace(cell, model_hash="0" * 64), str(DEMO_MODEL))):
        rq = requantize_cell(changed)
        assert rq.error.startswith(f"WorkerMismatch: {what} on this worker differs"), rq.error
        assert not rq.final and rq.graph is None
    assert requantize_cell(cell).error is None


# --------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# --------------------------------------------------------------------------------------------


def _bad_case(d, case):
    if case == "missing model":
        (d / "s.yaml").write_text("models: [nowhere.onnx]\nprofiles: [nna-sym8]\n"
                                  "datasets: [{inputs: in.npz}]\n")
        return "models[0]: nowhere.onnx: no such file"
    if case == "missing profile":
        _write_sweep(d / "s.yaml", profiles=["nna-sym9"], shard_size=8)
        return "profiles[0]: nna-sym9: field '<file>': no hardware profile named 'nna-sym9'"
    if case == "wrong label length":
        np.save(d / "short.npy", np.zeros(N_SAMPLES - 1, np.int64))
        _write_sweep(d / "s.yaml", profiles=["nna-sym8"], shard_size=8, labels="short.npy")
        return f"{N_SAMPLES - 1} labels for {N_SAMPLES} input samples"
    if case == "shards with different names":
        (d / "shards").mkdir()
        np.savez(d / "shards" / "a.npz", input=np.zeros((2, 3, 16, 16), np.float32))
        np.savez(d / "shards" / "b.npz", image=np.zeros((2, 3, 16, 16), np.float32))
        (d / "s.yaml").write_text(f"models: [{DEMO_MODEL}]\nprofiles: [nna-sym8]\n"
                                  "datasets: [{inputs: shards}]\n")
        return "every shard needs the same names"
    if case == "wrong sample shape":
        np.savez(d / "small.npz", input=np.zeros((4, 3, 8, 8), np.float32))
        (d / "s.yaml").write_text(f"models: [{DEMO_MODEL}]\nprofiles: [nna-sym8]\n"
                                  "datasets: [{inputs: small.npz}]\n")
        return "'input' holds samples of shape (3, 8, 8), but model 'demo_cnn' takes (3, 16, 16)"
    if case == "alias bomb":
        rows = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
        rows += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(6)]
        (d / "s.yaml").write_text("\n".join(rows) + "\n")
        return "expands (through aliases) to more than"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing model", "missing profile", "wrong label length",
                                  "shards with different names", "wrong sample shape", "alias bomb"])
def test_bad_sweep_input_is_one_line_and_writes_nothing(data, tmp_path, capsys, case):
    for name in ("in.npz", "labels.npy", "calib.npz"):
        (tmp_path / name).symlink_to(data / name)
    expected = _bad_case(tmp_path, case)
    code = main(["sweep", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "out")])
    line = _one_error_line(capsys)
    assert code == 2 and expected in line, line
    assert not (tmp_path / "out").exists()


def test_unreachable_scheduler_is_a_quick_one_line_error(data, tmp_path, capsys):
    sweep = _write_sweep(data / "local.yaml", profiles=["nna-sym8"], shard_size=8)
    t0 = time.monotonic()
    code = main(["sweep", str(sweep), "-o", str(tmp_path / "out"),
                 "--scheduler", f"tcp://127.0.0.1:{_free_port()}"])
    line = _one_error_line(capsys)
    assert code == 2 and "cannot reach the Dask scheduler" in line
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "out").exists()


def test_without_dask_the_error_names_the_extra(data, tmp_path, capsys, monkeypatch):
    import mrq.sweep
    monkeypatch.setattr(mrq.sweep, "dask_available", lambda: False)
    code = main(["sweep", str(data / "nothing.yaml"), "-o", str(tmp_path / "out")])
    assert code == 2 and 'pip install "mrq-nna[sweep]"' in _one_error_line(capsys)


def test_sweep_file_errors_name_the_field(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(f"models: [{DEMO_MODEL}]\nprofiles: [nna-sym8]\n"
                                     "methods: [naive, clever]\ndatasets: [{inputs: x.npz}]\n")
    assert main(["sweep", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "out")]) == 2
    assert "methods[1]: unknown method 'clever'" in _one_error_line(capsys)
