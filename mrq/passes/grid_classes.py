"""Tensors that must share one grid: the inputs and outputs of ops that move values without
requantizing them (Reshape, Transpose, MaxPool, Take, and a Clamp on one grid), and of the ops a
profile lists in ``ops.shared_grid`` (e.g. Concat on hardware that concatenates raw codes)."""
from __future__ import annotations

from mrq.ir import Graph

# Take (slices, splits, tiles) copies codes too: its lowering has no rescale
GRID_SHARING_OPS = ("Reshape", "Transpose", "MaxPool", "Take")


def grid_classes(graph: Graph, shared_ops=()) -> dict:
    """Map each integer activation tensor to a representative; tensors with the same
    representative must keep identical grids. ``shared_ops``: op types whose non-constant
    activation inputs and output are tied too."""
    parent: dict = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra

    for node in graph.nodes:
        for name in node.inputs + node.outputs:
            t = graph.tensors.get(name)
            if t is not None and t.qparams is not None and not t.is_const:
                find(name)
        # a Resize on codes (ORT's QOperator kernel) interpolates codes: one grid in and out
        first = graph.tensors.get(node.inputs[0]) if node.inputs else None
        if first is None or first.qparams is None:
            continue   # a float or plain-number tensor (mrq/onnx_import_float.py, _ml.py): no grid
        if node.op in GRID_SHARING_OPS or (node.op == "Resize" and node.attrs.get("on_codes")) or (
                node.op == "Clamp" and graph.tensors[node.inputs[0]].qparams.same_grid(
                    graph.tensors[node.outputs[0]].qparams)):
            union(node.inputs[0], node.outputs[0])
        elif node.op in shared_ops:
            for name in _tied_inputs(graph, node):
                union(node.outputs[0], name)
    return {name: find(name) for name in parent}


def _tied_inputs(graph: Graph, node) -> list:
    out = []
    for name in node.inputs:
        t = graph.tensors.get(name)
        if t is not None and t.qparams is not None and not t.is_const:
            out.append(name)
    return out


def shared_grid_violations(graph: Graph, shared_ops) -> list:
    """One line per node of a ``shared_ops`` type whose activation inputs and output are not on
    one grid."""
    lines = []
    for node in graph.nodes:
        if node.op not in shared_ops or graph.tensors[node.outputs[0]].qparams is None:
            continue
        out_qp = graph.tensors[node.outputs[0]].qparams
        differ = [n for n in _tied_inputs(graph, node) if not graph.tensors[n].qparams.same_grid(out_qp)]
        if differ:
            lines.append(f"{node.name} ({node.op}): input(s) {', '.join(differ)} not on the output's grid; "
                         f"the profile requires one shared grid (ops.shared_grid)")
    return lines


def members(classes: dict) -> dict:
    out: dict = {}
    for name, root in classes.items():
        out.setdefault(root, []).append(name)
    return out
