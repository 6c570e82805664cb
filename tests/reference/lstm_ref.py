"""Slow, obvious references of simulator/kernels/recurrent.py: gemmlowp's 16-bit fixed-point
logistic and tanh, LiteRT's integer LSTM step (``LstmStepInteger8x8_16``) and integer SVDF
(``EvalIntegerSVDF``), one Python integer at a time, following the C++ line by line."""
from __future__ import annotations

import numpy as np


def i16(v: int) -> int:
    """``static_cast<int16_t>``: keep the low 16 bits, two's complement."""
    v &= 0xFFFF
    return v - 0x10000 if v >= 0x8000 else v


def i32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - 0x100000000 if v >= 0x80000000 else v


def c_div(a: int, b: int) -> int:
    """C integer division (truncation toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def rdbpot(x: int, e: int) -> int:
    """RoundingDivideByPOT: x / 2**e rounded half away from zero."""
    if e == 0:
        return x
    mask = (1 << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if remainder > threshold else 0)


def srdhm16(a: int, b: int) -> int:
    if a == b == -32768:
        return 32767
    ab = a * b
    nudge = (1 << 14) if ab >= 0 else 1 - (1 << 14)
    return i16(c_div(ab + nudge, 1 << 15))


def srdhm32(a: int, b: int) -> int:
    if a == b == -(1 << 31):
        return (1 << 31) - 1
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return c_div(ab + nudge, 1 << 31)


def mbqm(x: int, m: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier (double rounding; the left shift wraps at 32 bits)."""
    left, right = max(shift, 0), max(-shift, 0)
    return rdbpot(srdhm32(i32(x * (1 << left)), m), right)


def sat(v: int, lo: int, hi: int) -> int:
    return lo if v < lo else min(v, hi)


def mul_pot16(x: int, exponent: int) -> int:
    """SaturatingRoundingMultiplyByPOT<exponent> on int16."""
    if exponent > 0:
        return sat(x * (1 << exponent), -32768, 32767)
    return rdbpot(x, -exponent)


def const16(raw32: int) -> int:
    return i16(rdbpot(raw32, 16))


def exp_quarter(a: int) -> int:
    ct = const16(1895147668)
    third = const16(715827883)
    x = i16(a + (1 << 12))
    x2 = srdhm16(x, x)
    x3 = srdhm16(x2, x)
    x4 = srdhm16(x2, x2)
    x4_4 = mul_pot16(x4, -2)
    s = mul_pot16(i16(srdhm16(i16(x4_4 + x3), third) + x2), -1)
    return sat(ct + srdhm16(ct, i16(x + s)), -32768, 32767)


def exp_neg(a: int, k: int) -> int:
    frac = 15 - k
    quarter = 1 << (frac - 2)
    amq = i16((a & (quarter - 1)) - quarter)
    result = exp_quarter(mul_pot16(amq, k))
    rem = i16(amq - a)
    table = {-2: 1672461947, -1: 1302514674, 0: 790015084, 1: 290630308, 2: 39332535,
             3: 720401, 4: 242}
    for exponent, mult in table.items():
        if k > exponent and (rem & (1 << (frac + exponent))):
            result = srdhm16(result, const16(mult))
    if k > 5 and a < const16(-(1 << (36 - k))):
        result = 0
    if a == 0:
        result = 32767
    return result


def reciprocal_f2(a: int) -> int:
    total = a + 32767
    half = i16(c_div(total + (1 if total >= 0 else -1), 2))
    x = i16(const16(1515870810) + srdhm16(half, const16(-1010580540)))
    for _ in range(3):
        x = i16(x + mul_pot16(srdhm16(x, i16(8192 - srdhm16(half, x))), 2))
    return x


def logistic16(a: int, k: int) -> int:
    if a == 0:
        return 16384
    abs_in = a if a > 0 else i16(-a)
    pos = mul_pot16(reciprocal_f2(exp_neg(i16(-abs_in), k)), 1)
    return pos if a > 0 else i16(32767 - pos)


def tanh16(a: int, k: int) -> int:
    if a == 0:
        return 0
    n = a if a < 0 else i16(-a)
    t = mul_pot16(i16(reciprocal_f2(exp_neg(n, k + 1)) - 8192), 2)
    return i16(-t) if a < 0 else t


