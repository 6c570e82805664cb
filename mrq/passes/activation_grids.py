"""activation_grids: move every activation tensor that breaks the profile onto a grid that
satisfies it (bits, signedness, symmetry, scale form).

- Lossless first: a grid that differs only by signedness (uint8 zero point z <-> int8 zero point
  z - 128) is re-coded exactly, and reported as lossless.
- Otherwise the new grid covers the real range the old grid represented, intersected with the
  op's explicit clamp (so a ReLU output stays non-negative). Tensors linked by Reshape/Transpose/
  MaxPool keep one grid.
- Scale selection (when enabled and calibration data is given): among candidate scales (clipping
  factors; for power-of-two scales the two neighbouring powers) the one with the smallest mean
  squared re-quantization error on the input model's calibration activations wins. Without it,
  the naive grid is the smallest one that covers the range.
"""
from __future__ import annotations

import numpy as np

from mrq.grids import describe, grid_for_range, real_range
from mrq.ir import Graph, QParams, storage_dtype
from mrq.passes.grid_classes import grid_classes, members

CLIP_FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)
# Below 8 bits the rounding error of a covering grid dominates the clipping error much longer:
# the best clip of a 4-bit ReLU output is typically 0.3-0.5 of its range.
LOW_BIT_CLIP_FACTORS = (0.45, 0.4, 0.35, 0.3, 0.25, 0.2)
MAX_SAMPLES = 200_000


def signedness_flip(qp: QParams, fmt) -> QParams | None:
    """The same grid in the other signedness (codes shifted by 2**(bits-1)), if allowed."""
    if qp.dtype not in ("int8", "uint8", "int16", "uint16"):
        return None
    half = 128 if qp.dtype.endswith("8") else 32768
    if qp.dtype.startswith("u"):
        new_dtype, shift = qp.dtype[1:], -half
    else:
        new_dtype, shift = "u" + qp.dtype, half
    if new_dtype not in fmt.dtypes():
        return None
    return QParams(qp.scale, qp.zero_point + shift, new_dtype, axis=qp.axis, narrow_range=qp.narrow_range,
                   bits=qp.bits)


def quant_mse(values: np.ndarray, qp: QParams) -> float:
    s = np.float64(qp.scale[0])
    z = np.float64(qp.zero_point[0])
    q = np.clip(np.rint(values / s) + z, qp.qmin, qp.qmax)
    return float(np.mean(np.square((q - z) * s - values)))


def quant_mses(values: np.ndarray, grids: list) -> list:
    """quant_mse of ``values`` on each per-tensor grid (one fused pass per grid)."""
    from mrq.float_kernels import quant_sq_errors
    values = np.ascontiguousarray(values, np.float64).reshape(-1)
    f = lambda attr: np.array([float(getattr(g, attr)[0]) if attr in ("scale", "zero_point") else float(getattr(g, attr))
                               for g in grids], np.float64)
    return [float(e) for e in quant_sq_errors(values, f("scale"), f("zero_point"), f("qmin"), f("qmax"))]


def candidate_grids(lo: float, hi: float, fmt, select: bool) -> list:
    if not select:
        return [grid_for_range(lo, hi, fmt, direction="up")]
    directions = ("up", "down") if fmt.scale.form != "float" else ("up",)
    out = []
    for factor in CLIP_FACTORS + (LOW_BIT_CLIP_FACTORS if fmt.bits < 8 else ()):
        for d in directions:
            out.append(grid_for_range(lo, hi, fmt, scale_multiplier=factor, direction=d))
    return out


def _class_range(graph: Graph, names: list) -> tuple[float, float]:
    lo, hi = np.inf, -np.inf
    for name in names:
        qp = graph.tensors[name].qparams
        r_lo, r_hi = (float(v[0]) for v in real_range(qp))
        prod = graph.producer(name)
        clamp = None
        if prod is not None:
            clamp = prod.attrs.get("clamp") or ((prod.attrs.get("lo"), prod.attrs.get("hi")) if prod.op == "Clamp" else None)
        if clamp is not None:
            c_lo, c_hi = clamp
            if c_lo is not None:
                r_lo = max(r_lo, c_lo)
            if c_hi is not None:
                r_hi = min(r_hi, c_hi)
        lo, hi = min(lo, r_lo), max(hi, r_hi)
    return lo, hi


