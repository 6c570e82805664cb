"""Lowering of run-time quantization parameters (:mod:`mrq.onnx_import_runtime_quant`,
ReduceMin/ReduceMax of :mod:`mrq.onnx_import_math`): the whole-tensor statistics and the
QuantizeLinear they feed. Float ops of ONNX Runtime, so only under an ``onnxruntime`` runtime."""
from __future__ import annotations


class RuntimeQuantLowering:
    def _FloatReduceMinMax(self, node):
        self._require_ort_runtime(node)
        self.emit("float_reduce_minmax", node, node.inputs, node.outputs,
                  op=node.attrs["float_op"], axes=tuple(int(a) for a in node.attrs["axes"]),
                  keepdims=bool(node.attrs["keepdims"]))

    def _QuantizeRuntime(self, node):
        self._require_ort_runtime(node)
        at = node.attrs
        inputs = [self.ensure_buffer(n, node) for n in node.inputs]
        self.emit("quantize_runtime", node, inputs, node.outputs, out_dtype=at["out_dtype"],
                  out_min=int(at["out_min"]), out_max=int(at["out_max"]),
                  rounding=self.a.quantize_rounding, method=self.a.quantize_method)
