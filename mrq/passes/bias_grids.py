"""bias_grids: put every Conv/Gemm bias on the grid the new accumulator has
(scale = input scale * weight scale[c], zero point 0, the profile's bias width), saturating codes
that do not fit and counting them in the report.

Biases are stored as real values in ``node.attrs['bias_real']`` by the first run of this pass so
that later passes (error folding) adjust the real bias and call :func:`set_bias` again.
"""
from __future__ import annotations

import numpy as np

from mrq.grids import describe
from mrq.ir import Graph, QParams, Tensor


def bias_scale(graph: Graph, node) -> np.ndarray:
    x_qp = graph.tensors[node.inputs[0]].qparams
    w_qp = graph.tensors[node.inputs[1]].qparams
    n_out = graph.tensors[node.inputs[1]].data.shape[0 if node.op in ("Conv", "TransposeConv") else 1]
    w_scale = np.broadcast_to(w_qp.scale.astype(np.float32), (n_out,))
    # The same float32 product the lowering compares against (ORT's convention).
    return (np.float32(x_qp.scale[0]) * w_scale).astype(np.float32)


def real_bias(graph: Graph, node) -> np.ndarray:
    n_out = graph.tensors[node.inputs[1]].data.shape[0 if node.op in ("Conv", "TransposeConv") else 1]
    if len(node.inputs) < 3:
        return np.zeros(n_out)
    t = graph.tensors[node.inputs[2]]
    codes = np.asarray(t.data, np.float64).reshape(-1)
    if t.qparams is None:
        return np.broadcast_to(codes, (n_out,)).copy()
    scale = np.broadcast_to(t.qparams.scale.astype(np.float64), (n_out,))
    return np.broadcast_to(codes - t.qparams.zero_point, (n_out,)) * scale


def set_bias(graph: Graph, node, real: np.ndarray, profile) -> int:
    """Quantize ``real`` onto the node's accumulator grid; returns the number of saturated codes."""
    scale = bias_scale(graph, node)
    lo, hi = profile.bias.qmin_qmax()
    exact = np.rint(np.asarray(real, np.float64) / scale.astype(np.float64))
    codes = np.clip(exact, lo, hi).astype(np.int64)
    from mrq.passes.accumulator_budget import budget_bias_limits
    limits = budget_bias_limits(graph, node)
    if limits is not None:   # the accumulator budget of accumulator_budget binds the bias too
        codes = np.clip(codes, limits[0], limits[1]).astype(np.int64)
    saturated = int(np.count_nonzero(codes != exact))
    qp = QParams(scale, np.zeros(scale.size, np.int64), profile.bias.dtype, axis=0 if scale.size > 1 else None)
    if len(node.inputs) < 3:
        name = graph.unique_name(node.name + "_bias")
        graph.tensors[name] = Tensor(name, codes.shape, qp.dtype, qp, codes)
        node.inputs.append(name)
    else:
        t = graph.tensors[node.inputs[2]]
        t.data, t.qparams, t.dtype, t.shape = codes, qp, qp.dtype, codes.shape
    node.attrs["bias_real"] = np.asarray(real, np.float64)
    return saturated


def bias_grids(graph: Graph, ctx) -> Graph:
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm", "TransposeConv") or node.attrs.get("integer_output"):
            continue
        if len(node.inputs) < 3:
            continue
        t = graph.tensors[node.inputs[2]]
        old = t.qparams
        real = real_bias(graph, node)
        scale = bias_scale(graph, node)
        conforming = (old is not None and np.array_equal(np.broadcast_to(old.scale, scale.shape), scale)
                      and not ctx.profile.check_tensor("bias", t.dtype, old.scale, old.zero_point,
                                                       values=np.asarray(t.data)))
        if conforming:
            node.attrs["bias_real"] = real
            continue
        saturated = set_bias(graph, node, real, ctx.profile)
        if saturated:
            ctx.report.bias_saturated[node.name] = saturated
        ctx.report.change(t.name, "bias", describe(old), describe(t.qparams), False, "bias_grids",
                          f"{saturated} code(s) saturated to {ctx.profile.bias.bits} bits" if saturated else
                          "re-rounded onto input scale x weight scale")
    return graph
