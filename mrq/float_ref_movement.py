"""Float (float64 numpy) semantics of the shape, movement and selection IR ops of
:mod:`mrq.tflite_import_shape`: Take, ArgMax, ReduceMax, Maximum, ResizeBilinear, PRelu,
Cast (HardSwish and Tanh are table ops of :mod:`mrq.pointwise`).

Mixed into :class:`mrq.float_ref.FloatReference`; each method takes the node and the real-valued
inputs and returns the real-valued output (the caller clamps it to the output grid).
"""
from __future__ import annotations

import numpy as np


def _bilinear_axis(in_size: int, out_size: int, align: bool, half: bool):
    """Source positions of TensorFlow's resize: lower/upper neighbour and the weight of the upper."""
    scale = (in_size - 1) / (out_size - 1) if align and out_size > 1 else in_size / out_size
    i = np.arange(out_size, dtype=np.float64)
    pos = (i + 0.5) * scale - 0.5 if half else i * scale
    lo = np.clip(np.floor(pos), 0, in_size - 1).astype(np.int64)
    hi = np.minimum(np.ceil(pos), in_size - 1).astype(np.int64)
    hi = np.maximum(hi, lo)
    return lo, hi, np.clip(pos - lo, 0.0, 1.0)


class MovementOpsReference:
    def _Take(self, node, x):
        n = x.shape[0]
        index = np.asarray(node.attrs["source"], np.int64)
        return x.reshape(n, -1)[:, index].reshape((n,) + tuple(node.attrs["shape"]))

    def _ArgMax(self, node, x):
        fn = np.argmax if node.attrs.get("select", "max") == "max" else np.argmin
        return fn(x, axis=int(node.attrs["axis"])).astype(np.float64)

    def _ReduceMax(self, node, x):
        fn = np.max if node.attrs.get("select", "max") == "max" else np.min
        return fn(x, axis=tuple(node.attrs["axes"]), keepdims=bool(node.attrs.get("keep_dims", False)))

    def _Maximum(self, node, a, b):
        return (np.maximum if node.attrs.get("select", "max") == "max" else np.minimum)(a, b)

    def _ResizeBilinear(self, node, x):
        oh, ow = node.attrs["size"]
        align = bool(node.attrs.get("align_corners", False))
        half = bool(node.attrs.get("half_pixel_centers", False))
        y0, y1, wy = _bilinear_axis(x.shape[1], oh, align, half)
        x0, x1, wx = _bilinear_axis(x.shape[2], ow, align, half)
        wy = wy.reshape(1, -1, 1, 1)
        wx = wx.reshape(1, 1, -1, 1)
        top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
        bottom = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
        return top * (1 - wy) + bottom * wy

    def _Resize(self, node, x):
        at = node.attrs
        wy_lo = np.asarray(at["wy_lo"], np.float64).reshape(1, 1, -1, 1)
        wy_hi = np.asarray(at["wy_hi"], np.float64).reshape(1, 1, -1, 1)
        wx_lo = np.asarray(at["wx_lo"], np.float64).reshape(1, 1, 1, -1)
        wx_hi = np.asarray(at["wx_hi"], np.float64).reshape(1, 1, 1, -1)
        r0, r1 = x[:, :, at["y_lo"]], x[:, :, at["y_hi"]]
        return (wy_lo * (wx_lo * r0[:, :, :, at["x_lo"]] + wx_hi * r0[:, :, :, at["x_hi"]])
                + wy_hi * (wx_lo * r1[:, :, :, at["x_lo"]] + wx_hi * r1[:, :, :, at["x_hi"]]))

    def _MatMul(self, node, a, b):
        return np.matmul(a, b)

    def _PRelu(self, node, x, alpha):
        return np.where(x >= 0, x, alpha * x)

    def _Cast(self, node, x):
        # CAST converts the code, not the real value it stands for
        qp = self.g.tensors[node.inputs[0]].qparams
        if qp is None:
            return x
        return np.rint(x / np.float64(qp.scale[0])) + float(qp.zero_point[0])
