"""Start-up: the first ``mrq sim`` (or ``mrq demo``) on a fresh machine, i.e. with a cold JIT
cache (empty ``NUMBA_CACHE_DIR`` and ``MRQ_CACHE_DIR``: every kernel compiles), and the second
run (cache warm). Per model: wall time of the process, its CPU time (user + sys: on a shared
machine the steadier figure), the time to the start of the first simulator step, and the number
of kernels the run compiled (the CLI's ``-v`` count). Not part of the test suite. A cold
``demo`` compiles its later profiles in a child process while it runs the first (mrq/demo.py):
its cpu counts both processes and its compiled count only the parent's; with two idle cores its
wall is about the larger of the two, so measure it on a quiet machine.

As a script (a table; ``demo`` is the ``mrq demo`` command, the others ``mrq sim`` of one
image of the bench models, default fidelity report included)::

    python bench/bench_startup.py [--models demo resnet8 kws ad01 mnv2-ort] [--rounds 1]

With pytest-benchmark (cold and warm ``mrq sim``)::

    python -m pytest bench/bench_startup.py --benchmark-json=/tmp/startup.json -q
    python bench/ratios.py /tmp/startup.json
"""
import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MODELS = ["demo", "resnet8", "kws", "ad01", "mnv2-ort"]
_COMPILED = re.compile(r"compiled (\d+) kernel\(s\)")


def _argv(model, work):
    if model == "demo":
        return ["demo", "-v"]
    path, profile = zoo.MODELS[model]
    inputs = os.path.join(work, "in.npz")
    if not os.path.exists(inputs):
        np.savez(inputs, **zoo.inputs(model, 1))
    return ["sim", path, "--profile", profile, "--inputs", inputs, "--out",
            os.path.join(work, "out.npz"), "-v"]


def _run_once(model, cache_dir, work):
    """One ``mrq`` process: (seconds to the first step, wall s, cpu s, kernels compiled)."""
    mark = os.path.join(work, "first_step")
    env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(cache_dir, "numba"),
               MRQ_CACHE_DIR=os.path.join(cache_dir, "mrq"), SIMULATOR_FIRST_STEP_FILE=mark)
    # as installed: the modules' bytecode is on disk after the first run, as pip leaves it
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    r = subprocess.run([sys.executable, "-m", "mrq", *_argv(model, work)], env=env, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        sys.exit(f"mrq {model} failed:\n{r.stderr}")
    with open(mark) as fh:
        first = float(fh.read()) - start
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    m = _COMPILED.search(r.stderr)
    return first, wall, cpu, int(m.group(1)) if m else 0


def _available(model):
    return model == "demo" or zoo.available(model)


@pytest.mark.parametrize("state", ["cold", "warm"])
@pytest.mark.parametrize("model", ["mnv2-ort", "resnet8"])
def test_startup(benchmark, model, state):
    if not _available(model):
        pytest.skip(f"{zoo.MODELS[model][0]} is not on this machine")
    work = tempfile.mkdtemp()
    cache = os.path.join(work, "cache")
    try:
        if state == "warm":
            _run_once(model, cache, work)  # fills the cache
        firsts = []

        def once():
            if state == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            firsts.append(_run_once(model, cache, work)[0])

        benchmark.group = f"startup {model}"
        benchmark.pedantic(once, rounds=1 if state == "cold" else 3, iterations=1)
        benchmark.extra_info.update(startup=state, model=model,
                                    first_step_s=min(firsts))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--rounds", type=int, default=1, help="cold runs per model (the best is shown)")
    args = ap.parse_args(argv)
    print(f"host: load {os.getloadavg()[0]:.1f}; times in s; cpu = user + sys of the process")
    print(f"{'model':<9} {'cold wall':>9} {'cold cpu':>8} {'1st step':>8} {'compiled':>8} "
          f"{'warm wall':>9} {'warm cpu':>8} {'load':>5}")
    for model in args.models:
        if not _available(model):
            print(f"{model:<9} skipped: {zoo.MODELS[model][0]} is not on this machine")
            continue
        colds = []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as work:
                cache = os.path.join(work, "cache")
                colds.append(_run_once(model, cache, work))
                warm = _run_once(model, cache, work)
        first, wall, cpu, compiled = min(colds, key=lambda c: c[1])
        print(f"{model:<9} {wall:9.2f} {cpu:8.2f} {first:8.2f} {compiled:8d} {warm[1]:9.2f} {warm[2]:8.2f} "
              f"{os.getloadavg()[0]:5.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
