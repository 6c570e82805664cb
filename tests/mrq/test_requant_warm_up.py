"""``mrq requant`` on a cold kernel cache compiles its check's kernels in a child process while
the passes run (mrq/commands/requant_warm.py): the child must leave exactly the kernels the
check runs, and what the command writes and prints never depends on it."""
import json
import subprocess
import sys

import numpy as np
import pytest
from cli_in_process import mrq_in_process

from mrq.commands import requant_warm
from mrq.demo import DEMO_MODEL, demo_inputs
from mrq.hw_profile import load_profile
from mrq.warm_up import input_spec
from simulator.kernels import jitcache

PROFILE = "nna-w4a8"
# enough images that a multi-threaded run would take the parallel drivers, and more than the
# child simulates (requant_warm.WARM_UP_BATCH)
BATCH = 96

# In a fresh process: the child's warm-up, then the command's check, recording every kernel
# signature numba resolves (compiled, or loaded from the on-disk cache: the child's work
# reaches the command that way) in each.
_SCRIPT = """
import json, sys
from numba.core.dispatcher import Dispatcher
import mrq.api
from mrq.cli import main
from mrq.commands import requant_warm
from simulator.kernels import jitcache

phase = ["start"]
resolved = {"warm_up": [], "check": []}
compile_for_args = Dispatcher._compile_for_args

def spy(self, *args, **kws):
    if phase[0] in resolved:
        resolved[phase[0]].append(self.py_func.__module__ + "." + self.py_func.__qualname__)
    return compile_for_args(self, *args, **kws)

Dispatcher._compile_for_args = spy
simulate = mrq.api.simulate

def check(*a, **k):
    phase[0] = "check"
    try:
        return simulate(*a, **k)
    finally:
        phase[0] = "after"

jitcache.is_cold = lambda: False     # the child's work is done in this process instead
model, profile, calib, out, spec = sys.argv[1:]
phase[0] = "warm_up"
requant_warm.warm_up(model, profile, json.loads(spec))
phase[0] = "passes"
mrq.api.simulate = check
code = main(["requant", model, "--profile", profile, "--calib", calib, "-o", out, "-q"])
print(json.dumps({"code": code, **resolved}))
"""


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, **demo_inputs(BATCH, seed=3))
    return path


def test_the_childs_warm_up_resolves_every_kernel_the_check_runs(tmp_path, calib):
    with np.load(calib, allow_pickle=False) as z:
        spec = input_spec({name: (z[name].shape, z[name].dtype) for name in z.files})
    r = subprocess.run([sys.executable, "-c", _SCRIPT, DEMO_MODEL, PROFILE, str(calib),
                        str(tmp_path / "out.onnx"), json.dumps(spec)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["code"] == 0
    assert any(name.startswith("simulator.kernels.") for name in got["warm_up"])
    assert got["check"] == []


def test_cold_cache_starts_the_child_and_the_command_writes_the_same(tmp_path, calib, monkeypatch):
    children = []
    start = requant_warm.CheckWarmUp.start

    def spy(*args):
        warming = start(*args)
        children.append(warming.process)
        return warming

    monkeypatch.setattr(requant_warm.CheckWarmUp, "start", spy)
    runs = {}
    for cold in (True, False):
        monkeypatch.setattr(jitcache, "is_cold", lambda cold=cold: cold)
        out = tmp_path / f"{cold}.onnx"
        r = mrq_in_process("requant", DEMO_MODEL, "--profile", PROFILE, "--calib", calib, "-o", out)
        assert r.returncode == 0, r.stderr
        # the first line says how long the passes took
        runs[cold] = (out.read_bytes(), r.stdout.split("\n", 1)[1].replace(str(out), "OUT"))
    assert runs[True] == runs[False]
    child, none = children
    assert none is None
    assert child is not None and child.returncode == 0   # reaped before the check ran


def test_no_child_without_a_single_threaded_check_a_model_file_or_a_cold_cache(monkeypatch, calib):
    arrays = dict(np.load(calib, allow_pickle=False))
    wraps, saturates = load_profile(PROFILE), load_profile("nna-sym8-acc16")
    assert (requant_warm.check_threads(wraps), requant_warm.check_threads(saturates)) == (1, None)
    monkeypatch.setattr(jitcache, "is_cold", lambda: True)
    start = requant_warm.CheckWarmUp.start
    assert start(DEMO_MODEL, PROFILE, wraps, None).process is None
    assert start(None, PROFILE, wraps, arrays).process is None   # --budget
    assert start(DEMO_MODEL, "nna-sym8-acc16", saturates, arrays).process is None
    monkeypatch.setattr(jitcache, "is_cold", lambda: False)
    assert start(DEMO_MODEL, PROFILE, wraps, arrays).process is None
