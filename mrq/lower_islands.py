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


    # ----------------------------------------------------------- 16-bit QDQ float islands
    def ort_float_island(self, node) -> bool:
        """Lower a Conv/Gemm/Add with a 16-bit activation, input or output, as ONNX Runtime
        runs it: its QDQ fusions to integer kernels take only 8-bit activations, so it executes
        ``DequantizeLinear -> float op -> QuantizeLinear`` (onnxruntime-cpu only; the NNA
        profiles keep their integer arithmetic). Returns False when the node is not such."""
        if self.a.runtime != "onnxruntime" or node.op not in _ORT_FLOAT16_OPS \
                or node.attrs.get("integer_output"):
            return False
        activations = node.inputs[:2] if node.op == "Add" else node.inputs[:1]
        grids = [self.t(n).qparams for n in list(activations) + list(node.outputs)]
        if any(qp is None for qp in grids) or \
                not any(qp.dtype in _SIXTEEN_BIT for qp in grids):
            return False
        getattr(self, "_ort_float16_" + node.op)(node)
        return True

    def _ort_quantize(self, node, real: str, target: str | None = None) -> None:
        """The QuantizeLinear closing an island (a fused Relu/Clip narrows its range), into
        ``target`` (default the node's output)."""
        y_qp = self.t(node.outputs[0]).qparams
        lo, hi = self.out_range(y_qp, node.attrs.get("clamp"))
        self.emit("quantize", node, [real], [target or node.outputs[0]], suffix="/quantize",
                  scale=y_qp.scale.astype(np.float32), zero_point=y_qp.zero_point.astype(np.int64),
                  axis=1, rounding=self.a.quantize_rounding, method=self.a.quantize_method,
                  out_min=lo, out_max=hi, out_dtype=storage_dtype(y_qp.dtype))

    def _ort_float_constants(self, node) -> tuple:
        """Weight and bias as ORT's DequantizeLinear of their codes gives them."""
        from mrq.onnx_import_islands import ort_dequantize_constant
        w = self.t(node.inputs[1])
        weight = ort_dequantize_constant(w.data, w.qparams)
        bias = None
        if len(node.inputs) > 2:
            b = self.t(node.inputs[2])
            if b.qparams is None:
                raise UnsupportedOpError(node.op, node.name, "its bias has no quantization grid")
            bias = ort_dequantize_constant(np.asarray(b.data).reshape(-1), b.qparams)
        return weight, bias

    def _ort_float16_Conv(self, node) -> None:
        at = node.attrs
        if len(at["strides"]) != 2:
            raise UnsupportedOpError(node.op, node.name, "ONNX Runtime's float Conv is simulated "
                                     "for 2-D convolutions only")
        weight, bias = self._ort_float_constants(node)
        x_qp = self.t(node.inputs[0]).qparams
        codes, real, out = node.inputs[0], f"{node.outputs[0]}__real", f"{node.outputs[0]}__float"
        nhwc = at.get("layout", "NCHW") == "NHWC"
        if nhwc:   # the layout pass moved activations to NHWC (weights stay OIHW); ORT's kernel is NCHW
            codes = f"{node.inputs[0]}__nchw"
            self.emit("transpose", node, node.inputs[:1], [codes], suffix="/to_nchw", perm=(0, 3, 1, 2))
        self.emit("dequantize", node, [codes], [real], suffix="/dequantize",
                  scale=x_qp.scale.astype(np.float32), zero_point=x_qp.zero_point.astype(np.int64),
                  axis=1)
        self.emit("conv_ort", node, [real], [out], suffix="/conv", weight=weight, bias=bias,
                  strides=tuple(at["strides"]), pads=tuple(at["pads"]),
                  dilations=tuple(at["dilations"]), group=int(at["group"]))
        if not nhwc:
            return self._ort_quantize(node, out)
        quantized = f"{node.outputs[0]}__nchw"
        self._ort_quantize(node, out, quantized)
        self.emit("transpose", node, [quantized], node.outputs, suffix="/to_nhwc", perm=(0, 2, 3, 1))

    def _ort_float16_Gemm(self, node) -> None:
        if node.attrs.get("onnx_matmul"):
            raise UnsupportedOpError(node.op, node.name, "ONNX Runtime 1.32 rewrites a 16-bit QDQ "
                                     "MatMul with constant 8-bit weights into com.microsoft "
                                     "MatMulNBits (blockwise, accuracy level 4), which mrq does not "
                                     "simulate; export the layer as Gemm")
        weight, bias = self._ort_float_constants(node)
        real, out = self._dequantized(node), f"{node.outputs[0]}__float"
        self.emit("gemm_ort", node, [real], [out], suffix="/gemm", weight=weight, bias=bias,
                  trans_b=bool(node.attrs.get("ort_trans_b", False)))
        self._ort_quantize(node, out)

    def _ort_float16_Add(self, node) -> None:
        """``add`` in its ``float`` mode is ORT's DQ, DQ, float32 add, QuantizeLinear."""
        a, b = (self.ensure_buffer(n, node) for n in node.inputs)
        qa, qb, qy = (self.t(n).qparams for n in (a, b, node.outputs[0]))
        if any(qp.scale.size != 1 for qp in (qa, qb, qy)):
            raise UnsupportedOpError(node.op, node.name, "per-channel quantized operands")
        lo, hi = self.out_range(qy, node.attrs.get("clamp"))
        self.emit("add", node, [a, b], node.outputs, mode="float",
                  rounding=self.a.quantize_rounding, scale_a=np.float32(qa.scale[0]),
                  scale_b=np.float32(qb.scale[0]), scale_out=np.float32(qy.scale[0]),
                  zero_point_a=int(qa.zero_point[0]), zero_point_b=int(qb.zero_point[0]),
                  out_zero_point=int(qy.zero_point[0]), out_min=lo, out_max=hi,
                  out_dtype=storage_dtype(qy.dtype))


_ORT_FLOAT16_OPS = ("Conv", "Gemm", "Add")
_SIXTEEN_BIT = ("int16", "uint16")


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
