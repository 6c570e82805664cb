"""Interrupting ``mrq sim`` anywhere never leaves a partial output (issue 19), and its outputs do
not depend on how the run was split up (threads, batch size, whole-program compilation).

Interrupts: SIGINT, SIGTERM and SIGKILL at random moments of real runs (start-up, simulation,
write), plus a few that land inside the write for certain (np.savez made slow, as in
test_safe_outputs.py). After each one the target is absent or a complete npz equal to an
uninterrupted run's; SIGINT/SIGTERM print no traceback; the next normal run in the folder
leaves no ``.mrq-tmp-*`` behind (SIGKILL strands them, the sweep must take them)."""
import collections
import concurrent.futures
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from cli_in_process import mrq_in_process
from test_safe_outputs import _SLOW_WRITE, mrq, temporaries

from mrq.demo import DEMO_MODEL, demo_inputs

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
# (random delays, in-write cases per signal): the default run sends each signal once at a random
# moment and once inside the write, with delays drawn from a fresh seed every run (printed on
# failure), so successive runs cover other moments; the soak (``pytest -m long``) sends each
# signal 17 times at random and twice in the write. MRQ_INTERRUPT_RANDOM overrides the random
# count of the default run.
QUICK = (int(os.environ.get("MRQ_INTERRUPT_RANDOM", "3")), 1)
SOAK = (51, 2)
STARTUP_S = 0.05       # the interpreter's own start-up (measured 10-30 ms on the CI host)


def _sim_args(inputs, out, *extra):
    return ["sim", str(DEMO_MODEL), "--profile", "onnxruntime-cpu", "--inputs", str(inputs),
            "-o", str(out), "--no-fidelity", "-q", *extra]


def _load(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _same(got, want):
    return list(got) == list(want) and all(
        got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]) for k in want)


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(argv, sig, delay, in_write_of=None):
    """Start ``argv``, send ``sig`` after ``delay`` s (or once a temporary shows up in
    ``in_write_of``); returns (returncode, stderr)."""
    # As an interactive shell starts a foreground job: SIGINT at its default disposition. A
    # background job of a non-interactive shell (CI scripts started with `&`) inherits SIGINT
    # ignored, and mrq rightly keeps ignoring it there, as nohup'd programs do.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)  # noqa: PLW1509 - sets one signal disposition
    if in_write_of is not None:
        deadline = time.time() + 60
        while not temporaries(in_write_of) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
    else:
        time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def python_startup_traceback(err):
    """A KeyboardInterrupt traceback from before mrq's ``main`` ran: the signal landed while the
    interpreter was still starting (site and its .pth hooks, runpy) or importing the entry
    modules (every frame in mrq is module-level code, "in <module>"), where only Python's own
    handler exists. Any frame of mrq inside a function means mrq's code was running: not this.
    A signal inside importlib's module-lock callback is printed as "Exception ignored in: ...
    KeyboardInterrupt: " (seen under load with the signal at STARTUP_S): the interpreter's too."""
    frames = re.findall(r'File "([^"]+)", line \d+, in (\S+)', err)
    return (re.search(r"KeyboardInterrupt:?$", err.rstrip()) is not None and bool(frames)
            and all(func == "<module>" for path, func in frames if os.sep + "mrq" + os.sep in path))


def _check(sig, code, err, out, want, label):
    if sig != signal.SIGKILL and not python_startup_traceback(err):
        assert "Traceback" not in err, (label, err)
        if code != 0 and code != -sig:   # -sig: before Python installed any handler
            assert code == 130 and err.strip().endswith("interrupted"), (label, code, err)
    if out.exists():
        assert _same(_load(out), want), f"{label}: target differs from an uninterrupted run's"
    else:
        assert code != 0, (label, "exit code 0 but no output")


@pytest.mark.slow
@pytest.mark.parametrize("n_random, n_in_write", [
    pytest.param(*QUICK, id="quick"), pytest.param(*SOAK, id="soak", marks=pytest.mark.long)])
