"""Lowering of the IR op ``MatMul``: the product of two quantized activations (attention), as
ONNX Runtime's QLinearMatMul computes it when neither operand is a constant: exact integer
accumulation of the zero-point-shifted codes, then the profile's requantization of the
per-tensor multiplier ``s_a * s_b / s_y``."""
from __future__ import annotations

import numpy as np

from mrq import multipliers as mul
from mrq.errors import UnsupportedOpError


class MatMulLowering:
    def _MatMul(self, node):
        a, b = (self.ensure_buffer(n, node) for n in node.inputs)
        qa, qb = self.t(a).qparams, self.t(b).qparams
        qy = self.t(node.outputs[0]).qparams
        if qa.per_channel or qb.per_channel or qy.per_channel:
            raise UnsupportedOpError("MatMul", node.name, "per-channel quantized activations")
        real = np.array([float(qa.scale[0]) * float(qb.scale[0]) / float(qy.scale[0])])
        ort = mul.ort_multiplier(qa.scale[0], np.asarray(qb.scale, np.float32), qy.scale[0])
        self.emit("matmul", node, [a, b], node.outputs, zero_point_a=int(qa.zero_point[0]),
                  zero_point_b=int(qb.zero_point[0]), **self.acc_block(),
                  pair_sums=self.pair_sums(str(qa.dtype), str(qb.dtype)),
                  paired_batch=int(node.attrs.get("paired_batch", 0)),
                  **self.requant_block(real, qy, node.attrs.get("clamp"), -1, ort))
