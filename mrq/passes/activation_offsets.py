"""activation_offsets: a ReLU output on a signed symmetric grid of fewer than 8 bits uses only its
non-negative codes (0..7 of -8..7: 3 bits); shift it by a constant so that it uses all of them,
and undo the shift in the consumers' biases.

For a layer ``y = clamp(W x + b, 0, hi)`` whose output is read only by Conv (no padding) and Gemm
layers, with ``c = 2**(bits-1) * s'`` on a grid of scale ``s'``:

    y' = clamp(W x + (b - c), -c, hi - c) = y - c          (codes -8..7 cover y in [0, 15 s'])
    consumer:  V y + d = V y' + (d + V 1 c)                 (exact in real arithmetic)

so the network computes the same function with twice the resolution on that tensor (the clip
the scale selection chose is kept: ``15 s' = 7 s``). Padding would read the padded zero as
``y = c``, so convolutions with padding are not eligible; nor are tensors other ops read (a
residual Add would need the offset too). The offset of each shifted tensor is recorded in
``ctx.cache['activation_offsets']`` (tensor -> c) and on its producer as
``attrs['output_offset']``, so the calibration passes compare with the input model's values
shifted the same way. Needs calibration data (the data-free error folding measures input shifts
from the grids alone and would fold the offset a second time).
"""
from __future__ import annotations

import numpy as np

from mrq.grids import describe
from mrq.ir import Graph, QParams
from mrq.passes.bias_grids import real_bias, set_bias
from mrq.passes.layer_data import real_weights, run_layer_hooks


def _bias_codes(graph: Graph, node, real: np.ndarray) -> None:
    """Put ``real`` into the node's bias tensor on its current grid (bias_grids re-grids it)."""
    t = graph.tensors[node.inputs[2]]
    if t.qparams is None:
        t.data = np.asarray(real, np.float32).reshape(np.shape(t.data))
        return
    scale = np.broadcast_to(t.qparams.scale.astype(np.float64), real.shape)
    codes = np.rint(real / scale) + np.broadcast_to(t.qparams.zero_point, real.shape)
    t.data = codes.astype(np.int64).reshape(np.shape(t.data))


def _eligible(graph: Graph, name: str, shared: set) -> tuple | None:
    t = graph.tensors[name]
    qp = t.qparams
    if qp is None or t.data is not None or name in graph.outputs or name in shared or qp.per_channel:
        return None
    if qp.bits is None or qp.bits > 7 or not qp.dtype.startswith("int") or int(qp.zero_point[0]) != 0 \
            or qp.narrow_range:
        return None
    prod = graph.producer(name)
    if prod is None or prod.op not in ("Conv", "Gemm") or len(prod.inputs) < 3 or prod.attrs.get("integer_output"):
        return None
    clamp = prod.attrs.get("clamp")
    if clamp is None or clamp[0] is None or clamp[0] != 0.0:
        return None
    consumers = graph.consumers(name)
    if not consumers:
        return None
    for c in consumers:
        if c.op not in ("Conv", "Gemm") or c.inputs[0] != name or len(c.inputs) < 3 or c.attrs.get("integer_output"):
            return None
        if c.op == "Conv" and any(int(p) != 0 for p in c.attrs.get("pads", (0, 0, 0, 0))):
            return None
    return prod, consumers


def _shared_grid_tensors(graph: Graph, ctx) -> set:
    shared = {n.outputs[0] for n in graph.nodes if n.op in ctx.profile.ops.shared_grid}
    return shared | {i for n in graph.nodes if n.op in ctx.profile.ops.shared_grid for i in n.inputs}


def eligible_tensors(graph: Graph, ctx) -> set:
    """The tensors this pass would shift (scale_search evaluates them on their shifted grid)."""
    shared = _shared_grid_tensors(graph, ctx)
    return {name for name in graph.tensors if _eligible(graph, name, shared) is not None}


def activation_offsets(graph: Graph, ctx) -> Graph:
    if ctx.calib is None:
        return graph
    offsets = ctx.cache.setdefault("activation_offsets", {})
    shared = _shared_grid_tensors(graph, ctx)
    for name in list(graph.tensors):
        found = _eligible(graph, name, shared)
        if found is None:
            continue
        prod, consumers = found
        qp = graph.tensors[name].qparams
        half = 1 << (qp.bits - 1)
        # keep the selected clip: the top code's real value 7 s becomes that of code 7 + 8
        scale = np.float32(float(qp.scale[0]) * (half - 1) / (2 * half - 1))
        offset = float(half * np.float64(scale))
        new = QParams(np.array([scale], np.float32), np.zeros(1, np.int64), qp.dtype, narrow_range=False,
                      bits=qp.bits)
        graph.tensors[name].qparams = new
        lo, hi = prod.attrs["clamp"]
        prod.attrs["clamp"] = (lo - offset, None if hi is None else hi - offset)
        prod.attrs["output_offset"] = offset
        _bias_codes(graph, prod, real_bias(graph, prod) - offset)
        for c in consumers:
            w = real_weights(graph, c)
            per_out = w.reshape(w.shape[0], -1).sum(axis=1) if c.op == "Conv" else w.sum(axis=0)
            _bias_codes(graph, c, real_bias(graph, c) + per_out * offset)
        offsets[name] = offset
        ctx.report.change(name, "activations", describe(qp), describe(new), False, "activation_offsets",
                          f"offset by {offset:.4g} (producer bias and clamp), undone in "
                          f"{len(consumers)} consumer bias(es): all {2 * half} codes used")
    return graph


def offset_bias(graph: Graph, ctx) -> Graph:
    return run_layer_hooks(graph, ctx, [offset_bias_hook])


def offset_bias_hook(graph: Graph, ctx):
    """The consumers' share ``V 1 c`` with their final weights: activation_offsets added it with
    the input model's weights (before weight_grids and weight_correction rounded them), which
    leaves ``(V_new - V) 1 c`` per output channel; this step adds that, before error_folding
    measures what is left. None when nothing was shifted."""
    offsets = ctx.cache.get("activation_offsets")
    if not offsets:
        return None

    def on_layer(node, x_new, x_old):
        offset = offsets.get(node.inputs[0])
        if not offset:
            return
        w_now = real_weights(graph, node)
        w_then = real_weights(ctx.original, ctx.original.node(node.name))
        diff = w_now - w_then
        per_out = diff.reshape(diff.shape[0], -1).sum(axis=1) if node.op == "Conv" else diff.sum(axis=0)
        b_now = node.attrs.get("bias_real", real_bias(graph, node))
        set_bias(graph, node, b_now + per_out * offset, ctx.profile)

    return on_layer
