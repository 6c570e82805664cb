"""LiteRT's integer recurrent kernels as simulator steps: the ``LSTM`` IR node (TFLite
UNIDIRECTIONAL_SEQUENCE_LSTM, fully integer) -> ``lstm_int8x8_16``; ``Svdf`` -> ``svdf_int8``.

The parameters are derived as LiteRT's ``PopulateQuantizedLstmParams8x8_16`` and
``PopulatePrecomputedZPTimesWeightsWithBias`` derive them (ai-edge-litert 2.3,
``unidirectional_sequence_lstm.cc``); the float arithmetic matters bit for bit:

* gate matmul scales in float32: ``f32(f32(s_w * s_x) / 2**-12)`` (without layer norm every gate
  is accumulated on the Q3.12 grid), the same with the output state scale for the recurrent ones;
* hidden scale: ``f32(2**-15 / s_hidden * 2**-15)`` evaluated in double; projection scale
  ``f32(f32(s_proj * s_hidden) / s_state)`` (the output state's scale; the clip uses the output's); peephole ``f32(2**cell_scale * s_c / 2**-12)`` in double;
* every scale -> ``QuantizeMultiplier`` (Q31, TFLite shift sign);
* ``cell_scale = round(log2(s_cell))`` (LiteRT refuses a cell scale that is not a power of two);
  clips ``int16(min(max(f32(clip / s), -32768), 32767))`` (truncation), the projection one int8;
* effective biases: ``bias - z_x * rowsum(W_x)``, ``-z_h * rowsum(W_h)`` (the recurrent matmuls
  have no bias), projection ``bias + z_hidden * rowsum(W_proj)``;
* initial states: the hidden state holds its zero point, the cell state 0 (LiteRT's
  ``ResetVariableTensor``; every batch row is an independent sequence).

Only the TFLite runtimes (``tflite-int8`` and ``litert-default``, which run the same builtin
kernel: XNNPACK takes no LSTM) have this arithmetic; other profiles refuse the node (``mrq
requant`` to them unrolls it first: :mod:`mrq.passes.unroll_recurrent`).
"""
from __future__ import annotations

import math

import numpy as np

from mrq import multipliers as mul
from mrq.errors import ModelError, UnsupportedOpError

_GATES = ("input", "forget", "cell", "output")
_Q3_12 = np.float32(2.0 ** -12)


def _f32(x) -> np.float32:
    return np.float32(x)


def _scale(t) -> np.float32:
    return _f32(t.qparams.scale[0])


def _zp(t) -> int:
    return int(t.qparams.zero_point[0])


def _qm(real) -> tuple[int, int]:
    """LiteRT ``QuantizeMultiplier(double)`` of a float32 scale: (Q31 multiplier, shift)."""
    return mul.tflite_quantize_multiplier(float(real))


def checked_log2(scale: float, where: str) -> int:
    """LiteRT ``CheckedLog2``: the rounded log2 of a power-of-two scale (within 1e-3)."""
    log2 = _f32(_f32(math.log(_f32(scale))) * _f32(1.0 / math.log(_f32(2.0))))
    rounded = np.round(log2)
    if abs(float(log2 - rounded)) >= 1e-3:
        raise ModelError(f"{where}: the cell state scale {scale} is not a power of two "
                         f"(LiteRT's integer LSTM refuses it)")
    return int(rounded)


def _row_sums(w: np.ndarray) -> np.ndarray:
    return np.asarray(w, np.int64).sum(axis=1)


