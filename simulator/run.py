"""Run a :class:`simulator.program.Program` on input arrays.

``run(program, feeds, trace=False) -> RunResult``. Steps execute in program order; each reads
buffers produced by the program inputs or by earlier steps. Any :class:`SimulatorError` raised
while executing a step is re-raised with the step's name and kind in front of the message.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.errors import KernelInputError, ProgramError, SimulatorError
from simulator.executors import EXECUTORS


@dataclass
class RunResult:
    """Outputs by program output name; ``trace``: every step output by buffer name (only when
    ``run(..., trace=True)``); ``stats``: per step name, the executor's integer counters."""

    outputs: dict = field(default_factory=dict)
    trace: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)


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


def run(program, feeds: dict, trace: bool = False) -> RunResult:
    """Execute ``program`` on ``feeds`` (input name -> array in the input's dtype)."""
    _check_feeds(program, feeds)
    buffers = {name: arr for name, arr in feeds.items()}
    result = RunResult()
    for step in program.steps:
        executor = EXECUTORS.get(step.kind)
        if executor is None:
            raise ProgramError(
                f"step {step.name!r}: unknown step kind {step.kind!r}; known kinds are"
                f" {sorted(EXECUTORS)}"
            )
        missing = [name for name in step.inputs if name not in buffers]
        if missing:
            raise ProgramError(
                f"step {step.name!r} ({step.kind}): input buffer(s) {missing} are not produced"
                " by the program inputs or an earlier step"
            )
        try:
            outputs, stats = executor(step, *(buffers[name] for name in step.inputs))
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
        result.stats[step.name] = dict(stats)
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
