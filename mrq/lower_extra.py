"""Lowering of the ops outside the core CNN set (softmax and the TFLite-only ops).

Mixed into :class:`mrq.lower._Lowerer`; methods are named ``_<IR op>`` and use its helpers
(``self.t``, ``self.emit``, ``self.requant_block``, ``self.out_range``, ``self.a``)."""
from __future__ import annotations

import numpy as np

from mrq.ir import storage_dtype


class ExtraOpsLowering:
    def _Softmax(self, node):
        x_qp = self.t(node.inputs[0]).qparams
        y_qp = self.t(node.outputs[0]).qparams
        self.emit("softmax", node, node.inputs, node.outputs, axis=node.attrs.get("axis", -1), mode="float",
                  scale_in=np.float32(x_qp.scale[0]), zero_point_in=int(x_qp.zero_point[0]),
                  scale_out=np.float32(y_qp.scale[0]), zero_point_out=int(y_qp.zero_point[0]),
                  out_min=y_qp.qmin, out_max=y_qp.qmax, out_dtype=storage_dtype(y_qp.dtype))


