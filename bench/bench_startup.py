"""Start-up of ``mrq sim``: wall time from launching the process to the start of the first
simulator step, with a cold JIT cache (an empty ``NUMBA_CACHE_DIR``: every kernel compiles) and
with the cache warm (the second run). Not part of the test suite:

    python -m pytest bench/bench_startup.py --benchmark-json=/tmp/startup.json -q
    python bench/ratios.py /tmp/startup.json
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _sim_once(model, cache_dir, work):
    """Run ``mrq sim`` once; returns (seconds to the first step, total seconds)."""
    path, profile = zoo.MODELS[model]
    inputs = os.path.join(work, "in.npz")
    if not os.path.exists(inputs):
        np.savez(inputs, **zoo.inputs(model, 1))
    mark = os.path.join(work, "first_step")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, SIMULATOR_FIRST_STEP_FILE=mark)
    start = time.time()
    subprocess.run([sys.executable, "-m", "mrq", "sim", path, "--profile", profile, "--inputs",
                    inputs, "--out", os.path.join(work, "out.npz")],
                   check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    total = time.time() - start
    with open(mark) as fh:
        first = float(fh.read()) - start
    return first, total


@pytest.mark.parametrize("state", ["cold", "warm"])
@pytest.mark.parametrize("model", ["mnv2-ort", "resnet8"])
def test_startup(benchmark, model, state):
    if not zoo.available(model):
        pytest.skip(f"{zoo.MODELS[model][0]} is not on this machine")
    work = tempfile.mkdtemp()
    cache = os.path.join(work, "numba-cache")
    try:
        if state == "warm":
            _sim_once(model, cache, work)  # fills the cache
        firsts = []

        def once():
            if state == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            first, _ = _sim_once(model, cache, work)
            firsts.append(first)

        benchmark.group = f"startup {model}"
        benchmark.pedantic(once, rounds=1 if state == "cold" else 3, iterations=1)
        benchmark.extra_info.update(startup=state, model=model,
                                    first_step_s=min(firsts))
    finally:
        shutil.rmtree(work, ignore_errors=True)