def _samples(ctx, name: str, rng) -> np.ndarray | None:
    if ctx.calib is None:
        return None
    values = ctx.original_env().get(name)
    if values is None or np.size(values) == 0:
        return None
    values = np.asarray(values)
    flat = values.reshape(-1)
    if flat.size > MAX_SAMPLES:
        flat = flat[rng.integers(0, flat.size, MAX_SAMPLES)]
    return flat


def _class_samples(ctx, names: list, rng) -> np.ndarray | None:
    """Calibration values of every tensor of a grid class (one grid must serve them all)."""
    parts = [p for p in (_samples(ctx, name, rng) for name in names) if p is not None]
    if not parts:
        return None
    flat = np.concatenate(parts)
    if flat.size > MAX_SAMPLES:
        flat = flat[rng.integers(0, flat.size, MAX_SAMPLES)]
    return flat


WEIGHTED_IMAGES = 64


def _consumer_weighted_errors(graph: Graph, ctx, root: str, names: list, candidates: list):
    """Re-quantization error of each candidate grid as the consuming convolutions see it:
    sum_c ||W[:, c]||^2 * E[dx_c^2] (the output error of the consumers when errors of different
    elements are uncorrelated), so channels that the next layer amplifies count more than
    channels it ignores. ``None`` unless the class is one 4-D tensor read only by convolutions
    (then the plain MSE decides)."""
    if len(names) != 1 or ctx.calib is None:
        return None
    consumers = graph.consumers(root)
    if not consumers or any(n.op != "Conv" or n.inputs[0] != root for n in consumers):
        return None
    values = ctx.original_env().get(root)
    if values is None or np.ndim(values) != 4 or graph.tensors[root].qparams.axis is not None:
        return None
    layouts = {n.attrs.get("layout", "NCHW") for n in consumers}
    if len(layouts) != 1:
        return None
    if layouts == {"NHWC"}:  # TFLite convs: channels last
        values = np.moveaxis(np.asarray(values), 3, 1)
    channels = values.shape[1]
    weight = np.zeros(channels, np.float64)
    for node in consumers:
        w_t = graph.tensors[node.inputs[1]]
        if w_t.data is None or w_t.qparams is None:
            return None
        real = w_t.qparams.dequantize(np.asarray(w_t.data)).astype(np.float64)   # OIHW
        if real.ndim != 4:
            return None
        group = int(node.attrs.get("group", 1))
        per_in = np.square(real).sum(axis=(2, 3))                                 # [O, C/group]
        cg = real.shape[1]
        if cg * group != channels:
            return None
        og = real.shape[0] // group
        for g in range(group):
            weight[g * cg:(g + 1) * cg] += per_in[g * og:(g + 1) * og].sum(axis=0)
    from mrq.float_kernels import channel_quant_sq_errors
    x = np.ascontiguousarray(values[:WEIGHTED_IMAGES])
    per_channel = channel_quant_sq_errors(
        x, np.array([float(g.scale[0]) for g in candidates], np.float64),
        np.array([float(g.zero_point[0]) for g in candidates], np.float64),
        np.array([float(g.qmin) for g in candidates], np.float64),
        np.array([float(g.qmax) for g in candidates], np.float64))
    return [float(v) for v in per_channel @ weight]


