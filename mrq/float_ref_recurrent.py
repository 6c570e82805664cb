"""Float semantics of the recurrent IR ops (:mod:`mrq.tflite_import_recurrent`) for the float
reference: the LSTM and SVDF the integer kernels approximate, from the dequantized weights.

``LSTM``: per batch row, from ``h = 0``, ``c = 0``: ``i = sigmoid(W_xi x + W_hi h + p_i c + b_i)``
(CIFG: ``i = 1 - f``), ``f``, ``o`` likewise (the output gate's peephole reads the new cell),
``g = tanh(W_xc x + W_hc h + b_c)``, ``c = clip(f c + i g)``, ``h = o tanh(c)``, then the
projection ``h = clip(W_p h + b_p)``. ``Svdf``: one time step from a zero state: the newest memory
slot of each filter is ``W_f x``, each filter dots its memory with its time weights, ``rank``
filters sum per unit, plus the bias, then RELU (the only activation LiteRT runs it with).
Only the first output (the sequence, or ``y``) is a float-reference value. The unrolled form of
both (:mod:`mrq.passes.unroll_recurrent`) computes the same values from the same weights."""
from __future__ import annotations

import numpy as np

_GATES = ("input", "forget", "cell", "output")


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


class RecurrentOpsReference:
    def _LSTM(self, node, x, *consts):
        by_role = dict(zip(node.attrs["roles"], consts))
        w_x = {g: by_role.get(f"input_to_{g}") for g in _GATES}
        w_h = {g: by_role.get(f"recurrent_to_{g}") for g in _GATES}
        bias = {g: by_role.get(f"{g}_bias", 0.0) for g in _GATES}
        peep = {g: by_role.get(f"cell_to_{g}") for g in ("input", "forget", "output")}
        proj, proj_b = by_role.get("projection"), by_role.get("projection_bias", 0.0)
        cell_clip = float(node.attrs.get("cell_clip", 0.0))
        proj_clip = float(node.attrs.get("proj_clip", 0.0))
        n, t_len = x.shape[0], x.shape[1]
        n_cell = w_x["output"].shape[0]
        n_out = w_h["output"].shape[1]
        h = np.zeros((n, n_out), x.dtype)
        c = np.zeros((n, n_cell), x.dtype)
        y = np.zeros((n, t_len, n_out), x.dtype)

        def pre(g, xt, c_now):
            v = xt @ w_x[g].T + h @ w_h[g].T + bias[g]
            if g != "cell" and peep.get(g) is not None:
                v = v + peep[g] * c_now
            return v

        for t in range(t_len):
            xt = x[:, t]
            f = _sigmoid(pre("forget", xt, c))
            i = 1.0 - f if w_x["input"] is None else _sigmoid(pre("input", xt, c))
            g = np.tanh(pre("cell", xt, c))
            c = f * c + i * g
            if cell_clip > 0:
                c = np.clip(c, -cell_clip, cell_clip)
            o = _sigmoid(pre("output", xt, c))
            h = o * np.tanh(c)
            if proj is not None:
                h = h @ proj.T + proj_b
                if proj_clip > 0:
                    h = np.clip(h, -proj_clip, proj_clip)
            y[:, t] = h
        return y

    def _Svdf(self, node, x, w_feature, w_time, bias=None):
        rank = int(node.attrs["rank"])
        newest = x @ w_feature.T                        # [N, filters]: the only non-zero slot
        per_filter = newest * w_time[:, -1]
        out = per_filter.reshape(x.shape[0], -1, rank).sum(axis=2)
        if bias is not None:
            out = out + bias
        return np.maximum(out, 0.0)