def test_interrupts_never_leave_a_partial_output(tmp_path, n_random, n_in_write):
    inputs = tmp_path / "in.npz"
    np.savez(inputs, **demo_inputs(2000))
    work = tmp_path / "out"
    work.mkdir()
    ref = tmp_path / "ref.npz"
    # fills the JIT cache, so the next one times a real run; in this process, since only the
    # interrupted runs and the timed one need to be processes of their own
    r = mrq_in_process(*_sim_args(inputs, ref))
    assert r.returncode == 0, r.stderr
    started = time.perf_counter()
    r = mrq(*_sim_args(inputs, ref))
    full = time.perf_counter() - started
    assert r.returncode == 0, r.stderr
    want = _load(ref)

    seed = int(os.environ.get("MRQ_INTERRUPT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    # From STARTUP_S on: before that the Python interpreter itself is still starting (site
    # imports; no mrq code has run), and an interrupt there is Python's own traceback.
    cases = [(SIGNALS[i % 3], rng.uniform(STARTUP_S, full * 1.1), None) for i in range(n_random)]
    cases += [(sig, 0.0, "write") for sig in SIGNALS for _ in range(n_in_write)]
    rng.shuffle(cases)

    def one(i, case):
        sig, delay, how = case
        out = work / f"o{i}.npz"
        if how == "write":  # a folder of its own, so "a temporary exists" is this run's
            sub = work / f"w{i}"
            sub.mkdir()
            out = sub / "o.npz"
            argv = [sys.executable, "-c", _SLOW_WRITE, *_sim_args(inputs, out)]
        else:
            argv = [sys.executable, "-m", "mrq", *_sim_args(inputs, out)]
        code, err = _interrupt(argv, sig, delay, out.parent if how else None)
        label = f"seed {seed}, case {i}: {sig.name} {how or f'after {delay:.2f} s'}"
        _check(sig, code, err, out, want, label)
        return sig.name, code, out.exists(), python_startup_traceback(err)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, range(len(cases)), cases))
    assert len(results) == len(cases) == n_random + len(SIGNALS) * n_in_write
    print("seed", seed, "outcomes (signal, exit code, target written, in Python's start-up):",
          collections.Counter(results))
    interrupted = sum(code != 0 for _, code, _, _ in results)
    # delays start after the interpreter's usual start-up: only a loaded machine lands there
    assert sum(r[3] for r in results) <= 2, (seed, results)
    # the delays must mostly land inside runs, or this tests nothing
    assert interrupted >= len(results) // 2, (seed, results)

    # a normal run in each folder sweeps what SIGKILL stranded
    # the in-write cases' own folders (a SIGKILLed run's spill folder is a temporary, which the
    # run in ``work`` must sweep, not a folder to run in); in this process: the sweep is the
    # command's code, and test_safe_outputs.py's sweep test runs it in a real process
    for folder in [work, *sorted(p for p in work.iterdir() if p.is_dir() and re.fullmatch(r"w\d+", p.name))]:
        r = mrq_in_process(*_sim_args(inputs, folder / "final.npz"))
        assert r.returncode == 0, r.stderr
        assert temporaries(folder) == [], (seed, folder)
        assert _same(_load(folder / "final.npz"), want)


@pytest.mark.slow
def test_outputs_do_not_depend_on_threads_batches_or_compilation(tmp_path):
    inputs = tmp_path / "in.npz"
    np.savez(inputs, **demo_inputs(70))  # 70: batches of 64 and 7 both leave a short last one
    outs = {}
    for compile_ in ("no", "yes"):
        for threads in (1, 2):
            # not the compiled program at batch 64 (a demo program's 30 s of cold compilation,
            # while the batch split over threads of compiled programs is test_compiled.py's)
            for batch in (1, 7) if compile_ == "yes" else (1, 7, 64):
                out = tmp_path / f"{compile_}-t{threads}-b{batch}.npz"
                # in this process: twelve process starts would cost more than the runs, and
                # the interrupt tests above run the real entry point
                r = mrq_in_process(*_sim_args(inputs, out, "--threads", threads,
                                              "--batch-size", batch, "--compile", compile_))
                assert r.returncode == 0, r.stderr
                outs[compile_, threads, batch] = _load(out)
    base = outs["no", 1, 1]
    assert base and all(v.size for v in base.values())
    for key, got in outs.items():
        assert _same(got, base), f"--compile/threads/batch {key} differ from no/1/1"


def test_ctrl_c_while_the_handlers_go_in_ends_as_they_would():
    """A KeyboardInterrupt raised inside install_process_handlers (Python's own SIGINT handler
    is still the one in place: seen in CI at 50 ms, inside signal.getsignal's enum conversion)
    ends the process as mrq's handler would: ``interrupted``, exit 130, no traceback."""
    code = ("import sys, mrq.entry as e\n"
            "def install():\n    raise KeyboardInterrupt\n"
            "e.install_process_handlers = install\nsys.exit(e.main())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       check=False)
    assert (r.returncode, r.stderr) == (130, "interrupted\n"), r


def test_sigint_during_startup_prints_no_traceback(tmp_path):
    inputs = tmp_path / "in.npz"
    np.savez(inputs, **demo_inputs(2))
    for entry in (["-m", "mrq"], ["-c", "import sys; from mrq.entry import main; sys.exit(main())"]):
        argv = [sys.executable, *entry, *_sim_args(inputs, tmp_path / "o.npz")]
        reached_mrq = 0
        for delay in (STARTUP_S, 0.08, 0.1, 0.15, 0.2, 0.3, 0.6):
            code, err = _interrupt(argv, signal.SIGINT, delay)
            if python_startup_traceback(err):
                continue   # a loaded machine: still in the interpreter's start-up
            if code == -signal.SIGINT and not err.strip():
                continue   # earlier still: before Python installs any handler, it dies silently
            assert "Traceback" not in err, (entry, delay, err)
            assert code == 130 and err.strip() == "interrupted", (entry, delay, code, err)
            reached_mrq += 1
        # else every signal landed in the interpreter's start-up and nothing of mrq was tested
        assert reached_mrq, entry
