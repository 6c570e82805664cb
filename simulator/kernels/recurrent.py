"""LiteRT's fully integer recurrent kernels: UNIDIRECTIONAL_SEQUENCE_LSTM (int8 activations, int16
cell state, ``lstm_eval::EvalInteger8x8_16``) and SVDF (``EvalIntegerSVDF``).

The LSTM step of LiteRT (``tensor_utils`` portable code, which the x86 build calls for every
function used here) per batch row and time step:

* every gate: ``g = 0``; ``g = sat16(MBQM(b_x + W_x x, M_x) + g)``; ``g = sat16(MBQM(b_h + W_h h,
  M_h) + g)`` (the zero points are folded into the effective biases ``b``); peephole
  ``g = sat16(MBQM(w_c * c, M_c) + g)``; then ``logistic`` (input, forget, output gates; input
  read as Q3.12) or ``tanh`` (cell gate, Q3.12), both gemmlowp 16-bit fixed point, output Q0.15;
* cell: ``c = int16(RDBPOT(f * c, 15))``; ``u = int16(RDBPOT(i * g, 30 + cell_scale))`` (CIFG:
  ``i = 32767 - f``); ``c = sat16(c + u)``; clipped to ``[-clip, clip]`` when ``clip > 0``;
* hidden: ``t = tanh(c)`` read as Q(15 + cell_scale); ``h = sat8(MBQM(o * t, M_hid) + z_hid)``; with
  a projection ``h = sat8(MBQM(b_p + W_p sat8(MBQM(o * t, M_hid) - z_hid), M_p) + z_out)`` and the
  projection clip.

MBQM is TFLite's double-rounding ``MultiplyByQuantizedMultiplier`` (TFLite shift sign). Each
function here has a slow plain-Python twin in ``tests/reference/lstm_ref.py``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from simulator.primitives import (
    multiply_by_quantized_multiplier,
    rounding_divide_by_pot_i32,
)


# --------------------------------------------------------------------------------------------
# gemmlowp FixedPoint<int16_t, k> (raw values held in int64, wrapped like the C++ int16 casts)
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _wrap16(v):
    return ((np.int64(v) + 32768) & 0xFFFF) - 32768


@njit(cache=True)
def _sat16(v):
    return min(max(np.int64(v), -32768), 32767)


@njit(cache=True)
def _srdhm16(a, b):
    """``SaturatingRoundingDoublingHighMul`` on int16: the only overflow, -32768 * -32768,
    saturates."""
    if a == -32768 and b == -32768:
        return np.int64(32767)
    ab = np.int64(a) * np.int64(b)
    if ab >= 0:
        return _wrap16((ab + 16384) >> 15)
    return _wrap16(-((-(ab + 1 - 16384)) >> 15))


@njit(cache=True)
def _mul_pot16(x, exponent):
    """``SaturatingRoundingMultiplyByPOT<exponent>`` on int16."""
    if exponent > 0:
        threshold = (np.int64(1) << (15 - exponent)) - 1
        if x > threshold:
            return np.int64(32767)
        if x < -threshold:
            return np.int64(-32768)
        return np.int64(x) << exponent
    if exponent < 0:
        return rounding_divide_by_pot_i32(x, -exponent)
    return np.int64(x)


@njit(cache=True)
def _const16(raw32):
    """A gemmlowp constant given as its 32-bit raw value, rounded to 16 bits."""
    return _wrap16(rounding_divide_by_pot_i32(raw32, 16))


@njit(cache=True)
def _exp_quarter(a):
    """exp(a) for a in [-1/4, 0), Q0.15 in and out."""
    constant_term = _const16(1895147668)
    one_third = _const16(715827883)
    x = _wrap16(a + 4096)                      # + 1/8
    x2 = _srdhm16(x, x)
    x3 = _srdhm16(x2, x)
    x4 = _srdhm16(x2, x2)
    x4_over_4 = _mul_pot16(x4, -2)
    poly = _mul_pot16(_wrap16(_srdhm16(_wrap16(x4_over_4 + x3), one_third) + x2), -1)
    return _sat16(constant_term + _srdhm16(constant_term, _wrap16(x + poly)))


@njit(cache=True)
def exp_on_negative_values16(a, integer_bits):
    """gemmlowp ``exp_on_negative_values`` for FixedPoint<int16, integer_bits>, Q0.15 out."""
    frac = 15 - integer_bits
    quarter = np.int64(1) << (frac - 2)
    a_mod = _wrap16((a & (quarter - 1)) - quarter)
    result = _exp_quarter(_mul_pot16(a_mod, integer_bits))
    remainder = _wrap16(a_mod - a)
    multipliers = (1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242)
    for k in range(7):
        exponent = k - 2
        if integer_bits > exponent and remainder & (np.int64(1) << (frac + exponent)):
            result = _srdhm16(result, _const16(multipliers[k]))
    if integer_bits > 5:
        clamp = _const16(-(np.int64(1) << (36 - integer_bits)))
        if a < clamp:
            result = np.int64(0)
    if a == 0:
        result = np.int64(32767)
    return result


@njit(cache=True)
def _newton_reciprocal(a):
    """The F2 Newton-Raphson estimate of 1 / ((1 + a) / 2) shared by the logistic and tanh."""
    total = np.int64(a) + 32767                # RoundingHalfSum(a, One): (sum +- 1) / 2, truncating
    total += 1 if total >= 0 else -1
    half_denominator = _wrap16(total // 2 if total >= 0 else -((-total) // 2))
    x = _wrap16(_const16(1515870810) + _srdhm16(half_denominator, _const16(-1010580540)))
    for _ in range(3):
        one_minus = _wrap16(8192 - _srdhm16(half_denominator, x))
        x = _wrap16(x + _mul_pot16(_srdhm16(x, one_minus), 2))
    return x


@njit(cache=True)
def logistic16(a, integer_bits):
    """gemmlowp ``logistic`` of FixedPoint<int16, integer_bits> raw ``a``; Q0.15 raw out."""
    if a == 0:
        return np.int64(16384)
    abs_input = a if a > 0 else _wrap16(-a)
    positive = _mul_pot16(_newton_reciprocal(exp_on_negative_values16(_wrap16(-abs_input),
                                                                      integer_bits)), 1)
    return positive if a > 0 else _wrap16(32767 - positive)


@njit(cache=True)
def tanh16(a, integer_bits):
    """gemmlowp ``tanh`` of FixedPoint<int16, integer_bits> raw ``a``; Q0.15 raw out."""
    if a == 0:
        return np.int64(0)
    n = a if a < 0 else _wrap16(-a)
    e = exp_on_negative_values16(n, integer_bits + 1)
    t = _mul_pot16(_wrap16(_newton_reciprocal(e) - 8192), 2)
    return _wrap16(-t) if a < 0 else t


# --------------------------------------------------------------------------------------------
# The LSTM sequence
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _gate(x_row, h_row, c_row, w_x, w_h, b_x, b_h, m_x, e_x, m_h, e_h, peep, m_p, e_p,
          use_peephole, tanh_gate, out):
    n_cell = w_x.shape[0]
    for c in range(n_cell):
        acc = np.int64(b_x[c])
        for i in range(w_x.shape[1]):
            acc += np.int64(x_row[i]) * np.int64(w_x[c, i])
        g = _sat16(multiply_by_quantized_multiplier(acc, m_x, e_x, False))
        acc = np.int64(b_h[c])
        for i in range(w_h.shape[1]):
            acc += np.int64(h_row[i]) * np.int64(w_h[c, i])
        g = _sat16(multiply_by_quantized_multiplier(acc, m_h, e_h, False) + g)
        if use_peephole:
            prod = np.int64(peep[c]) * np.int64(c_row[c])
            g = _sat16(multiply_by_quantized_multiplier(prod, m_p, e_p, False) + g)
        out[c] = tanh16(g, 3) if tanh_gate else logistic16(g, 3)


@njit(cache=True)
def _lstm_rows(x, w_x, w_h, b_x, b_h, m_x, e_x, m_h, e_h, peep, m_p, e_p, use_cifg, use_peephole,
               cell_scale, cell_clip, m_hid, e_hid, z_hid, w_proj, b_proj, m_proj, e_proj,
               use_projection, proj_clip, z_out, y, h_state, c_state):
    n_batch, n_time = x.shape[0], x.shape[1]
    n_cell = w_x.shape[1]
    n_out = h_state.shape[1]
    gates = np.zeros((4, n_cell), np.int64)
    hidden = np.zeros(n_cell, np.int64)
    for b in range(n_batch):
        h = h_state[b]
        c_row = c_state[b]
        for t in range(n_time):
            xt = x[b, t]
            for g in range(4):
                if g == 0 and use_cifg:
                    continue
                if g == 3:
                    continue   # the output gate reads the updated cell (peephole)
                _gate(xt, h, c_row, w_x[g], w_h[g], b_x[g], b_h[g], m_x[g], e_x[g], m_h[g],
                      e_h[g], peep[min(g, 2)], m_p[min(g, 2)], e_p[min(g, 2)],
                      use_peephole and g != 2, g == 2, gates[g])
            for c in range(n_cell):
                f = gates[1, c]
                i_gate = 32767 - f if use_cifg else gates[0, c]
                kept = _wrap16(rounding_divide_by_pot_i32(f * np.int64(c_row[c]), 15))
                added = _wrap16(rounding_divide_by_pot_i32(i_gate * gates[2, c], 30 + cell_scale))
                v = _sat16(kept + added)
                if cell_clip > 0:
                    v = min(max(v, -cell_clip), cell_clip)
                c_row[c] = v
            _gate(xt, h, c_row, w_x[3], w_h[3], b_x[3], b_h[3], m_x[3], e_x[3], m_h[3], e_h[3],
                  peep[2], m_p[2], e_p[2], use_peephole, False, gates[3])
            zp = -z_hid if use_projection else z_hid
            for c in range(n_cell):
                prod = gates[3, c] * tanh16(np.int64(c_row[c]), 15 + cell_scale)
                v = multiply_by_quantized_multiplier(prod, m_hid, e_hid, False) + zp
                hidden[c] = min(max(v, -128), 127)
            if use_projection:
                for o in range(n_out):
                    acc = np.int64(b_proj[o])
                    for c in range(n_cell):
                        acc += hidden[c] * np.int64(w_proj[o, c])
                    v = min(max(multiply_by_quantized_multiplier(acc, m_proj, e_proj, False)
                                + z_out, -128), 127)
                    if proj_clip > 0:
                        v = min(max(v, -proj_clip), proj_clip)
                    h[o] = v
            else:
                for o in range(n_out):
                    h[o] = hidden[o]
            for o in range(n_out):
                y[b, t, o] = h[o]


def lstm_int8x8_16(x, *, w_x, w_h, b_x, b_h, m_x, e_x, m_h, e_h, peephole, m_peephole,
                   e_peephole, use_cifg, use_peephole, cell_scale, cell_clip, m_hidden,
                   e_hidden, hidden_zero_point, w_proj, b_proj, m_proj, e_proj, use_projection,
                   proj_clip, output_zero_point, h0, c0):
    """Run the sequence ``x`` int8 [N, T, n_input] from the states ``h0`` int8 [n_output] and
    ``c0`` int16 [n_cell] (the same for every row). Gate arrays are stacked in the order input,
    forget, cell, output (``w_x`` [4, n_cell, n_input], ``w_h`` [4, n_cell, n_output], effective
    biases ``b_x``/``b_h`` int32 [4, n_cell], multipliers/shifts [4]); ``peephole`` int16
    [3, n_cell] (input, forget, output). Returns ``(y int8 [N, T, n_output], h int8 [N, n_output],
    c int16 [N, n_cell])``: the output sequence and each row's final states."""
    x = np.ascontiguousarray(x, np.int8)
    n = x.shape[0]
    n_out = w_h.shape[2]
    y = np.zeros((n, x.shape[1], n_out), np.int8)
    h_state = np.repeat(np.asarray(h0, np.int8).reshape(1, -1), n, axis=0)
    c_state = np.repeat(np.asarray(c0, np.int16).reshape(1, -1), n, axis=0)
    _lstm_rows(x, w_x, w_h, b_x, b_h, np.asarray(m_x, np.int64), np.asarray(e_x, np.int64),
               np.asarray(m_h, np.int64), np.asarray(e_h, np.int64), peephole,
               np.asarray(m_peephole, np.int64), np.asarray(e_peephole, np.int64),
               bool(use_cifg), bool(use_peephole), int(cell_scale), int(cell_clip),
               int(m_hidden), int(e_hidden), int(hidden_zero_point), w_proj, b_proj, int(m_proj),
               int(e_proj), bool(use_projection), int(proj_clip), int(output_zero_point),
               y, h_state, c_state)
    return y, h_state, c_state


