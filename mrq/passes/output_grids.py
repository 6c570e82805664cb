"""output_grids: the grid of a classifier's scores, chosen by what the scores are for.

On a 4-bit grid the scores of a classifier take 16 values, and the largest two often land on
the same code: the hardware's argmax then returns the first of them. Measured on the QAT
MobileNetV2 under nna-w4a4 (2,000 test images): 8.7% of the images had a tie at the top, and
breaking those ties right would have given 92.9% instead of 88.7%. The scale selection of
activation_grids minimises the scores' mean squared error, which counts every class alike and
so spends codes on the low scores that never decide anything; a finer grid that clips the low
(and the highest) scores has fewer ties at the top.

This pass re-chooses the grid of a network output that holds class scores (a 2-D
``[batch, classes]`` tensor written by a Conv/Gemm layer, read by nothing but the model's
output) among the scale-selection candidates, by the rate at which the argmax of the rounded
scores agrees with the input model's on the calibration data (a tie counts as the fraction of
the tied classes that are right: a smooth version of the hardware's first-index rule); the
mean squared error decides between equal rates. Then each class's bias may move by up to half
a code (:func:`class_bias_shifts`) where that makes the hardware's argmax (first of tied maxima)
agree with the input model on more calibration samples: which class wins a tie is decided by
which score rounds up. It runs in the calibration sweep after the layer's weights and bias are
final. Measured on the QAT MobileNetV2 under nna-w4a4 (first 2,000 test images): 88.70% with
the MSE grid, 89.15% with the agreement grid, 89.40% with the class bias shifts too. Grids of 8 bits or more keep the MSE choice (ties there
are rare, and 8-bit results stay as they were).
"""
from __future__ import annotations

import numpy as np

from mrq.grids import describe
from mrq.passes.activation_grids import _class_range, candidate_grids
from mrq.passes.bias_grids import bias_scale, real_bias, set_bias
from mrq.passes.layer_data import pre_activation, real_weights, run_layer_hooks

MAX_BITS = 7
BIAS_STEPS = 4      # class bias shifts in steps of 1/8 code, up to half a code either way
BIAS_ROUNDS = 2
MIN_GAIN = 1        # a shift must make this many more calibration samples agree (beyond one)


def output_grids(graph, ctx):
    return run_layer_hooks(graph, ctx, [output_grids_hook])


def score_tensor(graph, node) -> str | None:
    """The layer's output tensor if it holds class scores the model returns: written by a
    Conv/Gemm, per-tensor grid below 8 bits, read only by the model's outputs (directly or
    through a Dequantize)."""
    if node.op not in ("Conv", "Gemm") or node.attrs.get("integer_output"):
        return None
    name = node.outputs[0]
    qp = graph.tensors[name].qparams
    if qp is None or qp.per_channel or qp.bits is None or qp.bits > MAX_BITS:
        return None
    consumers = graph.consumers(name)
    if name not in graph.outputs and not consumers:
        return None
    if any(c.op != "Dequantize" or c.outputs[0] not in graph.outputs for c in consumers):
        return None
    return name


def top1_agreement(scores: np.ndarray, reference_top: np.ndarray) -> float:
    """Mean over rows of (reference class among the rows' maxima) / (number of maxima)."""
    top = scores == scores.max(axis=1, keepdims=True)
    hit = top[np.arange(len(scores)), reference_top]
    return float(np.mean(hit / top.sum(axis=1)))


