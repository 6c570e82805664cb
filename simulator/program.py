"""The contract between ``mrq`` (which lowers models) and the simulator (which executes them).

See docs/PROGRAM.md for every step kind and its parameters. A Program holds only integers,
floats, strings, tuples and numpy arrays with explicit dtypes. A Step's ``params`` is its kind's
typed parameter object (:mod:`simulator.steps`; built by ``simulator.steps.make_step``), or a
plain mapping that is converted, with the same checks, the first time the step runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "int64", "float32")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple  # leading None is the batch dimension


@dataclass(frozen=True)
class Step:
    kind: str
    name: str
    inputs: tuple
    outputs: tuple
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Program:
    inputs: tuple
    outputs: tuple
    steps: tuple
