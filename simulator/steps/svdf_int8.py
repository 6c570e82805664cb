"""``svdf_int8``: LiteRT's fully integer SVDF (int8 input and output, int8 feature weights, int16
time weights and int16 activation state), one time step per row from a reset state."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels import recurrent as recurrent_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class SvdfInt8Params(Params):
    """x int8 [N, n_input] -> (y int8 [N, units], final state int16 [N, n_filter * n_memory]).
    ``w_feature`` int8 [n_filter, n_input], ``w_time`` int16 [n_filter, n_memory], ``bias`` int32
    [units] (``units = n_filter / rank``); ``m1``/``e1``: Q31 multiplier and TFLite-sign shift of
    ``s_in * s_feature / s_state``, ``m2``/``e2`` of ``s_state * s_time / s_out``; the zero points of
    x and y; ``state0`` int16 [n_filter * n_memory], the state every row starts from."""

    w_feature: Any
    w_time: Any
    bias: Any
    rank: int
    m1: int
    e1: int
    m2: int
    e2: int
    input_zero_point: int
    output_zero_point: int
    state0: Any

    def check(self, where_: str) -> None:
        wf, wt = np.shape(self.w_feature), np.shape(self.w_time)
        if len(wf) != 2 or len(wt) != 2 or wf[0] != wt[0]:
            raise ProgramError(f"{where_}: w_feature must be [n_filter, n_input] and w_time "
                               f"[n_filter, n_memory], got {list(wf)} and {list(wt)}")
        if np.asarray(self.w_feature).dtype != np.int8 or np.asarray(self.w_time).dtype != np.int16:
            raise ProgramError(f"{where_}: w_feature must be int8 and w_time int16")
        if self.rank < 1 or wf[0] % self.rank:
            raise ProgramError(f"{where_}: rank {self.rank} does not divide {wf[0]} filters")
        units = wf[0] // self.rank
        if np.shape(self.bias) != (units,) or np.asarray(self.bias).dtype != np.int32:
            raise ProgramError(f"{where_}: bias must be int32 [{units}]")
        if np.shape(self.state0) != (wf[0] * wt[1],) or np.asarray(self.state0).dtype != np.int16:
            raise ProgramError(f"{where_}: state0 must be int16 [{wf[0] * wt[1]}]")
        if not (-31 <= self.e1 <= 30 and -31 <= self.e2 <= 30):
            raise ProgramError(f"{where_}: multiplier shifts must lie in [-31, 30]")


def execute_svdf_int8(step, p, x):
    """One SVDF time step per row."""
    n_input = np.shape(p.w_feature)[1]
    if x.dtype != np.int8 or x.ndim != 2 or x.shape[1] != n_input:
        raise ProgramError(f"step {step.name!r} (svdf_int8): input must be int8 [N, {n_input}], got "
                           f"{x.dtype} {list(x.shape)}")
    y, state = recurrent_k.svdf_int8(
        x, w_feature=p.w_feature, w_time=p.w_time, bias=p.bias, rank=p.rank, m1=p.m1, e1=p.e1,
        m2=p.m2, e2=p.e2, input_zero_point=p.input_zero_point,
        output_zero_point=p.output_zero_point, state0=p.state0)
    return (y, state), stats()


KIND = register("svdf_int8", SvdfInt8Params, execute_svdf_int8)
