"""The console entry point (mrq/entry.py) asks idle worker threads to sleep: before numpy or
numba load (they read the settings then), and never over a value the user set."""
import os
import subprocess
import sys

import pytest

from mrq.entry import IDLE_THREADS, quiet_idle_threads
from simulator.capabilities import OMP_IDLE

_PROBE = """
import os, sys
import mrq.cli, mrq.entry
def probe():
    print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"),
          os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
          "numpy" in sys.modules, "numba" in sys.modules)
    return 0
mrq.cli.main = probe
sys.exit(mrq.entry.main())
"""


def test_idle_thread_defaults_fill_only_what_the_user_left_unset():
    # the OpenMP pair is one choice: a user's ACTIVE policy must not get our short spin count
    for mine in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}):
        env = dict(mine)
        quiet_idle_threads(env)
        assert env == {**mine, "OPENBLAS_THREAD_TIMEOUT": IDLE_THREADS["OPENBLAS_THREAD_TIMEOUT"]}
    env = {"OPENBLAS_THREAD_TIMEOUT": "0"}
    quiet_idle_threads(env)
    assert env == {"OPENBLAS_THREAD_TIMEOUT": "0", **OMP_IDLE}


def test_entry_point_sets_them_before_numpy_loads():
    env = {k: v for k, v in os.environ.items() if k not in IDLE_THREADS and k not in OMP_IDLE}
    r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [OMP_IDLE["OMP_WAIT_POLICY"], OMP_IDLE["GOMP_SPINCOUNT"],
                                IDLE_THREADS["OPENBLAS_THREAD_TIMEOUT"],
                                "False", "False"]


_FINISH = """
import atexit, sys, threading, time
import mrq.cli, mrq.entry
out = sys.argv[1]
class Finalised:
    def __del__(self):
        sys.stderr.write("finalised\\n")
kept = Finalised()   # a module global: freed only by the interpreter's finalization
def probe():
    atexit.register(lambda: open(out, "w").write("exit handler ran"))
    sys.stdout.write("unflushed line")
    if sys.argv[2] == "thread":
        threading.Thread(target=lambda: (time.sleep(0.3), sys.stdout.write(" thread done"))).start()
    return int(sys.argv[3])
mrq.cli.main = probe
sys.exit(mrq.entry.main())
"""


@pytest.mark.parametrize("threads,code,stdout,finalised", [
    # the interpreter's finalization (what costs 0.4-0.6 s after a command) does not run
    ("none", 3, "unflushed line", False),
    # another thread still runs: the normal exit, which waits for it
    ("thread", 0, "unflushed line thread done", True)])
def test_finish_runs_exit_handlers_flushes_and_keeps_the_code(tmp_path, threads, code, stdout,
                                                             finalised):
    out = tmp_path / "handler.txt"
    r = subprocess.run([sys.executable, "-c", _FINISH, str(out), threads, str(code)],
                       capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout) == (code, stdout)
    assert out.read_text() == "exit handler ran"
    assert ("finalised" in r.stderr) == finalised
