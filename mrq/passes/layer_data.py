"""Calibration data as the layers see it: input patches, pre-activation outputs, and a sweep that
visits Conv/Gemm layers in order with the inputs the *new* model produces at that point."""
from __future__ import annotations

import weakref

import numpy as np

from mrq.float_ref import FloatReference, _windows, conv2d_nchw
from mrq.ir import Graph

MAX_ROWS = 16384  # rows of the patch matrix used for second moments (random subset beyond this)
ROWS_PER_COLUMN = 64  # ... and at most this many rows per column of it (K=9 needs far fewer than K=300)
REPORT_SAMPLES = 64  # calibration samples on which per-layer errors are measured for the report


def to_nchw(node, x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2) if node.op == "Conv" and node.attrs.get("layout") == "NHWC" else x


def real_weights(graph: Graph, node) -> np.ndarray:
    t = graph.tensors[node.inputs[1]]
    return t.qparams.dequantize(np.asarray(t.data))


def weight_rows(graph: Graph, node) -> np.ndarray:
    """Real weights as [output channels, K] (K ordered like mean_patch and patch_groups)."""
    w = real_weights(graph, node)
    return w.reshape(w.shape[0], -1) if node.op == "Conv" else w.T


def pre_activation(graph: Graph, node, x: np.ndarray, w_real: np.ndarray, b_real: np.ndarray) -> np.ndarray:
    """W x + b, before any clamp or requantization, with the channel axis last-but-spatial (NCHW
    for Conv, [..., N] for Gemm). Computed in x's precision when x is float32 (calibration
    sweeps), else float64."""
    if np.asarray(x).dtype == np.float32:
        w_real = np.asarray(w_real, np.float32)
        b_real = np.asarray(b_real, np.float32)
    if node.op == "Conv":
        at = node.attrs
        return conv2d_nchw(to_nchw(node, x), w_real, b_real, at["strides"], at["pads"], at["dilations"], at["group"])
    return x @ w_real + b_real


def batch_mean(x: np.ndarray) -> np.ndarray:
    """Mean over the first axis, as float64. Float32 input is summed by one BLAS matrix-vector
    product (~1e-7 relative error, several times faster than a float64 reduction)."""
    x = np.asarray(x)
    n = x.shape[0]
    if x.dtype == np.float32 and n > 0:
        flat = np.ascontiguousarray(x).reshape(n, -1)
        return (np.ones(n, np.float32) @ flat).astype(np.float64).reshape(x.shape[1:]) / n
    return x.mean(axis=0, dtype=np.float64)


def mean_patch(graph: Graph, node, x: np.ndarray) -> np.ndarray:
    """The mean input patch of each output channel's dot product: [channels, K] with K ordered like
    the flattened weight rows. Since the layer is linear, E[W x + b] = W . mean_patch + b, so the
    mean output needs no convolution."""
    if node.op == "Gemm":
        mean = batch_mean(x.reshape(-1, x.shape[-1]))
        return np.broadcast_to(mean, (graph.tensors[node.inputs[1]].data.shape[1], mean.size))
    at = node.attrs
    w = graph.tensors[node.inputs[1]].data
    m, cg, kh, kw = w.shape
    # Average over the batch first (one pass), then each tap is a strided view of that map.
    mean_map = batch_mean(to_nchw(node, x))[None]             # [1, C, H, W]
    win = _windows(mean_map, (kh, kw), at["strides"], at["pads"], at["dilations"], False, 0.0)
    per_tap = win.mean(axis=(0, 2, 3))                        # [C, KH, KW], padding counts as 0
    group = at["group"]
    mg = m // group
    return np.repeat(per_tap.reshape(group, cg * kh * kw), mg, axis=0)


def channel_mean(node, y: np.ndarray) -> np.ndarray:
    if node.op == "Conv":
        return y.mean(axis=(0, 2, 3), dtype=np.float64)
    return y.reshape(-1, y.shape[-1]).mean(axis=0, dtype=np.float64)


