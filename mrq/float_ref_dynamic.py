"""Float reference of the IR ops of dynamic quantization (:mod:`mrq.onnx_import_dynamic`): the
float MatMul the quantizer replaced; the integer ops' reference is their real value."""
from __future__ import annotations

import numpy as np


class DynamicOpsReference:
    def _DynamicMatMul(self, node, a, b, bias=None):
        y = np.matmul(a, b)
        if bias is not None:
            y = y + bias
        return self._clamp(y, node.attrs.get("clamp"))

    def _DynamicQuantize(self, node, x):
        return x   # the codes stand for x itself; scale and zero point have no reference

    def _MatMulInteger(self, node, a, b, a_zp, b_zp):
        return np.matmul(np.asarray(a, np.float64) - a_zp, np.asarray(b, np.float64) - b_zp)

    def _DynamicConv(self, node, x, w, bias=None):
        from mrq.float_ref import conv2d_nchw
        at = node.attrs
        y = conv2d_nchw(x, w, bias, at["strides"], at["pads"], at["dilations"], at["group"])
        return self._clamp(y, at.get("clamp"))
