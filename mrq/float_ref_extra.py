"""Float (float64 numpy) semantics of the IR ops added for TFLite models: Pad, Mean, Logistic,
Sub, TransposeConv.

Mixed into :class:`mrq.float_ref.FloatReference`; each method takes the node and the real-valued
inputs and returns the real-valued output (the caller clamps it to the output grid).
"""
from __future__ import annotations

import numpy as np


class ExtraOpsReference:
    def _Pad(self, node, x):
        pads = tuple((int(a), int(b)) for a, b in node.attrs["pads"])
        return np.pad(x, pads, constant_values=float(node.attrs.get("value", 0.0)))

    def _Mean(self, node, x):
        axes = tuple(int(a) for a in node.attrs["axes"])
        return x.mean(axis=axes, keepdims=bool(node.attrs.get("keep_dims", False)))

    def _Sub(self, node, a, b):
        return self._clamp(a - b, node.attrs.get("clamp"))

    def _TransposeConv(self, node, x, w, b=None):
        """Every input pixel adds ``x * w`` to the output window at ``stride * position - pad``
        (``w`` [M, C, KH, KW]); taps outside ``output_size`` are dropped."""
        at = node.attrs
        nchw = at.get("layout", "NHWC") == "NCHW"
        xs = x.transpose(0, 2, 3, 1) if nchw else x
        n, h, wd, _ = xs.shape
        m, _, kh, kw = w.shape
        sh, sw = at["strides"]
        pt, pl = at["pads"]
        oh, ow = at["output_size"]
        full = np.zeros((n, (h - 1) * sh + kh, (wd - 1) * sw + kw, m), np.result_type(xs, w))
        for iy in range(h):
            for ix in range(wd):
                full[:, iy * sh: iy * sh + kh, ix * sw: ix * sw + kw, :] += np.einsum(
                    "nc,mcij->nijm", xs[:, iy, ix, :], w)
        y = full[:, pt: pt + oh, pl: pl + ow, :]
        if b is not None:
            y = y + b
        y = self._clamp(y, at.get("clamp"))
        return y.transpose(0, 3, 1, 2) if nchw else y
