"""Float (numpy) semantics of the float-island IR ops of :mod:`mrq.onnx_import_islands`:
LayerNormalization and a ConvTranspose with float weights, in the reference's own precision.

Mixed into :class:`mrq.float_ref.FloatReference`; each method takes the node and the real-valued
inputs and returns the real-valued output.
"""
from __future__ import annotations

import math

import numpy as np


class FloatIslandReference:
    def _LayerNormalization(self, node, x):
        at = node.attrs
        axes = tuple(range(int(at["axis"]), x.ndim))
        norm_shape = x.shape[int(at["axis"]):]
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        y = (x - mean) / np.sqrt(var + float(at["epsilon"]))
        y = y * np.asarray(at["scale"], x.dtype).reshape(norm_shape)
        if at.get("bias") is not None:
            y = y + np.asarray(at["bias"], x.dtype).reshape(norm_shape)
        return y.astype(x.dtype, copy=False)

    def _ConvTranspose(self, node, x):
        at = node.attrs
        w = np.asarray(at["weight"], x.dtype)
        (sh, sw), (dh, dw) = at["strides"], at["dilations"]
        top, left = at["pads"][:2]
        oh, ow = at["output_size"]
        n, _, h, wd = x.shape
        _, m, kh, kw = w.shape
        y = np.zeros((n, m, oh, ow), x.dtype)
        for ky in range(kh):
            for kx in range(kw):
                tap = np.einsum("nchw,cm->nmhw", x, w[:, :, ky, kx])
                oy = np.arange(h) * sh - top + ky * dh
                ox = np.arange(wd) * sw - left + kx * dw
                iy, ix = (oy >= 0) & (oy < oh), (ox >= 0) & (ox < ow)
                y[:, :, oy[iy][:, None], ox[ix][None, :]] += tap[:, :, iy][:, :, :, ix]
        if at.get("bias") is not None:
            y += np.asarray(at["bias"], x.dtype).reshape(1, -1, 1, 1)
        return y

    def _ElementwiseChain(self, node, x):
        y = x
        for op, const, const_first in node.attrs["steps"]:
            if op == "Erf":
                y = _erf(y)
                continue
            a, b = (const, y) if const_first else (y, const)
            y = {"Div": np.divide, "Mul": np.multiply, "Add": np.add, "Sub": np.subtract}[op](a, b)
        return y


_erf = np.vectorize(math.erf, otypes=[np.float64])
