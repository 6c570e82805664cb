"""Per-test CPU time of a pytest run, for ranking what the suite spends its time on when the
machine is shared (wall times then measure the other jobs as much as the tests).

As a plugin: each test's CPU (this process's user+sys, plus that of the child processes it
waited for: subprocess CLI runs, forced-path children) and wall time are appended, one line per
test, to ``$PYTEST_CPU_DIR/<xdist worker>.tsv``. Setup of module- and session-scoped fixtures is
charged to the first test that needs them, as pytest runs it. Then rank and sum them::

    rm -rf /tmp/cpu && PYTEST_CPU_DIR=/tmp/cpu PYTHONPATH=bench \\
        python -m pytest -q -n 2 -p pytest_cpu
    python bench/pytest_cpu.py /tmp/cpu [--top 40] [--by-module]

For cold figures give the run empty caches (``NUMBA_CACHE_DIR=$(mktemp -d)
MRQ_CACHE_DIR=$(mktemp -d)``). Collection and worker start-up are outside the tests: the
whole-run CPU (``/usr/bin/time -v``'s user+sys) minus the sum printed here is that overhead.
"""
from __future__ import annotations

import argparse
import collections
import os
import pathlib
import resource
import sys
import time

import pytest

_DIR_ENV = "PYTEST_CPU_DIR"


def _cpu_s() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    own0, kids0 = _cpu_s()
    wall0 = time.perf_counter()
    yield
    own1, kids1 = _cpu_s()
    out_dir = os.environ.get(_DIR_ENV)
    if not out_dir:
        return
    os.makedirs(out_dir, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    # appended per test, so that an interrupted run still leaves what it measured
    with open(os.path.join(out_dir, f"{worker}.tsv"), "a") as fh:
        fh.write(f"{item.nodeid}\t{own1 - own0:.2f}\t{kids1 - kids0:.2f}\t"
                 f"{time.perf_counter() - wall0:.2f}\n")


def _read(out_dir: pathlib.Path) -> list[tuple[str, float, float, float]]:
    rows = []
    for path in sorted(out_dir.glob("*.tsv")):
        for line in path.read_text().splitlines():
            nodeid, own, kids, wall = line.rsplit("\t", 3)
            rows.append((nodeid, float(own), float(kids), float(wall)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=pathlib.Path, help="the PYTEST_CPU_DIR of a run")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--by-module", action="store_true", help="sum per test module")
    args = ap.parse_args(argv)
    rows = _read(args.dir)
    if not rows:
        print(f"no measurements in {args.dir}", file=sys.stderr)
        return 2
    if args.by_module:
        sums: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
        for nodeid, own, kids, wall in rows:
            acc = sums[nodeid.split("::")[0]]
            acc[0] += own
            acc[1] += kids
            acc[2] += wall
        rows = [(k, *v) for k, v in sums.items()]
    rows.sort(key=lambda r: r[1] + r[2], reverse=True)
    total = sum(r[1] + r[2] for r in rows)
    print(f"{'cpu s':>8} {'(kids)':>8} {'wall s':>8}  test")
    for nodeid, own, kids, wall in rows[:args.top]:
        print(f"{own + kids:8.1f} {kids:8.1f} {wall:8.1f}  {nodeid}")
    print(f"{total:8.1f} CPU s in {len(rows)} {'modules' if args.by_module else 'tests'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
