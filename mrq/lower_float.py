"""Lowering of the float islands of mixed ONNX graphs (:mod:`mrq.onnx_import_float`): ORT's
float32 CPU kernels, reproduced bit for bit, so only a profile whose ``runtime`` is
``onnxruntime`` runs them; every other profile refuses the node in one line naming it and its
ONNX op. Data movement of float tensors (``Reshape``/``Take``/``Transpose``) lowers as usual."""
from __future__ import annotations

from mrq.errors import UnsupportedOpError
from simulator.kernels.ort_eltwise import ORT_ISAS
from simulator.kernels.ort_nchwc import BLOCKS, nchwc_variant

FLOAT_ISLAND_OPS = ("FloatBinary", "FloatUnary", "FloatConcat", "FloatMaxPool", "FloatSoftmax",
                    "FloatGlobalAveragePool", "FloatReduceL2", "FloatMatMul", "FloatConv")


def island_op_name(node) -> str:
    """The profile-vocabulary name of a node (``host_ops``/``supported_ops`` keys): a float
    island op's ONNX op (Sigmoid as the IR's ``Logistic``), any other node's own op."""
    if node.op in ("FloatML", "FloatCast", "FloatMath", "FloatReduceMean", "FloatRmsNorm"):
        from mrq.lower_ml import ml_op_name
        return ml_op_name(node)
    if node.op == "FloatReduceMinMax":   # mrq/onnx_import_math.py
        return "Reduce" + node.attrs["float_op"]
    if node.op not in FLOAT_ISLAND_OPS:
        return node.op
    op = node.attrs.get("float_op", node.op.removeprefix("Float"))
    return "Logistic" if op == "Sigmoid" else op


class FloatOpsLowering:
    def _require_ort_runtime(self, node) -> None:
        if self.a.runtime != "onnxruntime":
            op = island_op_name(node)
            # an op the NPU runs in integers (Conv, MatMul) cannot also be a host op
            on_npu = self.a.supported_ops is not None and op in self.a.supported_ops
            hint = "quantize its output, or use onnxruntime-cpu" if on_npu else \
                f"quantize it, use onnxruntime-cpu, or run it on the host: host_ops: {{{op}: onnxruntime-cpu}}"
            raise UnsupportedOpError(op, node.name, f"a float {op} between quantized regions is "
                                     f"ONNX Runtime's float kernel, and profile {self.a.name!r} "
                                     f"computes in integers ({hint})")

    def ort_isa(self) -> str:
        """The MLAS float kernel set ORT runs on the profile's host class (``runtime_isa``; the
        profile loader gives every ``runtime: onnxruntime`` profile one, ``avx512f`` by default,
        and only such profiles lower float islands)."""
        return self.a.runtime_isa or ORT_ISAS[0]

    def _FloatBinary(self, node):
        self._require_ort_runtime(node)
        inputs = [self.ensure_buffer(n, node) for n in node.inputs]
        self.emit("float_binary", node, inputs, node.outputs, op=node.attrs["float_op"])

    def _FloatUnary(self, node):
        self._require_ort_runtime(node)
        at = node.attrs
        self.emit("float_unary", node, node.inputs, node.outputs, op=at["float_op"],
                  alpha=float(at.get("alpha", 0.0)), beta=float(at.get("beta", 0.0)),
                  lo=at.get("lo"), hi=at.get("hi"))

    def _FloatConcat(self, node):
        self._require_ort_runtime(node)
        self.emit("concat", node, node.inputs, node.outputs, axis=int(node.attrs["axis"]))

    def _FloatMaxPool(self, node):
        self._require_ort_runtime(node)
        at = node.attrs
        self.emit("float_maxpool", node, node.inputs, node.outputs, layout=at.get("layout", "NCHW"),
                  kernel=tuple(at["kernel"]), strides=tuple(at["strides"]), pads=tuple(at["pads"]),
                  dilations=tuple(at.get("dilations", (1, 1))), ceil_mode=int(at.get("ceil_mode", 0)))

    def _FloatSoftmax(self, node):
        self._require_ort_runtime(node)
        self.emit("float_softmax", node, node.inputs, node.outputs, axis=int(node.attrs["axis"]),
                  isa=self.ort_isa())

    def _FloatGlobalAveragePool(self, node):
        self._require_ort_runtime(node)
        order = node.attrs.get("order", "mlas")
        # the import marks NCHWc where some host's channel block divides the channels
        if order == "nchwc" and self.g.tensors[node.inputs[0]].shape[1] % BLOCKS[self.ort_isa()]:
            order = "mlas"
        self.emit("float_global_avgpool", node, node.inputs, node.outputs, order=order)

    def _FloatReduceL2(self, node):
        self._require_ort_runtime(node)
        self.emit("float_reduce_l2", node, node.inputs, node.outputs)

    def _FloatMatMul(self, node):
        self._require_ort_runtime(node)
        at = node.attrs
        inputs = [self.ensure_buffer(n, node) for n in node.inputs]
        self.emit("float_matmul", node, inputs, node.outputs, trans_a=bool(at.get("trans_a", False)),
                  trans_b=bool(at.get("trans_b", False)), alpha=float(at.get("alpha", 1.0)),
                  packed_b=bool(at.get("packed_b", False)))

    def _FloatConv(self, node):
        self._require_ort_runtime(node)
        at = node.attrs
        inputs = [self.ensure_buffer(node.inputs[0], node)]   # a constant input is a buffer too
        order, isa = at.get("order", "mlas"), self.ort_isa()
        weight = at["weight"]
        # the import marks NCHWc where some host's channel block allows it; on this profile's
        # host ORT may leave the Conv to MLAS's im2col path
        if order == "nchwc" and nchwc_variant(weight.shape[1] * int(at["group"]), weight.shape[0],
                                              weight.shape[2:], tuple(at["pads"]), int(at["group"]),
                                              BLOCKS[isa]) is None:
            order = "mlas"
        self.emit("float_conv", node, inputs, node.outputs, weight=weight,
                  bias=at.get("bias"), strides=tuple(at["strides"]), pads=tuple(at["pads"]),
                  dilations=tuple(at["dilations"]), group=int(at["group"]), order=order, isa=isa)
