"""``constant``: a constant operand used as an activation (e.g. a constant input of an Add)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class ConstantParams(Params):
    """No inputs; the output is the array ``value`` (emitted by lowering for constant operands
    of binary ops)."""

    value: Any

    def check(self, where_: str) -> None:
        if not isinstance(self.value, np.ndarray):
            raise ProgramError(f"{where_}: 'value' must be a numpy array")


def execute_constant(step, p):
    """The array ``value``."""
    return (p.value,), stats()


KIND = register("constant", ConstantParams, execute_constant, n_inputs=0)
