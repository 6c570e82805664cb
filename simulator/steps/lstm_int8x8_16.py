"""``lstm_int8x8_16``: LiteRT's fully integer UNIDIRECTIONAL_SEQUENCE_LSTM (int8 input, output
and hidden state, int16 cell state, int8 weights), batch-major, from a zero-point initial state."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels import recurrent as recurrent_k
from simulator.steps.base import Params, register, stats


def _shape(a) -> tuple:
    return tuple(np.shape(a))


@dataclass(frozen=True, kw_only=True, eq=False)
class LstmInt8x8_16Params(Params):
    """x int8 [N, T, n_input] -> (y int8 [N, T, n_output], final hidden state int8 [N, n_output],
    final cell state int16 [N, n_cell]); every row starts from ``h0``/``c0``. Gates are stacked
    input, forget, cell, output: ``w_x`` int8 [4, n_cell, n_input], ``w_h`` int8 [4, n_cell,
    n_output], effective biases ``b_x``/``b_h`` int32 [4, n_cell] (bias plus ``-zp * row sums``),
    Q31 multipliers ``m_x``/``m_h`` and TFLite-sign shifts ``e_x``/``e_h`` [4]. ``use_cifg``: no
    input gate (``1 - forget``). ``peephole`` int16 [3, n_cell] (input, forget, output) with
    ``m_peephole``/``e_peephole`` [3]. ``cell_scale``: log2 of the cell state scale; ``cell_clip``
    (0 = none) in cell codes. ``m_hidden``/``e_hidden``/``hidden_zero_point``: output gate times
    tanh(cell) to int8. ``w_proj`` int8 [n_output, n_cell], ``b_proj`` int32 [n_output] (bias plus
    ``hidden_zp * row sums``), ``m_proj``/``e_proj``, ``proj_clip`` (0 = none) and
    ``output_zero_point``: the projection (unset: the hidden values are the output)."""

    w_x: Any
    w_h: Any
    b_x: Any
    b_h: Any
    m_x: tuple
    e_x: tuple
    m_h: tuple
    e_h: tuple
    use_cifg: bool
    cell_scale: int
    m_hidden: int
    e_hidden: int
    hidden_zero_point: int
    output_zero_point: int
    h0: Any
    c0: Any
    cell_clip: int = 0
    peephole: Any | None = None
    m_peephole: tuple = (0, 0, 0)
    e_peephole: tuple = (0, 0, 0)
    w_proj: Any | None = None
    b_proj: Any | None = None
    m_proj: int = 0
    e_proj: int = 0
    proj_clip: int = 0

    def check(self, where_: str) -> None:
        wx, wh = _shape(self.w_x), _shape(self.w_h)
        if len(wx) != 3 or len(wh) != 3 or wx[0] != 4 or wh[0] != 4 or wx[1] != wh[1]:
            raise ProgramError(f"{where_}: w_x must be [4, n_cell, n_input] and w_h "
                               f"[4, n_cell, n_output], got {list(wx)} and {list(wh)}")
        n_cell, n_out = wx[1], wh[2]
        for name in ("w_x", "w_h"):
            if np.asarray(getattr(self, name)).dtype != np.int8:
                raise ProgramError(f"{where_}: {name} must be int8")
        for name in ("b_x", "b_h"):
            if _shape(getattr(self, name)) != (4, n_cell) or np.asarray(getattr(self, name)).dtype != np.int32:
                raise ProgramError(f"{where_}: {name} must be int32 [4, {n_cell}]")
        for name in ("m_x", "e_x", "m_h", "e_h"):
            if len(getattr(self, name)) != 4:
                raise ProgramError(f"{where_}: {name} must have 4 entries (one per gate)")
        shifts = list(self.e_x) + list(self.e_h) + list(self.e_peephole) + [self.e_hidden, self.e_proj]
        if any(not -31 <= int(s) <= 30 for s in shifts):
            raise ProgramError(f"{where_}: multiplier shifts must lie in [-31, 30]")
        if not -15 <= int(self.cell_scale) <= -9:
            # the hidden tanh reads the cell as Q(15 + cell_scale); LiteRT has 0..6 integer bits
            raise ProgramError(f"{where_}: cell_scale must lie in [-15, -9], got {self.cell_scale}")
        if self.peephole is not None and (_shape(self.peephole) != (3, n_cell)
                                          or np.asarray(self.peephole).dtype != np.int16):
            raise ProgramError(f"{where_}: peephole must be int16 [3, {n_cell}]")
        if (self.w_proj is None) != (self.b_proj is None):
            raise ProgramError(f"{where_}: w_proj and b_proj go together")
        if self.w_proj is not None:
            if _shape(self.w_proj) != (n_out, n_cell) or np.asarray(self.w_proj).dtype != np.int8:
                raise ProgramError(f"{where_}: w_proj must be int8 [{n_out}, {n_cell}]")
            if _shape(self.b_proj) != (n_out,) or np.asarray(self.b_proj).dtype != np.int32:
                raise ProgramError(f"{where_}: b_proj must be int32 [{n_out}]")
        elif n_out != n_cell:
            raise ProgramError(f"{where_}: without a projection n_output must equal n_cell")
        if _shape(self.h0) != (n_out,) or _shape(self.c0) != (n_cell,):
            raise ProgramError(f"{where_}: h0 must be [{n_out}] and c0 [{n_cell}]")


def execute_lstm_int8x8_16(step, p, x):
    """The sequence and the final states of every batch row."""
    if x.dtype != np.int8 or x.ndim != 3 or x.shape[2] != np.shape(p.w_x)[2]:
        raise ProgramError(f"step {step.name!r} (lstm_int8x8_16): input must be int8 [N, T, "
                           f"{np.shape(p.w_x)[2]}], got {x.dtype} {list(x.shape)}")
    n_cell, n_out = np.shape(p.w_x)[1], np.shape(p.w_h)[2]
    use_projection = p.w_proj is not None
    y, h, c = recurrent_k.lstm_int8x8_16(
        x, w_x=p.w_x, w_h=p.w_h, b_x=p.b_x, b_h=p.b_h, m_x=p.m_x, e_x=p.e_x, m_h=p.m_h,
        e_h=p.e_h,
        peephole=p.peephole if p.peephole is not None else np.zeros((3, n_cell), np.int16),
        m_peephole=p.m_peephole, e_peephole=p.e_peephole, use_cifg=p.use_cifg,
        use_peephole=p.peephole is not None, cell_scale=p.cell_scale, cell_clip=p.cell_clip,
        m_hidden=p.m_hidden, e_hidden=p.e_hidden, hidden_zero_point=p.hidden_zero_point,
        w_proj=p.w_proj if use_projection else np.zeros((n_out, n_cell), np.int8),
        b_proj=p.b_proj if use_projection else np.zeros(n_out, np.int32),
        m_proj=p.m_proj, e_proj=p.e_proj, use_projection=use_projection, proj_clip=p.proj_clip,
        output_zero_point=p.output_zero_point, h0=p.h0, c0=p.c0)
    return (y, h, c), stats()


KIND = register("lstm_int8x8_16", LstmInt8x8_16Params, execute_lstm_int8x8_16)
