"""The JIT cache across processes: the same ``mrq sim`` run N times on an empty cache.

Prints, per run: wall time, the number of kernels the run compiled (from the CLI's ``-v``
counter) and the number of files in the cache folders. The first run compiles; every later one
should compile nothing and leave the file count flat (issue 19).

Usage: python bench/jit_cache_runs.py [--runs 6] [--profile nna-sym8] [--compile no|yes]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

from mrq.demo import DEMO_MODEL, demo_inputs

_COUNT = re.compile(r"compiled (\d+) kernel\(s\)")


def _files(path: str) -> int:
    return sum(len(names) for _, _, names in os.walk(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--profile", default="nna-sym8")
    ap.add_argument("--compile", default="no", choices=("no", "yes"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "nb"), MRQ_CACHE_DIR=os.path.join(tmp, "mrq"))
        feeds = os.path.join(tmp, "in.npz")
        np.savez(feeds, **demo_inputs(8))
        print(f"{'run':>3} {'wall s':>7} {'compiled':>8} {'cache files':>11}")
        for i in range(args.runs):
            argv = [sys.executable, "-m", "mrq", "sim", str(DEMO_MODEL), "--profile", args.profile,
                    "--inputs", feeds, "-o", os.path.join(tmp, "out.npz"), "--no-fidelity",
                    "--compile", args.compile, "-v"]
            started = time.perf_counter()
            r = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            if r.returncode:
                sys.exit(r.stderr)
            m = _COUNT.search(r.stderr)
            files = _files(env["NUMBA_CACHE_DIR"]) + _files(env["MRQ_CACHE_DIR"])
            print(f"{i + 1:>3} {wall:>7.2f} {int(m.group(1)) if m else 0:>8} {files:>11}")


if __name__ == "__main__":
    main()