def lstm_ref(x, p: dict):
    """The ``lstm_int8x8_16`` step on x [N, T, I] with the step's parameter dict ``p``."""
    w_x, w_h = np.asarray(p["w_x"], np.int64), np.asarray(p["w_h"], np.int64)
    n_cell, n_out = w_x.shape[1], w_h.shape[2]
    peep = p.get("peephole")
    proj = p.get("w_proj")
    n, t_len = x.shape[0], x.shape[1]
    y = np.zeros((n, t_len, n_out), np.int8)
    hs = np.zeros((n, n_out), np.int8)
    cs = np.zeros((n, n_cell), np.int16)
    for b in range(n):
        h = [int(v) for v in p["h0"]]
        c = [int(v) for v in p["c0"]]
        for t in range(t_len):
            xt = [int(v) for v in x[b, t]]

            def gate(g, peep_row, act, xt=xt, h=h, c=c):
                out = []
                for r in range(n_cell):
                    acc = int(p["b_x"][g][r]) + sum(xt[i] * int(w_x[g, r, i]) for i in range(len(xt)))
                    v = sat(mbqm(acc, int(p["m_x"][g]), int(p["e_x"][g])), -32768, 32767)
                    acc = int(p["b_h"][g][r]) + sum(h[i] * int(w_h[g, r, i]) for i in range(n_out))
                    v = sat(mbqm(acc, int(p["m_h"][g]), int(p["e_h"][g])) + v, -32768, 32767)
                    if peep is not None and peep_row is not None:
                        prod = int(peep[peep_row][r]) * c[r]
                        v = sat(mbqm(prod, int(p["m_peephole"][peep_row]),
                                     int(p["e_peephole"][peep_row])) + v, -32768, 32767)
                    out.append(act(v))
                return out

            sig = lambda v: logistic16(v, 3)
            th3 = lambda v: tanh16(v, 3)
            i_g = None if p["use_cifg"] else gate(0, 0, sig)
            f_g = gate(1, 1, sig)
            g_g = gate(2, None, th3)
            for r in range(n_cell):
                i_v = 32767 - f_g[r] if p["use_cifg"] else i_g[r]
                v = sat(i16(rdbpot(f_g[r] * c[r], 15)) + i16(rdbpot(i_v * g_g[r], 30 + p["cell_scale"])),
                        -32768, 32767)
                clip = int(p.get("cell_clip", 0))
                c[r] = sat(v, -clip, clip) if clip > 0 else v
            o_g = gate(3, 2, sig)
            hz = int(p["hidden_zero_point"])
            hidden = [sat(mbqm(o_g[r] * tanh16(c[r], 15 + p["cell_scale"]), int(p["m_hidden"]),
                               int(p["e_hidden"])) + (-hz if proj is not None else hz), -128, 127)
                      for r in range(n_cell)]
            if proj is not None:
                new_h = []
                for o in range(n_out):
                    acc = int(p["b_proj"][o]) + sum(hidden[r] * int(proj[o][r]) for r in range(n_cell))
                    v = sat(mbqm(acc, int(p["m_proj"]), int(p["e_proj"])) + int(p["output_zero_point"]),
                            -128, 127)
                    clip = int(p.get("proj_clip", 0))
                    new_h.append(sat(v, -clip, clip) if clip > 0 else v)
                h = new_h
            else:
                h = hidden
            y[b, t] = h
        hs[b], cs[b] = h, c
    return y, hs, cs


def svdf_ref(x, p: dict):
    """The ``svdf_int8`` step on x [N, I]."""
    wf, wt = np.asarray(p["w_feature"], np.int64), np.asarray(p["w_time"], np.int64)
    n_filter, n_mem = wt.shape
    rank = int(p["rank"])
    units = n_filter // rank
    y = np.zeros((x.shape[0], units), np.int8)
    states = np.zeros((x.shape[0], n_filter * n_mem), np.int16)
    for b in range(x.shape[0]):
        st = [int(v) for v in p["state0"]]
        st = st[1:] + st[-1:]
        for r in range(n_filter):
            dot = sum(int(wf[r, c]) * (int(x[b, c]) - int(p["input_zero_point"])) for c in range(wf.shape[1]))
            st[r * n_mem + n_mem - 1] = sat(mbqm(dot, int(p["m1"]), int(p["e1"])), -32768, 32767)
        per_filter = [i32(sum(int(wt[r, m]) * st[r * n_mem + m] for m in range(n_mem))) for r in range(n_filter)]
        for u in range(units):
            acc = i32(i32(sum(per_filter[u * rank:(u + 1) * rank])) + int(p["bias"][u]))
            y[b, u] = sat(mbqm(acc, int(p["m2"]), int(p["e2"])) + int(p["output_zero_point"]), -128, 127)
        states[b] = st
    return y, states
