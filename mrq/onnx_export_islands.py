"""Writing the float-island IR ops of :mod:`mrq.onnx_import_islands` back to ONNX (``mrq
requant``'s output): DequantizeLinear of the integer input, the float op with float32 constants,
and the QuantizeLinear the IR ``Quantize`` node (or the chain's own output grid) adds.

A ConvTranspose is written with the float weights the importer holds, which are already the ones
ORT's WeightBiasQuantization made; ORT (and mrq re-importing the file) re-quantize them once more,
so that file's ConvTranspose can differ from the one simulated before export by the second
rounding of the weights. A float-weight Conv or Gemm that ORT fuses into its integer kernel is
no island: it is imported as the integer Conv/Gemm of ORT's own int8/int32 constants
(mrq/onnx_import_float.py) and written back by :mod:`mrq.onnx_export` as that QDQ Conv/Gemm,
which ORT runs code for code as the original. Mixed into the exporter of :mod:`mrq.onnx_export`.
"""
from __future__ import annotations

import numpy as np
from onnx import helper


class FloatIslandExport:
    def _LayerNormalization(self, node):
        at = node.attrs
        ins = [self.float_view(node.inputs[0]), self.init(node.name + "_scale", np.asarray(at["scale"], np.float32))]
        if at.get("bias") is not None:
            ins.append(self.init(node.name + "_bias", np.asarray(at["bias"], np.float32)))
        y = self.fresh(node.name + "_y")
        self.nodes.append(helper.make_node("LayerNormalization", ins, [y], axis=int(at["axis"]),
                                           epsilon=float(at["epsilon"]), name=self.fresh(node.name)))
        self.finish(node, y)

    def _ConvTranspose(self, node):
        at = node.attrs
        w = np.asarray(at["weight"], np.float32)
        ins = [self.float_view(node.inputs[0]), self.init(node.name + "_weight", w)]
        if at.get("bias") is not None:
            ins.append(self.init(node.name + "_bias", np.asarray(at["bias"], np.float32)))
        in_hw = self.g.tensors[node.inputs[0]].shape[2:]
        pads = list(at["pads"])
        # output_padding: what the output size adds beyond the pads' size
        extra = [int(o) - ((n - 1) * s + d * (k - 1) + 1 - p0 - p1) for o, n, s, d, k, p0, p1
                 in zip(at["output_size"], in_hw, at["strides"], at["dilations"], w.shape[2:],
                        pads[:2], pads[2:])]
        y = self.fresh(node.name + "_y")
        self.nodes.append(helper.make_node(
            "ConvTranspose", ins, [y], name=self.fresh(node.name), kernel_shape=list(w.shape[2:]),
            strides=list(at["strides"]), pads=pads, dilations=list(at["dilations"]),
            output_padding=extra))
        self.finish(node, y)

    def _ElementwiseChain(self, node):
        y = self.float_view(node.inputs[0])
        for i, (op, const, const_first) in enumerate(node.attrs["steps"]):
            out = self.fresh(f"{node.name}_{op.lower()}{i}")
            if op == "Erf":
                ins = [y]
            else:
                c = self.init(f"{node.name}_c{i}", np.array(const, np.float32))
                ins = [c, y] if const_first else [y, c]
            self.nodes.append(helper.make_node(op, ins, [out], name=self.fresh(f"{node.name}_{i}")))
            y = out
        self.finish(node, y)
