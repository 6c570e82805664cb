"""Static shape propagation over the IR (batch dimension ``None``).

ONNX shape inference stops at contrib ops (com.microsoft QLinearAdd, QLinearConcat, ...), and
quantize_static writes no shapes for them, so the importer fills the gaps itself from the graph
inputs with the usual conv/pool/broadcast/concat rules. Known shapes are kept.
"""
from __future__ import annotations

import numpy as np

from mrq.ir import Graph


def _known(shape) -> bool:
    return bool(shape) and all(d is not None for d in shape[1:])


def pool_out(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int, ceil_mode: int) -> int:
    eff = (kernel - 1) * dilation + 1
    num = size + pad_begin + pad_end - eff
    out = (-(-num // stride) if ceil_mode else num // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1  # the last window must start inside the input or its leading padding
    return out


def _spatial(shape, layout):
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])


def _with_spatial(n, c, h, w, layout):
    return (n, c, h, w) if layout == "NCHW" else (n, h, w, c)


def _broadcast(a, b):
    out = []
    for x, y in zip(((1,) * (len(b) - len(a))) + tuple(a), ((1,) * (len(a) - len(b))) + tuple(b)):
        if x is None or y is None:
            out.append(None)
        else:
            out.append(max(x, y))
    return tuple(out)


def output_shape(graph: Graph, node) -> tuple | None:
    ins = [tuple(graph.tensors[n].shape) for n in node.inputs]
    x = ins[0] if ins else ()
    at = node.attrs
    op = node.op
    if op in ("Quantize", "Dequantize", "Clamp", "Rescale", "Softmax", "Logistic"):
        return x
    if not _known(x) and op not in ("Add", "Mul", "Concat"):
        return None
    if op in ("Conv", "MaxPool", "AveragePool"):
        layout = at.get("layout", "NCHW")
        if op == "Conv":
            w = graph.tensors[node.inputs[1]].data.shape
            kernel, channels = w[2:], w[0]
        else:
            kernel = at["kernel"]
            channels = x[1] if layout == "NCHW" else x[3]
        h, w_ = _spatial(x, layout)
        top, left, bottom, right = at["pads"]
        dil = at.get("dilations", (1, 1))
        ceil = at.get("ceil_mode", 0)
        oh = pool_out(h, kernel[0], at["strides"][0], top, bottom, dil[0], ceil)
        ow = pool_out(w_, kernel[1], at["strides"][1], left, right, dil[1], ceil)
        return _with_spatial(x[0], channels, oh, ow, at.get("layout", "NCHW"))
    if op == "GlobalAveragePool":
        layout = at.get("layout", "NCHW")
        c = x[1] if layout == "NCHW" else x[3]
        return _with_spatial(x[0], c, 1, 1, layout)
    if op == "Gemm":
        return tuple(x[:-1]) + (graph.tensors[node.inputs[1]].data.shape[1],)
    if op in ("Add", "Mul"):
        if not all(ins):
            return None
        return _broadcast(ins[0], ins[1])
    if op == "Concat":
        if not all(_known(s) for s in ins):
            return None
        axis = at["axis"] % len(x)
        out = list(x)
        out[axis] = sum(s[axis] for s in ins)
        return tuple(out)
    if op == "Transpose":
        return tuple(x[p] for p in at["perm"])
    if op == "Reshape":
        shape = at.get("shape")
        if shape is None:
            return x
        out = [x[i] if d == 0 else d for i, d in enumerate(shape)]
        if -1 in out:
            rest = int(np.prod([d for d in out[1:] if d != -1]))
            total = int(np.prod(x[1:]))
            out[out.index(-1)] = total // max(rest, 1) if out.index(-1) > 0 else None
        out[0] = None if shape[0] in (0, -1) else out[0]
        return tuple(out)
    return None


def infer_shapes(graph: Graph) -> Graph:
    for node in graph.nodes:
        for out in node.outputs:
            t = graph.tensors[out]
            if _known(tuple(t.shape)):
                continue
            shape = output_shape(graph, node)
            if shape is not None:
                t.shape = tuple(shape)
    return graph
