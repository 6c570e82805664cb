"""weight_grids: re-grid Conv/Gemm weights that break the profile (bits, symmetry, granularity,
scale form), with round-to-nearest codes (the naive baseline; weight_correction refines them).

- Lossless first: uint8 weights with zero point 128 are int8 symmetric weights shifted by 128.
- Scale selection (when enabled): per output channel, the clipping factor (and, for power-of-two
  scales, the neighbouring power) that minimises the channel's output error proxy
  ``sum_k E[x_k^2] (w_k - q(w_k))^2``, with ``E[x_k^2]`` from the calibration inputs (or 1
  without data). Without it, the scale is the smallest one that covers the channel's range.
"""
from __future__ import annotations

import numpy as np

from mrq.grids import describe, grid_for_range
from mrq.ir import Graph, QParams
from mrq.mixed_precision import LayerFormats
from mrq.passes.activation_grids import CLIP_FACTORS, signedness_flip

ENERGY_SAMPLES = 64   # calibration images used for the per-column input energy


# ops whose weights are [M, C, KH, KW] with output channels on axis 0
_CHANNELS_FIRST = ("Conv", "TransposeConv")


def weight_layout(node, w: np.ndarray) -> tuple[int, np.ndarray]:
    """(channel axis, weights as [channels, K]) for a Conv ([M, C/g, KH, KW]), a TransposeConv
    ([M, C, KH, KW]) or a Gemm ([K, N])."""
    if node.op in _CHANNELS_FIRST:
        return 0, w.reshape(w.shape[0], -1)
    return 1, w.T


def input_energy(node, graph: Graph, ctx, k: int) -> np.ndarray | None:
    """E[x_k^2] per weight column k (over the calibration inputs of the input model)."""
    if ctx.calib is None or node.op == "TransposeConv":
        return None   # a transposed conv's taps see the input unevenly: no per-column energy
    cache = ctx.cache.setdefault("input_energy", {})
    if node.name in cache:
        return cache[node.name]
    x = ctx.original_env()[node.inputs[0]][:ENERGY_SAMPLES]
    if node.op == "Conv":
        layout = node.attrs.get("layout", "NCHW")
        if layout == "NHWC":
            x = x.transpose(0, 3, 1, 2)
        w = graph.tensors[node.inputs[1]].data
        cg, kh, kw = w.shape[1:]
        group = node.attrs["group"]
        m = w.shape[0]
        from mrq.float_ref import _windows
        # Average x^2 over the batch first, then each tap is a strided view of that map (padding
        # counts as 0): the same mean over (batch, output positions) as squaring every window.
        sq_map = np.mean(np.square(x, dtype=np.float64), axis=0)[None]     # [1, C, H, W]
        win = _windows(sq_map, (kh, kw), node.attrs["strides"], node.attrs["pads"], node.attrs["dilations"], False, 0.0)
        sq = np.mean(win, axis=(0, 2, 3))                         # [C, KH, KW]
        mg = m // group
        energy = np.concatenate([np.repeat(sq[g * cg:(g + 1) * cg].reshape(1, -1), mg, axis=0)
                                 for g in range(group)], axis=0)  # [M, cg*KH*KW]
    else:
        flat = x.reshape(-1, x.shape[-1])
        energy = np.broadcast_to(np.mean(np.square(flat, dtype=np.float64), axis=0), (graph.tensors[node.inputs[1]].data.shape[1], k)).copy()
    cache[node.name] = energy
    return energy


