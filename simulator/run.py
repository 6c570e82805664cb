"""Run a :class:`simulator.program.Program` on input arrays.

``run(program, feeds, trace=False, threads=None) -> RunResult``. Steps execute in program order;
each reads buffers produced by the program inputs or by earlier steps. Any
:class:`SimulatorError` raised while executing a step is re-raised with the step's name and kind
in front of the message.

``threads``: the number of CPU threads the kernels may use for this run (default: numba's
current setting, i.e. ``NUMBA_NUM_THREADS`` or :func:`set_threads`). Results never depend on it:
every parallel kernel splits its work into ranges whose results do not interact.

``compile`` (``"auto"``, the default, or ``"no"``): a program run again and again on inputs of
the same shapes is switched to its compiled form (:mod:`simulator.compiled`: one jitted
function, no per-step Python, the batch split over the threads) once the Python time it saves
would have paid for compiling it: after about ``compile cost / (steps x STEP_PYTHON_S)`` runs,
where the cost is ``COMPILED_LOAD_S`` when the program is already in the on-disk cache (an
earlier process compiled it) and ``COLD_COMPILE_S`` plus ``COLD_COMPILE_STEP_S`` per step
otherwise. So a few runs never compile, and a long loop of small batches spends at most about
twice the best choice's time. Same bits either way (outputs and ``out_saturated`` counters);
``trace=True`` runs always take the interpreter. ``SIMULATOR_COMPILE=no`` in the environment
turns the switch off for the process.

The checks that depend only on the program (unknown step kinds, buffers used before they are
produced) are done once per Program object and cached, as is each step's prepared form (packed
weights, see :mod:`simulator.steps`): a Program is immutable, so the second run of the same
Program object only executes kernels.
"""
from __future__ import annotations

import os
import time
import weakref
from dataclasses import dataclass, field

import numba
import numpy as np

from simulator.capabilities import ensure_started
from simulator.errors import KernelInputError, ProgramError, SimulatorError
from simulator.memory import keep_heap
from simulator.steps import KINDS, params_of
from simulator.steps.base import check_n_inputs

# Start-up measurement hook (bench/bench_startup.py): when SIMULATOR_FIRST_STEP_FILE is set, the
# wall-clock time at which the first step of the process's first run starts is written to that
# file. The variable is read then, not at import.
_FIRST_STEP_PENDING = True


@dataclass
class RunResult:
    """Outputs by program output name; ``trace``: every step output by buffer name (only when
    ``run(..., trace=True)``); ``stats``: per step name, the executor's integer counters."""

    outputs: dict = field(default_factory=dict)
    trace: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)