def lstm_int8x8_16_params(tensors: dict, node) -> dict:
    """The ``lstm_int8x8_16`` parameters of an ``LSTM`` IR node; ``tensors`` maps names to IR
    tensors."""
    where = f"node {node.name!r} (LSTM)"
    by_role = dict(zip(node.attrs["roles"], node.inputs[1:]))
    x = tensors[node.inputs[0]]
    y, h_state, c_state = (tensors[n] for n in node.outputs)
    w_x_t = {g: tensors[by_role[f"input_to_{g}"]] for g in _GATES if f"input_to_{g}" in by_role}
    w_h_t = {g: tensors[by_role[f"recurrent_to_{g}"]] for g in _GATES if f"recurrent_to_{g}" in by_role}
    n_cell, n_input = np.shape(w_x_t["output"].data)
    n_output = np.shape(w_h_t["output"].data)[1]
    use_cifg = "input" not in w_x_t
    s_x, s_h = _scale(x), _scale(h_state)
    z_x, z_h = _zp(x), _zp(h_state)
    hidden_scale = _f32(node.attrs["hidden_scale"])
    hidden_zp = int(node.attrs["hidden_zero_point"])
    cell_scale = checked_log2(float(_scale(c_state)), where)
    if not -15 <= cell_scale <= -9:
        raise UnsupportedOpError("LSTM", node.name, f"cell state scale 2**{cell_scale}: LiteRT's "
                                 f"integer tanh takes the cell as Q(15 + cell_scale) with at most 6 "
                                 f"integer bits (scale 2**-15 .. 2**-9)")

    w_x = np.zeros((4, n_cell, n_input), np.int8)
    w_h = np.zeros((4, n_cell, n_output), np.int8)
    b_x = np.zeros((4, n_cell), np.int64)
    b_h = np.zeros((4, n_cell), np.int64)
    m_x, e_x, m_h, e_h = [0] * 4, [0] * 4, [0] * 4, [0] * 4
    for g, gate in enumerate(_GATES):
        if gate not in w_x_t:
            continue
        wx, wh = w_x_t[gate], w_h_t[gate]
        w_x[g], w_h[g] = wx.data, wh.data
        bias = tensors[by_role[f"{gate}_bias"]].data if f"{gate}_bias" in by_role else 0
        b_x[g] = np.asarray(bias, np.int64) - z_x * _row_sums(wx.data)
        b_h[g] = -z_h * _row_sums(wh.data)
        m_x[g], e_x[g] = _qm(_f32(_f32(_scale(wx) * s_x) / _Q3_12))
        m_h[g], e_h[g] = _qm(_f32(_f32(_scale(wh) * s_h) / _Q3_12))
    params = {"w_x": w_x, "w_h": w_h, "b_x": _int32(b_x, where), "b_h": _int32(b_h, where),
                  "m_x": tuple(m_x), "e_x": tuple(e_x), "m_h": tuple(m_h), "e_h": tuple(e_h),
                  "use_cifg": use_cifg, "cell_scale": cell_scale,
                  "output_zero_point": z_h,
                  "h0": np.full(n_output, z_h, np.int8), "c0": np.zeros(n_cell, np.int16)}
    m, e = _qm(_f32(2.0 ** -15 / float(hidden_scale) * 2.0 ** -15))
    params.update(m_hidden=m, e_hidden=e, hidden_zero_point=hidden_zp)
    cell_clip = float(node.attrs.get("cell_clip", 0.0))
    if cell_clip > 0:
        params["cell_clip"] = int(min(max(float(_f32(_f32(cell_clip) / _scale(c_state))), -32768.0), 32767.0))
    if "cell_to_forget" in by_role:
        peep = np.zeros((3, n_cell), np.int16)
        mp, ep = [0] * 3, [0] * 3
        for k, gate in enumerate(("input", "forget", "output")):
            if f"cell_to_{gate}" not in by_role:
                continue
            t = tensors[by_role[f"cell_to_{gate}"]]
            peep[k] = t.data
            mp[k], ep[k] = _qm(_f32(2.0 ** cell_scale * float(_scale(t)) / float(_Q3_12)))
        params.update(peephole=peep, m_peephole=tuple(mp), e_peephole=tuple(ep))
    if "projection" in by_role:
        wp = tensors[by_role["projection"]]
        bias = tensors[by_role["projection_bias"]].data if "projection_bias" in by_role else 0
        params.update(w_proj=np.asarray(wp.data, np.int8),
                      b_proj=_int32(np.asarray(bias, np.int64) + hidden_zp * _row_sums(wp.data), where))
        params["m_proj"], params["e_proj"] = _qm(_f32(_f32(_scale(wp) * hidden_scale) / s_h))
        proj_clip = float(node.attrs.get("proj_clip", 0.0))
        if proj_clip > 0:
            params["proj_clip"] = int(min(max(float(_f32(_f32(proj_clip) / _scale(y))), -128.0), 127.0))
    return params


def _int32(a: np.ndarray, where: str) -> np.ndarray:
    a = np.asarray(a, np.int64)
    if a.size and (a.min() < -2 ** 31 or a.max() >= 2 ** 31):
        raise ModelError(f"{where}: an effective bias overflows int32")
    return a.astype(np.int32)


class RecurrentLowering:
    """``_LSTM``, ``_Svdf``: mixed into the lowerer (through :class:`mrq.lower_tflite16.Tflite16Lowering`)."""

    def _LSTM(self, node) -> None:
        if self._tfl() is None:
            raise UnsupportedOpError("LSTM", node.name, f"profile {self.a.name!r} has no integer "
                                     f"LSTM arithmetic (only the TFLite runtimes: tflite-int8, "
                                     f"litert-default; `mrq requant` unrolls it into per-step ops)")
        self.emit("lstm_int8x8_16", node, node.inputs[:1], node.outputs,
                  **lstm_int8x8_16_params(self.g.tensors, node))

    def _Svdf(self, node) -> None:
        if self._tfl() is None:
            raise UnsupportedOpError("SVDF", node.name, f"profile {self.a.name!r} has no integer "
                                     f"SVDF arithmetic (only the TFLite runtimes: tflite-int8, "
                                     f"litert-default; `mrq requant` unrolls it into per-step ops)")
        self.emit("svdf_int8", node, node.inputs[:1], node.outputs,
                  **svdf_int8_params(self.g.tensors, node))


def svdf_int8_params(tensors: dict, node) -> dict:
    """The ``svdf_int8`` parameters of an ``Svdf`` IR node (LiteRT ``svdf.cc`` Prepare: the two
    effective scales in float32, ``f32(f32(s_in * s_feature) / s_state)`` and
    ``f32(f32(s_state * s_time) / s_out)``, then ``QuantizeMultiplier``; the state resets to 0)."""
    x, wf, wt = (tensors[n] for n in node.inputs[:3])
    y, state = (tensors[n] for n in node.outputs)
    rank = int(node.attrs["rank"])
    n_filter = np.shape(wf.data)[0]
    bias = (np.asarray(tensors[node.inputs[3]].data, np.int32) if len(node.inputs) > 3
            else np.zeros(n_filter // rank, np.int32))
    m1, e1 = _qm(_f32(_f32(_scale(x) * _scale(wf)) / _scale(state)))
    m2, e2 = _qm(_f32(_f32(_scale(state) * _scale(wt)) / _scale(y)))
    return {"w_feature": np.asarray(wf.data, np.int8), "w_time": np.asarray(wt.data, np.int16),
                "bias": bias, "rank": rank, "m1": m1, "e1": e1, "m2": m2, "e2": e2, "input_zero_point": _zp(x),
                "output_zero_point": _zp(y),
                "state0": np.zeros(n_filter * np.shape(wt.data)[1], np.int16)}
