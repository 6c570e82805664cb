"""Lowering of the plain-number ops of mixed ONNX graphs (:mod:`mrq.onnx_import_ml`): the
ai.onnx.ml preprocessing kernels, ArgMax over float scores and Casts between float32 and integer
numbers, as ONNX Runtime's CPU kernels compute them. Only a profile whose ``runtime`` is
``onnxruntime`` runs them; any other refuses the node in one line naming it and its ONNX op."""
from __future__ import annotations

import numpy as np

from mrq.errors import UnsupportedOpError

# IR op -> the profile-vocabulary (ONNX) names its nodes may carry
ML_OP_NAMES = {"FloatML": {"Imputer", "Scaler", "OneHotEncoder", "ArrayFeatureExtractor",
                           "ArgMax"},
               "FloatCast": {"Cast"},
               # float math of transformers (mrq/onnx_import_math.py)
               "FloatMath": {"Sqrt", "Neg", "Abs", "Pow", "Gelu"}, "FloatReduceMean": {"ReduceMean"},
               "FloatRmsNorm": {"LayerNormalization"}}
_ONNX_NAME = {"Lookup": "ArrayFeatureExtractor", "Square": "Pow", "Cube": "Pow", "FastGelu": "Gelu"}


def ml_op_name(node) -> str:
    """The ONNX op a FloatML/FloatCast node came from."""
    if node.op == "FloatCast":
        return "Cast"
    if node.op == "FloatReduceMean":
        return "ReduceMean"
    if node.op == "FloatRmsNorm":
        return "LayerNormalization"   # ORT's SimplifiedLayerNormalization (an RMSNorm)
    op = node.attrs["float_op"]
    return _ONNX_NAME.get(op, op)


class MlOpsLowering:
    def _require_ort_for_ml(self, node) -> None:
        if self.a.runtime != "onnxruntime":
            op = ml_op_name(node)
            raise UnsupportedOpError(op, node.name, f"a {op} of plain (unquantized) numbers is "
                                     f"ONNX Runtime's float/integer kernel, and profile "
                                     f"{self.a.name!r} computes on quantized codes (use "
                                     f"onnxruntime-cpu, or run it on the host)")

    def _FloatML(self, node):
        self._require_ort_for_ml(node)
        at = dict(node.attrs)
        op = at.pop("float_op")
        for name in ("values", "offset", "scale"):
            if name in at:
                at[name] = np.asarray(at[name], np.float32).reshape(-1)
        if "cats" in at:
            at["cats"] = np.asarray(at["cats"], np.int64).reshape(-1)
        self.emit("float_ml", node, node.inputs, node.outputs, op=op, **at)

    def _FloatCast(self, node):
        self._require_ort_for_ml(node)
        self.emit("cast", node, node.inputs, node.outputs, to=node.attrs["to"])

    def _FloatMath(self, node):
        self._require_ort_for_ml(node)
        inputs = [self.ensure_buffer(n, node) for n in node.inputs]   # constant operands
        self.emit("float_math", node, inputs, node.outputs, op=node.attrs["float_op"])

    def _FloatReduceMean(self, node):
        self._require_ort_for_ml(node)
        self.emit("float_reduce_mean", node, node.inputs, node.outputs,
                  keepdims=bool(node.attrs["keepdims"]))

    def _FloatRmsNorm(self, node):
        self._require_ort_for_ml(node)
        self.emit("float_rms_norm", node, node.inputs, node.outputs,
                  scale=np.asarray(node.attrs["scale"], np.float32).reshape(-1),
                  epsilon=float(node.attrs["epsilon"]))