def class_bias_shifts(y: np.ndarray, grid, reference_top: np.ndarray, clamp=(None, None)) -> np.ndarray:
    """Per class, a bias shift of at most half a code (coordinate descent, BIAS_ROUNDS sweeps over
    the classes) that raises the rate at which the hardware's argmax of the rounded scores (the
    first of tied maxima) agrees with ``reference_top``. Ties among the scores are where the
    4-bit grid loses most, and which class wins one is decided by which score rounds up: a
    fraction of a code on one class's bias moves those decisions. Zero where nothing helps.
    ``y``: the scores before the layer's ``clamp`` (which applies after the bias)."""
    s, z = np.float64(grid.scale[0]), np.float64(grid.zero_point[0])
    n_classes = y.shape[1]
    steps = np.arange(-BIAS_STEPS, BIAS_STEPS + 1) * (s / (2 * BIAS_STEPS))
    shifts = np.zeros(n_classes)
    lo, hi = (-np.inf if clamp[0] is None else clamp[0]), (np.inf if clamp[1] is None else clamp[1])

    def agreement(sh):
        codes = np.clip(np.rint(np.clip(y + sh, lo, hi) / s) + z, grid.qmin, grid.qmax)
        return int(np.count_nonzero(codes.argmax(axis=1) == reference_top))

    best = agreement(shifts)
    for _ in range(BIAS_ROUNDS):
        moved = False
        for c in range(n_classes):
            for d in steps[np.argsort(np.abs(steps), kind="stable")]:
                trial = shifts.copy()
                trial[c] = d
                # strictly more agreeing samples (a shift that only trades one sample for
                # another is noise of the calibration set)
                score = agreement(trial)
                if score > best + MIN_GAIN:
                    best, shifts, moved = score, trial, True
        if not moved:
            break
    return shifts


def output_grids_hook(graph, ctx):
    """The per-layer step of this pass, for a calibration sweep (None without calibration data)."""
    if ctx.calib is None:
        return None
    from mrq import multipliers
    from mrq.lower import arithmetic_from_profile
    from mrq.mixed_precision import LayerFormats
    formats = LayerFormats.of(graph, ctx.profile)
    arith = arithmetic_from_profile(ctx.profile)
    # a finer output grid raises the layer's requantization multiplier: keep it representable
    # (multiplier_limits ran before this pass)
    largest = (multipliers.largest_multiplier(arith.requant, arith.multiplier_bits or 31, arith.shift_min)
               if arith.requant in ("fixed_point", "double_q31", "shift") else np.inf)

    def on_layer(node, x_new, x_old):
        name = score_tensor(graph, node)
        if name is None:
            return
        reference = ctx.original_env().get(name)
        if reference is None:
            return
        reference = np.asarray(reference, np.float64)
        if reference.ndim != 2 or reference.shape[1] < 2:
            return
        qp = graph.tensors[name].qparams
        y = pre_activation(graph, node, x_new, real_weights(graph, node),
                           node.attrs.get("bias_real", real_bias(graph, node))).astype(np.float64)
        y = y.reshape(reference.shape)
        clamp = node.attrs.get("clamp") or (None, None)
        y_clamped = np.clip(y, -np.inf if clamp[0] is None else clamp[0], np.inf if clamp[1] is None else clamp[1])
        r_lo, r_hi = _class_range(graph, [name])
        top_ratio = float(np.max(bias_scale(graph, node)))
        candidates = [qp] + [g for g in candidate_grids(r_lo, r_hi, formats.for_tensor(name).activations, True)
                             if top_ratio / float(g.scale[0]) <= largest]
        reference_top = reference.argmax(axis=1)
        best, best_key = qp, None
        for grid in candidates:
            s, z = np.float64(grid.scale[0]), np.float64(grid.zero_point[0])
            codes = np.clip(np.rint(y_clamped / s) + z, grid.qmin, grid.qmax)
            key = (-top1_agreement(codes, reference_top), float(np.mean(np.square((codes - z) * s - reference))))
            if best_key is None or key < best_key:
                best, best_key = grid, key
        shifts = class_bias_shifts(y, best, reference_top, clamp)
        if np.any(shifts):
            b_now = node.attrs.get("bias_real", real_bias(graph, node))
            saturated = set_bias(graph, node, b_now + shifts, ctx.profile)
            if saturated:
                ctx.report.bias_saturated[node.name] = ctx.report.bias_saturated.get(node.name, 0) + saturated
        if best is qp and not np.any(shifts):
            return
        graph.tensors[name].qparams = best
        graph.tensors[name].dtype = best.dtype
        ctx.report.change(name, "activations", describe(qp), describe(best), False, "output_grids",
                          f"class scores: argmax agreement with the input model {-best_key[0]:.4f} "
                          f"on the calibration data (ties shared); then {np.count_nonzero(shifts)} class "
                          f"bias(es) moved "
                          f"by up to {np.abs(shifts).max() / float(best.scale[0]):.3g} codes")

    return on_layer