def activation_grids(graph: Graph, ctx) -> Graph:
    from mrq.mixed_precision import LayerFormats
    formats = LayerFormats.of(graph, ctx.profile)   # each tensor: its producer layer's format
    select = ctx.options.scale_selection and ctx.calib is not None
    rng = np.random.default_rng(0)
    shared_ops = ctx.profile.ops.shared_grid
    # outputs of the ops the profile ties: their classes choose a scale on all members' values
    names_tied = {n.outputs[0] for n in graph.nodes if n.op in shared_ops}
    for root, names in members(grid_classes(graph, shared_ops)).items():
        t = graph.tensors[root]
        qp = t.qparams
        if qp.dtype in ("int32", "int64"):
            continue
        # one grid for tensors written by layers of different widths: the narrowest layer's
        # (its codes fit every wider layer's range); formats that differ in more than the width
        # have no common grid (checked below)
        profiles = [formats.for_tensor(root)] + [formats.for_tensor(n) for n in names if n != root]
        profile = min(profiles, key=lambda p: p.activations.bits)
        fmt = profile.activations
        # members may differ only where the profile ties them (ops.shared_grid)
        one_grid = all(graph.tensors[n].qparams.same_grid(qp) for n in names)
        if one_grid and _fits_all(profiles, qp):
            continue
        flipped = signedness_flip(qp, fmt) if one_grid else None
        if flipped is not None and _fits_all(profiles, flipped):
            new, lossless, note = flipped, True, "code shift by 2**(bits-1)"
        else:
            lo, hi = _class_range(graph, names)
            candidates = candidate_grids(lo, hi, fmt, select)
            new, note = candidates[0], "covers the old range"
            samples = None
            if len(candidates) > 1:
                samples = (_class_samples(ctx, names, rng) if names_tied & set(names)
                           else _samples(ctx, root, rng))
            weighted = _consumer_weighted_errors(graph, ctx, root, names, candidates) if samples is not None else None
            if weighted is not None:
                errors = weighted
                new = candidates[int(np.argmin(errors))]
                note = (f"scale selected on calibration data (consumer-weighted MSE {min(errors):.3g} vs "
                        f"{errors[0]:.3g} covering)")
            elif samples is not None:
                errors = quant_mses(samples, candidates)
                new = candidates[int(np.argmin(errors))]
                note = f"scale selected on calibration data (MSE {min(errors):.3g} vs {errors[0]:.3g} covering)"
            lossless = False
        if not _fits_all(profiles, new):
            _no_common_grid(graph, names, profiles, formats)
        for name in names:
            graph.tensors[name].qparams = new
            graph.tensors[name].dtype = new.dtype
        ctx.report.change(root, "activations", describe(qp), describe(new), lossless, "activation_grids",
                          note + (f"; shared by {len(names)} tensors" if len(names) > 1 else ""))
    _recode_constant_activations(graph, ctx)
    return graph


def _fits_all(profiles: list, qp: QParams) -> bool:
    """``qp`` satisfies the activation format of every one of ``profiles``."""
    return not any(p.check_tensor("activations", storage_dtype(qp.dtype), qp.scale, qp.zero_point,
                                  qp.axis, code_range=(qp.qmin, qp.qmax)) for p in profiles)


def _no_common_grid(graph: Graph, names: list, profiles: list, formats) -> None:
    from mrq.errors import HwProfileError
    owners = sorted({formats.node_layer.get(formats.tensor_node.get(n, ""), "?") for n in names})
    kinds = sorted({_format_words(p.activations) for p in profiles})
    profile = formats.profile
    raise HwProfileError(profile.source or profile.name, "layers",
                         f"tensors {', '.join(sorted(names)[:4])} must share one grid (tied by "
                         f"{', '.join(profile.ops.shared_grid) or 'a data-movement op'}) but their "
                         f"layers {', '.join(owners[:4])} have activation formats that no one grid "
                         f"satisfies ({'; '.join(kinds)}); give these layers the same format")


def _format_words(fmt) -> str:
    signed = {True: "signed", False: "unsigned", None: "either sign"}[fmt.signed]
    return (f"{fmt.bits}-bit {signed}{' symmetric' if fmt.symmetric else ''} "
            f"{fmt.granularity} {fmt.scale.form} scale")


def _recode_constant_activations(graph: Graph, ctx) -> None:
    """Constant operands of Add/Mul/Concat (activations by role) onto a conforming grid."""
    from mrq.mixed_precision import LayerFormats
    formats = LayerFormats.of(graph, ctx.profile)
    # TransposeConv's weights and bias are weights too (its profile lowers them as such)
    weighted = ("Conv", "Gemm", "TransposeConv")
    weights_like = {n.inputs[1] for n in graph.nodes if n.op in weighted}
    biases = {n.inputs[2] for n in graph.nodes if n.op in weighted and len(n.inputs) > 2}
    for name, t in graph.tensors.items():
        if not t.is_const or t.qparams is None or name in weights_like or name in biases:
            continue
        qp = t.qparams
        profile = formats.for_tensor(name)
        if not profile.check_tensor("activations", qp.dtype, qp.scale, qp.zero_point, qp.axis):
            continue
        real = qp.dequantize(np.asarray(t.data))
        new = grid_for_range(real.min(), real.max(), profile.activations)
        t.data = np.clip(np.rint(real / new.scale[0]) + new.zero_point[0], new.qmin, new.qmax).astype(np.int64)
        t.qparams, t.dtype = new, new.dtype
        ctx.report.change(name, "activations", describe(qp), describe(new), False, "activation_grids", "constant")
