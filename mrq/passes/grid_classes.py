"""Tensors that must share one grid: the inputs and outputs of ops that move values without
requantizing them (Reshape, Transpose, MaxPool, and a Clamp on one grid)."""
from __future__ import annotations

from mrq.ir import Graph

GRID_SHARING_OPS = ("Reshape", "Transpose", "MaxPool")


def grid_classes(graph: Graph) -> dict:
    """Map each integer activation tensor to a representative; tensors with the same
    representative must keep identical grids."""
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
        if node.op in GRID_SHARING_OPS or (
                node.op == "Clamp" and graph.tensors[node.inputs[0]].qparams.same_grid(
                    graph.tensors[node.outputs[0]].qparams)):
            union(node.inputs[0], node.outputs[0])
    return {name: find(name) for name in parent}


def members(classes: dict) -> dict:
    out: dict = {}
    for name, root in classes.items():
        out.setdefault(root, []).append(name)
    return out
