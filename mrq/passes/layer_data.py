"""Calibration data as the layers see it: input patches, pre-activation outputs, and a sweep that
visits Conv/Gemm layers in order with the inputs the *new* model produces at that point."""
from __future__ import annotations

import numpy as np

from mrq.float_ref import FloatReference, _windows, conv2d_nchw
from mrq.ir import Graph

MAX_ROWS = 32768  # rows of the patch matrix used for second moments (random subset beyond this)


def to_nchw(node, x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2) if node.op == "Conv" and node.attrs.get("layout") == "NHWC" else x


def real_weights(graph: Graph, node) -> np.ndarray:
    t = graph.tensors[node.inputs[1]]
    return t.qparams.dequantize(np.asarray(t.data))


def pre_activation(graph: Graph, node, x: np.ndarray, w_real: np.ndarray, b_real: np.ndarray) -> np.ndarray:
    """W x + b, before any clamp or requantization, with the channel axis last-but-spatial (NCHW
    for Conv, [..., N] for Gemm)."""
    if node.op == "Conv":
        at = node.attrs
        return conv2d_nchw(to_nchw(node, x), w_real, b_real, at["strides"], at["pads"], at["dilations"], at["group"])
    return x @ w_real + b_real


def channel_mean(node, y: np.ndarray) -> np.ndarray:
    if node.op == "Conv":
        return y.mean(axis=(0, 2, 3))
    return y.reshape(-1, y.shape[-1]).mean(axis=0)


def patch_groups(graph: Graph, node, x: np.ndarray, rng) -> np.ndarray:
    """The layer's input as [groups, rows, K] (K ordered like the flattened weight rows)."""
    if node.op == "Gemm":
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] > MAX_ROWS:
            flat = flat[rng.choice(flat.shape[0], MAX_ROWS, replace=False)]
        return flat[None]
    at = node.attrs
    w = graph.tensors[node.inputs[1]].data
    cg, kh, kw = w.shape[1:]
    group = at["group"]
    win = _windows(to_nchw(node, x), (kh, kw), at["strides"], at["pads"], at["dilations"], False, 0.0)
    n, c, oh, ow = win.shape[:4]
    rows = n * oh * ow
    pick = rng.choice(rows, MAX_ROWS, replace=False) if rows > MAX_ROWS else None
    # [N, C, OH, OW, KH, KW] -> [groups, rows, cg*KH*KW]
    win = win.transpose(0, 2, 3, 1, 4, 5).reshape(rows, group, cg * kh * kw)
    if pick is not None:
        win = win[pick]
    return np.ascontiguousarray(win.transpose(1, 0, 2))


def sweep(graph: Graph, ctx, on_layer) -> dict:
    """Run the new graph (fake-quantized) on the calibration data; before each Conv/Gemm call
    ``on_layer(node, x_new, x_old)`` which may change that layer's constants in ``graph``."""
    original = ctx.original_env()

    def hook(node, env):
        if node.op in ("Conv", "Gemm") and not node.attrs.get("integer_output"):
            on_layer(node, env[node.inputs[0]], original[node.inputs[0]])

    return FloatReference(graph, fake_quant=True).run(ctx.new_graph_feeds(graph), before_node=hook, keep=set())