def weight_grids(graph: Graph, ctx) -> Graph:
    formats = LayerFormats.of(graph, ctx.profile)
    select = ctx.options.scale_selection
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm", "TransposeConv") or node.attrs.get("integer_output"):
            continue
        profile = formats.for_node(node.name)     # the layer's own weight format
        fmt = profile.weights
        t = graph.tensors[node.inputs[1]]
        qp = t.qparams
        codes = np.asarray(t.data)
        if not profile.check_tensor("weights", qp.dtype, qp.scale, qp.zero_point, qp.axis, values=codes):
            continue
        flipped = signedness_flip(qp, fmt)
        if flipped is not None and not profile.check_tensor(
                "weights", flipped.dtype, flipped.scale, flipped.zero_point, flipped.axis,
                values=codes + (flipped.zero_point[0] - qp.zero_point[0])):
            shift = int(flipped.zero_point.flat[0] - qp.zero_point.flat[0])
            t.data = (codes.astype(np.int64) + shift).astype(flipped.dtype)
            t.qparams, t.dtype = flipped, flipped.dtype
            ctx.report.change(t.name, "weights", describe(qp), describe(flipped), True, "weight_grids",
                              "code shift by 2**(bits-1)")
            continue
        real = qp.dequantize(codes)
        axis, rows = weight_layout(node, real)                  # rows: [channels, K]
        per_channel = fmt.granularity == "per_channel"
        if per_channel:
            lo, hi = rows.min(axis=1), rows.max(axis=1)
        else:
            lo, hi = np.array([rows.min()]), np.array([rows.max()])
        energy = input_energy(node, graph, ctx, rows.shape[1]) if select else None
        new = _select(rows, lo, hi, fmt, axis if per_channel else None, energy, select)
        qcodes = _round_rows(rows, new)
        t.data = _restore_layout(node, qcodes, real.shape).astype(new.dtype)
        t.qparams, t.dtype = new, new.dtype
        ctx.report.change(t.name, "weights", describe(qp), describe(new), False, "weight_grids",
                          "scale selected per channel" if select else "round to nearest")
    return graph


def _round_rows(rows: np.ndarray, qp: QParams) -> np.ndarray:
    s = np.broadcast_to(qp.scale.astype(np.float64), (rows.shape[0],))[:, None]
    z = np.broadcast_to(qp.zero_point, (rows.shape[0],))[:, None]
    return np.clip(np.rint(rows / s) + z, qp.qmin, qp.qmax).astype(np.int64)


def _restore_layout(node, codes_rows: np.ndarray, shape) -> np.ndarray:
    if node.op in _CHANNELS_FIRST:
        return codes_rows.reshape(shape)
    return np.ascontiguousarray(codes_rows.T)


def _select(rows, lo, hi, fmt, axis, energy, select) -> QParams:
    """Per channel, the candidate grid with the smallest weighted rounding error."""
    base = grid_for_range(lo, hi, fmt, axis=axis, direction="up")
    if not select:
        return base
    weight = energy if energy is not None else np.ones_like(rows)
    directions = ("up", "down") if fmt.scale.form != "float" else ("up",)
    best_err = None
    best_scale, best_zp = base.scale.copy(), base.zero_point.copy()
    for factor in CLIP_FACTORS:
        for d in directions:
            cand = grid_for_range(lo, hi, fmt, axis=axis, scale_multiplier=factor, direction=d)
            q = _round_rows(rows, cand)
            s = np.broadcast_to(cand.scale.astype(np.float64), (rows.shape[0],))[:, None]
            z = np.broadcast_to(cand.zero_point, (rows.shape[0],))[:, None]
            err = np.sum(weight * np.square((q - z) * s - rows), axis=1)
            if axis is None:
                err = np.full(rows.shape[0], err.sum())
            if best_err is None:
                best_err = err
                continue
            better = err < best_err
            best_err = np.where(better, err, best_err)
            if axis is None:
                if better[0]:
                    best_scale, best_zp = cand.scale.copy(), cand.zero_point.copy()
            else:
                best_scale = np.where(better, cand.scale, best_scale)
                best_zp = np.where(better, cand.zero_point, best_zp)
    return QParams(best_scale.astype(np.float32), best_zp, base.dtype, axis=base.axis,
                   narrow_range=base.narrow_range, bits=base.bits)
