"""Lowering of blocked quantization (:mod:`mrq.onnx_import_blocked`): the profile's quantize
arithmetic (rounding, divide or multiply) per element, with blocked scales and zero points."""
from __future__ import annotations

import numpy as np


class BlockedLowering:
    def _BlockQuantize(self, node):
        at = node.attrs
        self.emit("quantize_blocked", node, node.inputs, node.outputs,
                  scale=np.asarray(at["scale"], np.float32), zero_point=np.asarray(at["zero_point"], np.int64),
                  axis=int(at["axis"]), block_size=int(at["block_size"]),
                  rounding=self.a.quantize_rounding, method=self.a.quantize_method,
                  out_dtype=at["out_dtype"], out_min=int(at["out_min"]), out_max=int(at["out_max"]))

    def _BlockDequantize(self, node):
        at = node.attrs
        self.emit("dequantize_blocked", node, node.inputs, node.outputs,
                  scale=np.asarray(at["scale"], np.float32), zero_point=np.asarray(at["zero_point"], np.int64),
                  axis=int(at["axis"]), block_size=int(at["block_size"]))
