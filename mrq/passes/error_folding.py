"""error_folding: fold the expected output shift caused by re-quantization into the bias.

Re-quantized weights and activations change each layer's mean output by
``E[W_new x_new] - E[W_old x_old] = E[dW x] + W_new E[dx]``. With calibration data this pass
measures it per output channel, with the new model's own (already corrected) inputs, and
subtracts it from the bias (layer by layer, so each layer sees the upstream corrections).

Without calibration data (data-free variant) only the part that the grids alone determine is
folded: ``W_new E[dx]``, where ``E[dx]`` is the mean error of mapping every code of the old input
grid (within its clamp range) onto the new grid. ``E[dW x]`` needs the input mean, which only
data gives, so it is left out.

Layers that weight_correction rounded to an input-error target (inputs on grids narrower than 8
bits, :mod:`mrq.passes.input_error_target`) get no folded constant. That least-squares refit
already models the input error as a gain per input, which puts the correction where the error
is (on the clipped peaks and on the small activations rounded to zero after a ReLU); a constant
folded on top moves every output position to pay for those, and although it lowers each layer's
own pre-activation error it makes the network output worse. Measured on the QAT MobileNetV2
under nna-w4a4 (``bench/requant_lowbit.py``, 2,000 test images, 10,000 in brackets): folding
the whole mean shift 87.95% (87.41%), only the weights' rounding error relative to the refit
target 88.30% (87.52%), half the shift 88.40%, per channel the bias minimising the clamped and
rounded output tensor's error 87.85%, the mean over the clamp's active region only 87.65%,
nothing 88.70% (87.98%). Every layer the refit does not touch (all layers of 8-bit profiles,
whose results are unchanged) is folded as before.
"""
from __future__ import annotations

import numpy as np

from mrq.float_ref import _grid_round
from mrq.grids import real_range
from mrq.passes.bias_grids import real_bias, set_bias
from mrq.passes.layer_data import (
    layer_output_mse,
    mean_patch,
    real_weights,
    run_layer_hooks,
    weight_rows,
)


def error_folding(graph, ctx):
    if ctx.calib is None:
        return _data_free(graph, ctx)
    return run_layer_hooks(graph, ctx, [error_folding_hook])


def error_folding_hook(graph, ctx):
    """The per-layer step of this pass, for a calibration sweep (None without calibration data)."""
    if ctx.calib is None:
        return None
    original = ctx.original
    errors = ctx.report.layer_errors.setdefault("error_folding", {})

    def on_layer(node, x_new, x_old):
        if node.name in ctx.cache.get("refitted_layers", ()):
            return
        old_node = original.node(node.name)
        before = layer_output_mse(graph, node, original, x_new, x_old, ctx.cache)
        # The layer is linear, so its mean output is W . (mean input patch) + b: no convolution.
        w_old = weight_rows(original, old_node)
        w_new = weight_rows(graph, node)
        mean_old = np.sum(w_old * mean_patch(original, old_node, x_old), axis=1) + real_bias(original, old_node)
        mean_old = mean_old - node.attrs.get("output_offset", 0.0)    # see activation_offsets
        b_now = node.attrs.get("bias_real", real_bias(graph, node))
        mean_new = np.sum(w_new * mean_patch(graph, node, x_new), axis=1) + b_now
        saturated = set_bias(graph, node, b_now + (mean_old - mean_new), ctx.profile)
        if saturated:
            ctx.report.bias_saturated[node.name] = ctx.report.bias_saturated.get(node.name, 0) + saturated
        errors[node.name] = (before, layer_output_mse(graph, node, original, x_new, x_old, ctx.cache))

    return on_layer


def _data_free(graph, ctx):
    original = ctx.original
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm") or node.attrs.get("integer_output"):
            continue
        # an input that float_inputs re-gridded is its renamed codes tensor here
        old_qp = original.tensors[ctx.renamed.get(node.inputs[0], node.inputs[0])].qparams
        new_qp = graph.tensors[node.inputs[0]].qparams
        if old_qp.same_grid(new_qp):
            continue
        lo, hi = (float(v[0]) for v in real_range(old_qp))
        codes = np.arange(old_qp.qmin, old_qp.qmax + 1, dtype=np.float64)
        real = (codes - old_qp.zero_point[0]) * np.float64(old_qp.scale[0])
        real = real[(real >= lo) & (real <= hi)]
        mean_dx = float(np.mean(_grid_round(real, new_qp) - real))
        w = real_weights(graph, node)
        per_channel = w.reshape(w.shape[0], -1).sum(axis=1) if node.op == "Conv" else w.sum(axis=0)
        b_now = node.attrs.get("bias_real", real_bias(graph, node))
        saturated = set_bias(graph, node, b_now - mean_dx * per_channel, ctx.profile)
        if saturated:
            ctx.report.bias_saturated[node.name] = ctx.report.bias_saturated.get(node.name, 0) + saturated
    ctx.report.notes.append("error_folding ran data-free (no --calib): folded W*E[dx] from the grids only")
    return graph
