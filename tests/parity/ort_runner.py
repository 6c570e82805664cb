"""Run a model with ONNX Runtime exactly as the parity requirement specifies: CPU execution
provider, default (ORT_ENABLE_ALL) graph optimization level, ``session.qdqisint8allowed=1`` (so
int8-activation QDQ groups are fused into integer kernels on x86 too, see
docs peer_arithmetic.md §1.8), and one intra-op thread."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort


def session_options(optimized_model_filepath: str | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimized_model_filepath is not None:
        so.optimized_model_filepath = str(optimized_model_filepath)
    return so


def make_session(model_path, optimized_model_filepath=None) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(model_path),
        sess_options=session_options(optimized_model_filepath),
        providers=["CPUExecutionProvider"],
    )


def run_ort(model_path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of the model on `feeds`, as {output name: array}."""
    sess = make_session(model_path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def optimized_graph(model_path, save_to) -> onnx.ModelProto:
    """The graph ORT actually executes (after its CPU graph optimizations), saved to `save_to`."""
    make_session(model_path, optimized_model_filepath=save_to)
    return onnx.load(str(save_to))


def op_inventory(model: onnx.ModelProto) -> Counter:
    """Counter of 'domain:OpType' (domain omitted for the default one) in a graph."""
    return Counter((f"{n.domain}:" if n.domain not in ("", "ai.onnx") else "") + n.op_type
                   for n in model.graph.node)


# Ops that may appear in ORT's optimized graph and are reproducible bit-exactly: integer kernels,
# pure data movement, and float ops that round exactly once per element (IEEE single operations
# have one correct result). Anything else (float Conv/Gemm/MatMul/pool reductions, ...) depends on
# a summation order and must not be in a parity model.
EXACT_OPS = {
    "QuantizeLinear", "DequantizeLinear",
    "QLinearConv", "com.microsoft:QLinearConv", "QLinearMatMul", "com.microsoft:QGemm",
    "com.microsoft:QLinearAdd", "com.microsoft:QLinearMul", "com.microsoft:QLinearAveragePool",
    "com.microsoft:QLinearGlobalAveragePool", "com.microsoft:QLinearConcat",
    "MaxPool", "Reshape", "Flatten", "Transpose", "Concat", "Squeeze", "Unsqueeze", "Identity",
    "com.microsoft:NhwcMaxPool",
    # single-rounding elementwise float ops (only ever between a DQ and a Q)
    "Relu", "Clip", "Add", "Mul",
}


def inexact_ops(model: onnx.ModelProto) -> list[str]:
    """Ops in an (optimized) graph that are not in EXACT_OPS. The elementwise float ops Add/Mul
    count as exact only when their inputs come straight from DequantizeLinear (one rounding)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    bad = []
    for key, n in ((k, n) for n in model.graph.node
                   for k in [(f"{n.domain}:" if n.domain not in ("", "ai.onnx") else "") + n.op_type]):
        if key not in EXACT_OPS:
            bad.append(key)
        elif key in ("Add", "Mul"):
            srcs = [producers.get(i) for i in n.input]
            if not all(s is not None and s.op_type == "DequantizeLinear" for s in srcs):
                bad.append(key + "(not DQ-fed)")
    return bad
