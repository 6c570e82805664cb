"""Lowering of the float islands ONNX Runtime runs between DequantizeLinear and QuantizeLinear
(mrq/onnx_import_islands.py): the integer input is dequantized as ORT does, then ORT's float32
kernel runs; the IR ``Quantize`` node that follows quantizes the result.

These are ORT's own float kernels, reproduced bit for bit: only a profile whose ``runtime`` is
``onnxruntime`` lowers them (the ``onnxruntime-cpu`` profile, or another profile's
``host_ops: {LayerNormalization: onnxruntime-cpu}``); every other profile refuses the node.
"""
from __future__ import annotations

import numpy as np

from mrq import ort_float
from mrq.errors import UnsupportedOpError
from mrq.ir import storage_dtype


class FloatIslandLowering:
    def _require_ort_float(self, node) -> None:
        if self.a.runtime != "onnxruntime":
            raise UnsupportedOpError(node.op, node.name, f"ONNX Runtime runs it as a float kernel "
                                     f"and profile {self.a.name!r} has no arithmetic for it; "
                                     f"run it on the host with host_ops: {{{node.op}: onnxruntime-cpu}} "
                                     f"(and not in supported_ops)")

    def _dequantized(self, node) -> str:
        """Emit the dequantization of the node's integer input; returns the float tensor."""
        qp = self.t(node.inputs[0]).qparams
        real = f"{node.outputs[0]}__real"
        self.emit("dequantize", node, node.inputs[:1], [real], suffix="/dequantize",
                  scale=qp.scale.astype(np.float32), zero_point=qp.zero_point.astype(np.int64),
                  axis=1)
        return real

    def _LayerNormalization(self, node):
        self._require_ort_float(node)
        at = node.attrs
        real = self._dequantized(node)
        self.emit("layernorm_ort", node, [real], node.outputs, scale=np.asarray(at["scale"], np.float32),
                  bias=None if at.get("bias") is None else np.asarray(at["bias"], np.float32),
                  epsilon=float(at["epsilon"]), axis=int(at["axis"]))

    def _ConvTranspose(self, node):
        self._require_ort_float(node)
        at = node.attrs
        real = self._dequantized(node)
        self.emit("convtranspose_ort", node, [real], node.outputs,
                  weight=np.asarray(at["weight"], np.float32),
                  bias=None if at.get("bias") is None else np.asarray(at["bias"], np.float32),
                  strides=tuple(at["strides"]), pads=tuple(at["pads"]),
                  dilations=tuple(at["dilations"]), output_size=tuple(at["output_size"]))

    def _ElementwiseChain(self, node):
        """A 256-entry table: every input code dequantized as ORT does, the chain's float32
        ops in order (MLAS's erf), quantized with the profile's quantizer."""
        self._require_ort_float(node)
        x_qp, y_qp = self.t(node.inputs[0]).qparams, self.t(node.outputs[0]).qparams
        info = np.iinfo(np.dtype(storage_dtype(x_qp.dtype)))
        codes = np.arange(int(info.min), int(info.max) + 1, dtype=np.int64)
        real = (codes - int(x_qp.zero_point[0])).astype(np.float32) * np.float32(x_qp.scale[0])
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            y = ort_elementwise_chain(real, node.attrs["steps"])
        lo, hi = self.out_range(y_qp, node.attrs.get("clamp"))
        table = np.clip(self.quantize_reals(y, y_qp), lo, hi).astype(storage_dtype(y_qp.dtype))
        self.emit("lut", node, node.inputs, node.outputs, table=table,
                  out_dtype=storage_dtype(y_qp.dtype))

    def _ort_transpose_conv(self, node) -> None:
        """A QDQ ConvTranspose (IR ``TransposeConv`` from ONNX, NCHW) as ORT runs it: no integer
        kernel, so DequantizeLinear of input, weight and bias, the float32 ConvTranspose
        (``convtranspose_ort``), QuantizeLinear with the fused clamp."""
        from mrq.onnx_import_islands import ort_dequantize_constant
        w, y_qp = self.t(node.inputs[1]), self.t(node.outputs[0]).qparams
        # the importer holds the weight as [M, C, KH, KW] (per-channel along 0); ONNX's is [C, M, ...]
        weight = ort_dequantize_constant(w.data, w.qparams).transpose(1, 0, 2, 3)
        bias = None
        if len(node.inputs) > 2:
            b = self.t(node.inputs[2])
            bias = ort_dequantize_constant(np.asarray(b.data).reshape(-1), b.qparams)
        at = node.attrs
        kernel, size = weight.shape[2:], tuple(at["output_size"])
        in_hw = self.t(node.inputs[0]).shape[2:]
        strides, (top, left) = tuple(at["strides"]), tuple(at["pads"])
        # the bottom/right pads that give this output size (output_padding folded in)
        pads = (top, left) + tuple((n - 1) * s + k - p - o for n, s, k, p, o
                                   in zip(in_hw, strides, kernel, (top, left), size))
        real, out = self._dequantized(node), f"{node.outputs[0]}__float"
        self.emit("convtranspose_ort", node, [real], [out], suffix="/convtranspose", weight=weight,
                  bias=bias, strides=strides, pads=pads, dilations=(1, 1), output_size=size)
        lo, hi = self.out_range(y_qp, at.get("clamp"))
        self.emit("quantize", node, [out], node.outputs, scale=y_qp.scale.astype(np.float32),
                  zero_point=y_qp.zero_point.astype(np.int64), axis=1,
                  rounding=self.a.quantize_rounding, method=self.a.quantize_method,
                  out_min=lo, out_max=hi, out_dtype=storage_dtype(y_qp.dtype))


def ort_elementwise_chain(x: np.ndarray, steps) -> np.ndarray:
    """ORT's float32 elementwise kernels in order: Div/Mul/Add/Sub with a scalar constant
    (one rounding each, no FMA), Erf as ``MlasComputeErf``."""
    y = np.asarray(x, np.float32)
    for op, const, const_first in steps:
        if op == "Erf":
            y = ort_float.erf(y)
            continue
        c = np.float32(const)
        a, b = (c, y) if const_first else (y, c)
        y = {"Div": np.divide, "Mul": np.multiply, "Add": np.add, "Sub": np.subtract}[op](a, b)
        y = np.asarray(y, np.float32)
    return y