# --------------------------------------------------------------------------------------------
# SVDF
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _wrap32(v):
    return ((np.int64(v) + 2147483648) & 0xFFFFFFFF) - 2147483648


@njit(cache=True)
def _svdf_rows(x, w_feature, w_time, bias, rank, m1, e1, m2, e2, z_in, z_out, state, y):
    n_filter, n_input = w_feature.shape
    n_memory = w_time.shape[1]
    n_unit = n_filter // rank
    scratch = np.zeros(n_filter, np.int64)
    for b in range(x.shape[0]):
        st = state[b]
        for k in range(n_filter * n_memory - 1):   # the whole state moves one slot left
            st[k] = st[k + 1]
        for r in range(n_filter):
            dot = np.int64(0)
            for c in range(n_input):
                dot += np.int64(w_feature[r, c]) * (np.int64(x[b, c]) - z_in)
            st[r * n_memory + n_memory - 1] = _sat16(multiply_by_quantized_multiplier(dot, m1, e1, False))
        for r in range(n_filter):
            acc = np.int64(0)
            for m in range(n_memory):
                acc = _wrap32(acc + np.int64(w_time[r, m]) * np.int64(st[r * n_memory + m]))
            scratch[r] = acc
        for u in range(n_unit):
            acc = np.int64(0)
            for k in range(rank):
                acc = _wrap32(acc + scratch[u * rank + k])
            acc = _wrap32(acc + np.int64(bias[u]))
            v = multiply_by_quantized_multiplier(acc, m2, e2, False) + z_out
            y[b, u] = min(max(v, -128), 127)


def svdf_int8(x, *, w_feature, w_time, bias, rank, m1, e1, m2, e2, input_zero_point,
              output_zero_point, state0):
    """LiteRT ``EvalIntegerSVDF`` on every row of ``x`` int8 [N, n_input] from the state
    ``state0`` int16 [n_filter * n_memory]: shift the state one slot left, write
    ``sat16(MBQM(W_f (x - z_in), m1, e1))`` into each filter's newest slot, dot each filter's
    memory with ``w_time`` (int32, wrapping), sum ``rank`` filters per unit, add ``bias``, then
    ``sat8(MBQM(., m2, e2) + z_out)`` (no activation: LiteRT's integer SVDF applies none).
    Returns ``(y int8 [N, units], state int16 [N, n_filter * n_memory])``."""
    x = np.ascontiguousarray(x, np.int8)
    n_unit = w_feature.shape[0] // rank
    y = np.zeros((x.shape[0], n_unit), np.int8)
    state = np.repeat(np.asarray(state0, np.int16).reshape(1, -1), x.shape[0], axis=0)
    _svdf_rows(x, w_feature, w_time, bias, int(rank), int(m1), int(e1), int(m2), int(e2),
               int(input_zero_point), int(output_zero_point), state, y)
    return y, state
