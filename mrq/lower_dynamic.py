"""Lowering of the IR ops of ONNX Runtime's dynamic quantization (:mod:`mrq.onnx_import_dynamic`):
``DynamicQuantize``, ``MatMulInteger`` and ``DynamicMatMul``. Their arithmetic is ORT's own
(a grid computed from each tensor in float32, a float32 multiply and add after the integer
product), so only a profile that computes in float32 as ORT does can run them."""
from __future__ import annotations

import numpy as np

from mrq.errors import UnsupportedOpError


class DynamicLowering:
    def _check_dynamic(self, node) -> None:
        a = self.a
        if not (a.requant == "float32" and a.quantize_method == "divide"
                and a.quantize_rounding == "half_even"):
            raise UnsupportedOpError(node.op, node.name, f"dynamic quantization is ONNX Runtime's "
                                     f"float32 arithmetic, and profile {a.name!r} does not quantize "
                                     f"and requantize in float32 as ORT does")

    def _DynamicQuantize(self, node):
        self._check_dynamic(node)
        self.emit("dynamic_quantize", node, node.inputs, node.outputs)

    def _MatMulInteger(self, node):
        self._check_dynamic(node)
        inputs = [self.ensure_buffer(n, node) for n in node.inputs]
        self.emit("matmul_integer", node, inputs, node.outputs,
                  pair_sums=self.pair_sums(*(self.t(n).dtype for n in node.inputs[:2])))

    def _const_buffer(self, node, suffix: str, value: np.ndarray) -> str:
        name = f"{node.name}/{suffix}"
        self.emit("constant", node, (), (name,), suffix=f"/{suffix}", value=value)
        return name

    def _dynamic_codes(self, node, x: str, which: str) -> tuple:
        """``dynamic_quantize`` of the float tensor ``x``: (codes, scale, zero point) buffers."""
        outs = tuple(f"{node.name}/{which}_{part}" for part in ("codes", "scale", "zero_point"))
        self.emit("dynamic_quantize", node, (x,), outs, suffix=f"/quantize_{which}")
        return outs

    def _DynamicMatMul(self, node):
        """ORT's ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``: quantize A (and a
        non-constant B) at run time, integer product, ``f32(acc) * f32(s_a * s_b) + bias``."""
        self._check_dynamic(node)
        a_codes, a_scale, a_zp = self._dynamic_codes(node, node.inputs[0], "a")
        b = self.t(node.inputs[1])
        if b.is_const:
            qp = b.qparams
            b_codes = self.ensure_buffer(b.name, node)
            b_scale = self._const_buffer(node, "b_scale", qp.scale.astype(np.float32))
            b_zp = self._const_buffer(node, "b_zero_point",
                                      qp.zero_point.astype(np.dtype(b.data.dtype)))
        else:
            b_codes, b_scale, b_zp = self._dynamic_codes(node, b.name, "b")
        acc = f"{node.name}/acc"
        # A's codes are DynamicQuantizeLinear's uint8; B's are the constant's, or uint8 too
        b_dtype = str(np.dtype(b.data.dtype)) if b.is_const else "uint8"
        self.emit("matmul_integer", node, (a_codes, b_codes, a_zp, b_zp), (acc,), suffix="/matmul",
                  pair_sums=self.pair_sums("uint8", b_dtype))
        bias = None
        if len(node.inputs) > 2:
            bias = np.ascontiguousarray(np.asarray(self.t(node.inputs[2]).data, np.float32).reshape(-1))
        lo, hi = node.attrs.get("clamp") or (None, None)
        self.emit("scale_bias", node, (acc, a_scale, b_scale), node.outputs, suffix="/scale_bias",
                  bias=bias, out_min=None if lo is None else float(np.float32(lo)),
                  out_max=None if hi is None else float(np.float32(hi)))

    def _DynamicConv(self, node):
        """quantize_dynamic's conv as ORT runs it: quantize x at run time, ConvInteger, then
        ``f32(acc) * f32(s_x * s_w) + bias[c]`` in float32 (Cast, Mul, Add)."""
        self._check_dynamic(node)
        x_codes, x_scale, x_zp = self._dynamic_codes(node, node.inputs[0], "x")
        w = self.t(node.inputs[1])
        at = node.attrs
        acc = f"{node.name}/acc"
        self.emit("conv_integer", node, (x_codes, x_zp), (acc,), suffix="/conv",
                  weight=np.asarray(w.data), weight_zero_point=int(w.qparams.zero_point[0]),
                  strides=tuple(at["strides"]), pads=tuple(at["pads"]),
                  dilations=tuple(at["dilations"]), group=int(at["group"]),
                  layout=at.get("layout", "NCHW"))
        w_scale = self._const_buffer(node, "w_scale", w.qparams.scale.astype(np.float32))
        bias = None
        if len(node.inputs) > 2:
            bias = np.ascontiguousarray(np.asarray(self.t(node.inputs[2]).data, np.float32).reshape(-1))
        lo, hi = at.get("clamp") or (None, None)
        self.emit("scale_bias", node, (acc, x_scale, w_scale), node.outputs, suffix="/scale_bias",
                  bias=bias, channel_axis=1 if at.get("layout", "NCHW") == "NCHW" else 3,
                  out_min=None if lo is None else float(np.float32(lo)),
                  out_max=None if hi is None else float(np.float32(hi)))