def patch_groups(graph: Graph, node, x: np.ndarray, rng) -> np.ndarray:
    """The layer's input as [groups, rows, K] (K ordered like the flattened weight rows), over at
    most MAX_ROWS randomly chosen output positions (gathered directly, never materialising the
    whole im2col matrix)."""
    if node.op == "Gemm":
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] > MAX_ROWS:
            flat = flat[rng.choice(flat.shape[0], MAX_ROWS, replace=False)]
        return flat[None]
    at = node.attrs
    w = graph.tensors[node.inputs[1]].data
    cg, kh, kw = w.shape[1:]
    group = at["group"]
    x = to_nchw(node, x)
    n, c, h, wd = x.shape
    top, left, bottom, right = at["pads"]
    (sh, sw), (dh, dw) = at["strides"], at["dilations"]
    oh = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + left + right - (kw - 1) * dw - 1) // sw + 1
    rows = n * oh * ow
    budget = int(min(MAX_ROWS, max(2048, ROWS_PER_COLUMN * cg * kh * kw)))
    pick = np.sort(rng.choice(rows, budget, replace=False)) if rows > budget else np.arange(rows)
    b, rest = np.divmod(pick, oh * ow)
    y, xx = np.divmod(rest, ow)
    taps = np.empty((len(pick), c, kh, kw), np.float32 if x.dtype == np.float32 else np.float64)
    for i in range(kh):
        iy = y * sh + i * dh - top
        for j in range(kw):
            ix = xx * sw + j * dw - left
            inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < wd)      # padding reads as 0
            # [rows, C] gathered straight from NCHW (no transposed copy of the whole input)
            taps[:, :, i, j] = x[b, :, np.clip(iy, 0, h - 1), np.clip(ix, 0, wd - 1)] * inside[:, None]
    return np.ascontiguousarray(taps.reshape(len(pick), group, cg * kh * kw).transpose(1, 0, 2))


def layer_output_mse(graph: Graph, node, original: Graph, x_new, x_old, cache: dict) -> float:
    """Mean squared difference of the layer's pre-activation output from the input model's, on
    the first REPORT_SAMPLES calibration samples (the number the report shows). ``cache`` keeps
    the input model's outputs between calls, and the last answer per layer (returned again while
    the layer's weights, bias and input are the same objects/values)."""
    from mrq.passes.bias_grids import real_bias
    y_old = cache.get(("layer_output", node.name))
    if y_old is None:
        old_node = original.node(node.name)
        y_old = pre_activation(original, old_node, x_old[:REPORT_SAMPLES], real_weights(original, old_node),
                               real_bias(original, old_node))
        # a layer whose output activation_offsets shifted should reproduce the shifted values
        y_old = y_old - np.asarray(node.attrs.get("output_offset", 0.0), y_old.dtype)
        cache[("layer_output", node.name)] = y_old
    b_now = np.asarray(node.attrs.get("bias_real", real_bias(graph, node)), np.float64)
    w_t = graph.tensors[node.inputs[1]]
    last = cache.get(("layer_mse", node.name))
    if last is not None and last[0]() is x_new and last[1] is w_t.data and last[2] is w_t.qparams:
        # Same input and weights: only the bias may differ, which shifts each channel's error by
        # a constant d, so E[(e + d)^2] = E[e^2] + 2 d E[e] + d^2 per channel.
        d = b_now - last[3]
        return float(np.mean(last[5] + d * (2.0 * last[4] + d)))
    y_new = pre_activation(graph, node, x_new[:REPORT_SAMPLES], real_weights(graph, node), b_now)
    err = y_new.astype(np.float64) - y_old
    axes = (0, 2, 3) if node.op == "Conv" else tuple(range(err.ndim - 1))
    m1 = err.mean(axis=axes)
    m2 = np.square(err).mean(axis=axes)
    cache[("layer_mse", node.name)] = (weakref.ref(x_new), w_t.data, w_t.qparams, b_now.copy(), m1, m2)
    return float(np.mean(m2))


def sweep(graph: Graph, ctx, on_layer) -> dict:
    """Run the new graph (fake-quantized) on the calibration data; before each Conv/Gemm call
    ``on_layer(node, x_new, x_old)`` which may change that layer's constants in ``graph``."""
    original = ctx.original_env()

    def hook(node, env):
        if node.op in ("Conv", "Gemm") and not node.attrs.get("integer_output"):
            on_layer(node, env[node.inputs[0]], original[node.inputs[0]])

    from mrq.passes.base import CALIB_DTYPE
    return FloatReference(graph, fake_quant=True, dtype=CALIB_DTYPE).run(ctx.new_graph_feeds(graph), before_node=hook,
                                                                         keep=set())


def run_layer_hooks(graph: Graph, ctx, hooks) -> Graph:
    """One calibration sweep applying several per-layer passes in order at each layer (so each
    layer sees inputs that every upstream layer's passes already corrected). ``hooks`` are
    ``hook(graph, ctx) -> on_layer | None``."""
    steps = [h(graph, ctx) for h in hooks]
    steps = [s for s in steps if s is not None]
    if not steps:
        return graph

    def on_layer(node, x_new, x_old):
        for step in steps:
            step(node, x_new, x_old)

    sweep(graph, ctx, on_layer)
    return graph
