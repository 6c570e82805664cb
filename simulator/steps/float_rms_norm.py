"""``float_rms_norm``: ORT's SimplifiedLayerNormalization (its fusion of T5's RMSNorm) over the
innermost axis of a float32 tensor (simulator/kernels/ort_math.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import KernelInputError, ProgramError
from simulator.kernels.ort_math import rms_norm_last
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatRmsNormParams(Params):
    """``scale``: float32 [n], one per element of a row; ``epsilon``: added to the mean square."""

    scale: Any
    epsilon: float

    def check(self, where_: str) -> None:
        s = np.asarray(self.scale)
        if s.dtype != np.float32 or s.ndim != 1:
            raise ProgramError(f"{where_}: 'scale' must be a 1-D float32 array")


def execute_float_rms_norm(step, p, x):
    if x.shape[-1] != np.asarray(p.scale).size:
        raise KernelInputError(f"step {step.name!r}: rows of {x.shape[-1]} for "
                               f"{np.asarray(p.scale).size} scales")
    return (rms_norm_last(x, p.scale, p.epsilon),), stats()


KIND = register("float_rms_norm", FloatRmsNormParams, execute_float_rms_norm)
