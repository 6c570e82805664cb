"""explicit_clamps: make every clamp that a grid implies explicit, before any grid changes.

A grid is also a clamp: a uint8 activation with zero point 0 is a ReLU, a range [0, 6] is a
ReLU6, and quantizers delete the Relu/Clip for that reason. Re-gridding (e.g. to symmetric int8)
widens the representable range and would silently drop those clamps. This pass intersects each
op's fused clamp with the real range its output grid represents, so the new model clamps exactly
where the old one did. Lossless by construction: the old model's outputs never leave that range.
"""
from __future__ import annotations

from mrq.grids import real_range
from mrq.ir import Graph

CLAMPED_OPS = ("Quantize", "Conv", "Gemm", "Add", "Mul", "AveragePool", "GlobalAveragePool", "Rescale", "Clamp")


def _intersect(clamp, lo, hi):
    c_lo, c_hi = clamp if clamp is not None else (None, None)
    new_lo = lo if c_lo is None else max(lo, c_lo)
    new_hi = hi if c_hi is None else min(hi, c_hi)
    return (new_lo, new_hi)


def explicit_clamps(graph: Graph, ctx) -> Graph:
    for node in graph.nodes:
        if node.op not in CLAMPED_OPS or node.attrs.get("integer_output"):
            continue
        qp = graph.tensors[node.outputs[0]].qparams
        if qp is None or qp.per_channel:
            continue
        lo, hi = real_range(qp)
        if node.op == "Clamp":
            node.attrs["lo"], node.attrs["hi"] = _intersect((node.attrs.get("lo"), node.attrs.get("hi")),
                                                            float(lo[0]), float(hi[0]))
        else:
            node.attrs["clamp"] = _intersect(node.attrs.get("clamp"), float(lo[0]), float(hi[0]))
    return graph