def max_threads() -> int:
    """The largest thread count :func:`run` accepts (``NUMBA_NUM_THREADS``, by default the
    number of CPUs)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def set_threads(threads: int) -> None:
    """Set the thread count for the following runs of the calling thread (1..max_threads())."""
    ensure_started()
    numba.set_num_threads(_check_threads(threads))


def _check_threads(threads) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise SimulatorError(f"threads must be an int, got {threads!r}")
    limit = max_threads()
    if not 1 <= int(threads) <= limit:
        raise SimulatorError(
            f"threads must be between 1 and {limit} (NUMBA_NUM_THREADS), got {threads}"
        )
    return int(threads)


def _check_feeds(program, feeds):
    if not isinstance(feeds, dict):
        raise KernelInputError(f"feeds must be a dict of name -> array, got {type(feeds).__name__}")
    expected = {spec.name for spec in program.inputs}
    unknown = sorted(set(feeds) - expected)
    if unknown:
        raise KernelInputError(
            f"unknown input(s) {unknown}; the program inputs are {sorted(expected)}"
        )
    for spec in program.inputs:
        if spec.name not in feeds:
            raise KernelInputError(f"input {spec.name!r} is missing from feeds")
        arr = feeds[spec.name]
        if not isinstance(arr, np.ndarray):
            raise KernelInputError(
                f"input {spec.name!r}: expected a numpy array, got {type(arr).__name__}"
            )
        if arr.dtype.name != spec.dtype:
            raise KernelInputError(
                f"input {spec.name!r}: expected dtype {spec.dtype}, got {arr.dtype.name}"
            )
        shape = tuple(spec.shape)
        ok = arr.ndim == len(shape) and all(
            want is None or int(want) == got for want, got in zip(shape, arr.shape)
        )
        if not ok:
            want = ["N" if d is None else d for d in shape]
            raise KernelInputError(
                f"input {spec.name!r}: expected shape {want}, got {list(arr.shape)}"
            )


def _prefixed(err: SimulatorError, step) -> SimulatorError:
    prefix = f"step {step.name!r} ({step.kind})"
    msg = str(err)
    if msg.startswith(f"step {step.name!r}"):
        return err
    return type(err)(f"{prefix}: {msg}")


# --------------------------------------------------------------------------------------------
# Per-Program plan: the program-only checks, done once
# --------------------------------------------------------------------------------------------
_PLANS: dict = {}


def _plan(program):
    """``[(step, kind, params), ...]`` after checking kinds, parameters and buffer order (cached
    per Program object)."""
    key = id(program)
    entry = _PLANS.get(key)
    if entry is not None and entry[0]() is program:
        return entry[1]
    known = {spec.name for spec in program.inputs}
    plan = []
    for step in program.steps:
        kind = KINDS.get(step.kind)
        if kind is None:
            raise ProgramError(
                f"step {step.name!r}: unknown step kind {step.kind!r}; known kinds are"
                f" {sorted(KINDS)}"
            )
        params = params_of(step)
        missing = [name for name in step.inputs if name not in known]
        if missing:
            raise ProgramError(
                f"step {step.name!r} ({step.kind}): input buffer(s) {missing} are not produced"
                " by the program inputs or an earlier step"
            )
        known.update(step.outputs)
        plan.append((step, kind, params))
    try:
        ref = weakref.ref(program, lambda _r, k=key: _PLANS.pop(k, None))
    except TypeError:
        return plan
    _PLANS[key] = (ref, plan)
    return plan


def _first_step_mark():
    global _FIRST_STEP_PENDING
    _FIRST_STEP_PENDING = False
    path = os.environ.get("SIMULATOR_FIRST_STEP_FILE")
    if not path:
        return
    try:
        with open(path, "w") as fh:
            fh.write(repr(time.time()))
    except OSError:
        pass


def run(program, feeds: dict, trace: bool = False, threads: int | None = None,
        compile: str = "auto") -> RunResult:
    """Execute ``program`` on ``feeds`` (input name -> array in the input's dtype).

    ``threads``: CPU threads for this run (1..:func:`max_threads`); ``None`` keeps the current
    setting (``NUMBA_NUM_THREADS`` or :func:`set_threads`). ``compile``: ``"auto"`` or ``"no"``
    (module docstring).
    """
    ensure_started()
    if compile not in ("auto", "no"):
        raise SimulatorError(f"compile must be 'auto' or 'no', got {compile!r}")
    if threads is None:
        return _run_or_compiled(program, feeds, trace, compile, None)
    threads = _check_threads(threads)
    previous = numba.get_num_threads()
    if previous == threads:
        # a loop of runs keeps its count: numba's set call costs microseconds each way, ~2% of
        # a batch-256 AD01 run
        return _run_or_compiled(program, feeds, trace, compile, threads)
    numba.set_num_threads(threads)
    try:
        return _run_or_compiled(program, feeds, trace, compile, threads)
    finally:
        numba.set_num_threads(previous)


# The switch to compiled programs (module docstring). Measured on an AMD EPYC (Zen 4) host: the
# interpreter spends ~25 us of Python per step (MLPerf Tiny AD01: 680 us of CPU per batch of 256
# step by step, 407 us compiled, 10 steps; docs/performance.md: 20-60 us on the AMX VM);
# loading a compiled program from the on-disk cache takes 10-20 ms, compiling one 1.5-20 s.
STEP_PYTHON_S = 25e-6
COMPILED_LOAD_S = 0.05
COLD_COMPILE_S = 2.0
COLD_COMPILE_STEP_S = 0.2
# runs before the compiled form is even considered (generating its source costs ~1 ms)
_PROBE_AFTER = 3
_AUTO: dict = {}


class _AutoState:
    """Runs of one (program, input shapes and dtypes, threads) and what the switch decided."""

    __slots__ = ("compiled", "program_ref", "runs", "switch_at")

    def __init__(self, program):
        self.program_ref = weakref.ref(program)
        self.runs = 0
        self.switch_at = None   # run count at which to compile; -1: never
        self.compiled = None


def _run_or_compiled(program, feeds, trace, compile, threads):
    if not trace and compile == "auto":
        compiled = _auto_compiled(program, feeds, threads)
        if compiled is not None:
            return compiled.run(feeds)
    return _run(program, feeds, trace)


def _auto_key(program, feeds, threads):
    return (id(program), threads,
            tuple((name, arr.shape, arr.dtype.num) for name, arr in feeds.items()))


def _auto_compiled(program, feeds, threads):
    """The compiled program to run instead of the interpreter (``threads``: the current count,
    ``None``: ask numba), or ``None``."""
    try:
        if threads is None:
            threads = numba.get_num_threads()
        key = _auto_key(program, feeds, threads)
        state = _AUTO.get(key)
    except (AttributeError, TypeError):
        return None  # not a dict of arrays: the interpreter says what is wrong
    if state is None or state.program_ref() is not program:
        if os.environ.get("SIMULATOR_COMPILE", "auto") == "no":
            return None
        if len(_AUTO) >= 32:
            _AUTO.clear()
        try:
            state = _AUTO[key] = _AutoState(program)
        except TypeError:
            return None
    if state.compiled is not None:
        return state.compiled
    state.runs += 1
    if state.switch_at == -1 or state.runs < _PROBE_AFTER:
        return None
    if state.switch_at is None:
        state.switch_at = _switch_point(program, feeds, state.runs)
        if state.switch_at == -1:
            return None
    if state.runs < state.switch_at:
        return None
    from simulator.compiled import compile_program

    compiled = compile_program(program, feeds)
    if compiled is None or not compiled.warm_up(feeds):
        state.switch_at = -1
        return None
    state.compiled = compiled
    return compiled


def switch_status(program, feeds: dict, threads: int | None = None) -> dict:
    """Where the switch to the compiled program stands for ``program`` on inputs shaped like
    ``feeds`` with ``threads`` (default: the current count): ``runs`` so far, ``switch_at`` (the
    run that compiles; ``None``: not decided yet, ``-1``: never) and ``compiled`` (the
    :class:`simulator.compiled.CompiledProgram` in use, or ``None``)."""
    threads = numba.get_num_threads() if threads is None else _check_threads(threads)
    state = _AUTO.get(_auto_key(program, feeds, threads))
    if state is None or state.program_ref() is not program:
        return {"runs": 0, "switch_at": None, "compiled": None}
    return {"runs": state.runs, "switch_at": state.switch_at, "compiled": state.compiled}


def _switch_point(program, feeds, runs):
    """The run count at which compiling pays for itself, or -1 (no compiled form)."""
    from simulator.compiled import compiled_on_disk

    try:
        _check_feeds(program, feeds)
        on_disk = compiled_on_disk(program, feeds)
    except SimulatorError:
        return -1
    if on_disk is None:
        return -1
    n_steps = max(len(program.steps), 1)
    cost = COMPILED_LOAD_S if on_disk else COLD_COMPILE_S + COLD_COMPILE_STEP_S * n_steps
    return runs + int(np.ceil(cost / (STEP_PYTHON_S * n_steps)))


def _run(program, feeds, trace):
    keep_heap()
    _check_feeds(program, feeds)
    buffers = dict(feeds)
    result = RunResult()
    stats = result.stats
    if _FIRST_STEP_PENDING:
        _first_step_mark()
    for step, kind, params in _plan(program):
        try:
            arrays = [buffers[name] for name in step.inputs]
            check_n_inputs(step, arrays, kind.n_inputs)
            outputs, step_stats = kind.execute(step, params, *arrays)
        except SimulatorError as err:
            raise _prefixed(err, step) from err
        except (TypeError, ValueError, KeyError, IndexError) as err:
            # a parameter of the wrong type or shape that no explicit check caught
            raise ProgramError(
                f"step {step.name!r} ({step.kind}): malformed parameter or input"
                f" ({type(err).__name__}: {err})"
            ) from err
        if len(outputs) != len(step.outputs):
            raise ProgramError(
                f"step {step.name!r} ({step.kind}): produced {len(outputs)} output(s) but lists"
                f" {len(step.outputs)}"
            )
        for name, arr in zip(step.outputs, outputs):
            buffers[name] = arr
            if trace:
                result.trace[name] = arr
        stats[step.name] = step_stats
    for spec in program.outputs:
        if spec.name not in buffers:
            raise ProgramError(f"program output {spec.name!r} is never produced")
        arr = buffers[spec.name]
        if arr.dtype.name != spec.dtype:
            raise ProgramError(
                f"program output {spec.name!r}: declared dtype {spec.dtype}, produced"
                f" {arr.dtype.name}"
            )
        result.outputs[spec.name] = arr
    return result
