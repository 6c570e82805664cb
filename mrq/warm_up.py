"""Child processes that fill the JIT cache while a command's first run on a fresh machine works.

numba compiles under one lock per process, so a cold command compiles its kernels one after the
other on one core. A child started next to it (:func:`start_child`) compiles kernels the
command will need into the shared on-disk cache, where the command finds them: it loads them
instead of compiling them. The child's output is thrown away; it writes nothing but the cache,
and the command's results are always its own (a kernel is the same code whichever process
compiled it). A child that cannot start or fails only means the command compiles everything
itself, as it would without one.

:func:`precompile` is the child of ``mrq sim`` and ``mrq demo``: it lowers the same models as
the command and compiles their kernels from the last step back
(:func:`simulator.precompile.compile_last_first`) while the command compiles from the first,
until the two meet. ``mrq requant`` has its own child (:mod:`mrq.commands.requant_warm`),
which compiles the check's kernels while the command runs its passes."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import numpy as np


def cache_is_cold() -> bool:
    """Whether the simulator's JIT cache is empty here (a child would pay off)."""
    from simulator.kernels import jitcache

    return jitcache.is_cold()


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # not Linux
        return os.cpu_count() or 1


def start_child(code: str, *args: str) -> subprocess.Popen | None:
    """``python -c code *args`` in the background with no input or output, or ``None`` when no
    process can be started or this process may use only one CPU (the child would take turns
    with the command instead of working beside it)."""
    if _usable_cpus() < 2:
        return None
    # the start-up probe (simulator/run.py) times the command's first step, not the child's
    env = {k: v for k, v in os.environ.items() if k != "SIMULATOR_FIRST_STEP_FILE"}
    try:
        return subprocess.Popen([sys.executable, "-c", code, *args], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except OSError:
        return None


def stop_child(process: subprocess.Popen | None) -> None:
    """End ``process`` if it still runs: what it has not compiled yet, the command no longer
    needs (numba writes each cache file whole, so no half-written entry is left)."""
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


@contextlib.contextmanager
def stop_child_after(process: subprocess.Popen | None):
    """A context that ends with :func:`stop_child` of ``process``, however the work ends."""
    try:
        yield process
    finally:
        stop_child(process)


def input_spec(specs: dict) -> dict:
    """Input name -> ``[dtype string, shape]`` for ``specs`` (name -> (shape, dtype)), the form
    a child gets on its command line."""
    return {name: [np.dtype(dtype).str, [int(d) for d in shape]]
            for name, (shape, dtype) in specs.items()}


# fewer kernels than this, and a child costs the command more than it saves: each process's
# compiles run ~20-40% slower while the other compiles too (2-core AMD EPYC host), and with two
# or three kernels the two processes meet on the first one they both compile (MLPerf Tiny AD01,
# 2 kernels: a cold mrq sim took 3.2 s alone, 3.9-4.2 s with a child)
MIN_CHILD_KERNELS = 4


def worth_a_child(program, feeds: dict) -> bool:
    """Whether ``program`` run on inputs like ``feeds`` (name -> (shape, dtype)) has enough
    kernels to compile (:data:`MIN_CHILD_KERNELS`) for a child to pay off."""
    from simulator.errors import SimulatorError
    from simulator.precompile import kernel_signatures
    from simulator.steps import spec

    try:
        specs = {name: spec(shape, dtype) for name, (shape, dtype) in feeds.items()}
        return len(kernel_signatures(program, specs)) >= MIN_CHILD_KERNELS
    except (SimulatorError, TypeError, ValueError, KeyError, IndexError):
        return False   # a malformed program: its run says what is wrong


def start_precompile(jobs: list, threads: int | None = None) -> subprocess.Popen | None:
    """A child running :func:`precompile` of ``jobs`` (``[(model path, profile as given,
    layout, input_spec), ...]``) with ``threads`` numba threads (``None``: the default, as the
    command), or ``None``. The caller asks :func:`cache_is_cold` first: by the time it has
    lowered the model, the helpers that lowering compiles may have left files in the cache."""
    if not jobs:
        return None
    code = ("import json, sys; from mrq.warm_up import precompile; "
            "precompile(json.loads(sys.argv[1]), json.loads(sys.argv[2]))")
    return start_child(code, json.dumps(jobs), json.dumps(threads))


def precompile(jobs: list, threads: int | None = None) -> tuple[int, int]:
    """Compile the launch kernels of every job's program (in job order, then from the last
    back; module docstring) for a batch of zeros shaped by the job's input spec;
    :func:`simulator.precompile.compile_last_first`'s counts."""
    from mrq.pipeline import Pipeline
    from simulator.precompile import compile_last_first, kernel_signatures

    if threads is not None:
        from simulator.run import set_threads
        set_threads(threads)
    signatures = {}   # (dispatcher, types) -> None: job order, each once
    for model, profile, layout, spec in jobs:
        feeds = {name: np.zeros(shape, dtype) for name, (dtype, shape) in spec.items()}
        try:
            program, bound = Pipeline(model, profile, layout).bind(feeds)
            listed = kernel_signatures(program, bound)
        except Exception:   # noqa: BLE001 - the command reports it; the other jobs still count
            continue
        signatures.update(dict.fromkeys(listed))
    return compile_last_first(list(signatures))


__all__ = ["MIN_CHILD_KERNELS", "cache_is_cold", "input_spec", "precompile", "start_child",
           "start_precompile", "stop_child", "stop_child_after", "worth_a_child"]
