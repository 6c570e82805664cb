"""Float (float64 numpy) semantics of the IR ops added for TFLite models: Pad, Mean, Logistic.

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

    def _Logistic(self, node, x):
        return 1.0 / (1.0 + np.exp(-x))
