"""weight_correction: choose each layer's integer weights to minimise that layer's output error
on calibration activations, instead of rounding each weight to nearest.

Sequential rounding with error feedback (the optimal-brain-quantization / GPTQ scheme): with
``H = E[x x^T]`` the second moment of the layer's inputs *as the re-quantized model produces
them*, the weights of a channel are rounded one input column at a time (largest ``H_kk`` first)
and each rounding error is pushed onto the not-yet-rounded columns along ``H^-1``, which
minimises ``E[((w_q - w_target) . x)^2]`` far better than independent rounding. The grid (scale,
zero point, code range) is the one weight_grids chose; only the codes change. Layers whose
weights kept their grid are left alone. Needs calibration data.
"""
from __future__ import annotations

import numpy as np

from mrq.passes.input_error_target import refit_rows
from mrq.passes.layer_data import (
    layer_output_mse,
    patch_groups,
    real_weights,
    run_layer_hooks,
)

DAMPING = 0.01   # fraction of mean(diag(H)) added to the diagonal, for a well-conditioned inverse


def gptq_round(target: np.ndarray, hessian: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
               qmin: int, qmax: int, budget=None) -> np.ndarray:
    """Integer codes for ``target`` [G, M, K] (real weights per group) given ``hessian`` [G, K, K]
    and per-row grids ``scale``/``zero_point`` [G, M]. Returns codes [G, M, K].

    ``budget``: ``(x_lo, x_hi, bias, acc_lo, acc_hi)`` (the last three [G, M] codes): every code
    is shrunk toward the zero point as far as needed for the static partial-sum bound
    (:func:`mrq.accumulators.bound_from_sums`, zero-point-free inputs in ``[x_lo, x_hi]``) of the
    codes chosen so far to stay within ``[acc_lo, acc_hi]``; codes not yet chosen count as zero,
    so the finished row keeps the bound (the L1 budget of accumulator-aware rounding)."""
    g, m, k = target.shape
    h = hessian.copy()
    diag = np.einsum("gkk->gk", h)
    dead = diag <= 0
    h[:, np.arange(k), np.arange(k)] += np.where(dead, 1.0, 0.0)
    diag = np.einsum("gkk->gk", h)
    damp = DAMPING * diag.mean(axis=1, keepdims=True)
    h[:, np.arange(k), np.arange(k)] += damp
    order = np.argsort(-diag, axis=1, kind="stable")          # act order: big inputs first
    inv_order = np.argsort(order, axis=1)
    h = np.take_along_axis(np.take_along_axis(h, order[:, :, None], 1), order[:, None, :], 2)
    w = np.take_along_axis(target, order[:, None, :], 2).copy()
    hinv = np.linalg.inv(h)
    hinv = (hinv + np.swapaxes(hinv, 1, 2)) / 2
    upper = np.swapaxes(np.linalg.cholesky(hinv), 1, 2)       # hinv = upper^T upper
    codes = np.empty((g, m, k), np.int64)
    s = scale.astype(np.float64)
    z = zero_point.astype(np.float64)
    if budget is not None:
        x_lo, x_hi, b_codes, acc_lo, acc_hi = budget
        a, b = float(min(x_lo, 0)), float(max(x_hi, 0))
        b_codes, acc_lo, acc_hi = (np.asarray(v, np.float64) for v in (b_codes, acc_lo, acc_hi))
        pos = np.zeros((g, m))
        neg = np.zeros((g, m))
    for i in range(k):
        col = w[:, :, i]
        q = np.clip(np.rint(col / s) + z, qmin, qmax)
        if budget is not None:
            # room left above (hi side) and below (lo side) by the codes chosen so far
            up = acc_hi - (b_codes + b * pos + a * neg)
            down = (b_codes + a * pos + b * neg) - acc_lo
            v = q - z
            v_max = np.minimum(np.floor(up / b) if b > 0 else np.inf, np.floor(down / -a) if a < 0 else np.inf)
            v_min = np.maximum(np.ceil(up / a) if a < 0 else -np.inf, np.ceil(-down / b) if b > 0 else -np.inf)
            v = np.clip(v, np.minimum(v_min, 0), np.maximum(v_max, 0))
            q = v + z
            pos += np.maximum(v, 0)
            neg += np.minimum(v, 0)
        codes[:, :, i] = q
        err = (col - (q - z) * s) / upper[:, i, i][:, None]
        if i + 1 < k:
            w[:, :, i + 1:] -= err[:, :, None] * upper[:, None, i, i + 1:]
    return np.take_along_axis(codes, inv_order[:, None, :], 2)


def weight_correction(graph, ctx):
    return run_layer_hooks(graph, ctx, [weight_correction_hook])


def weight_correction_hook(graph, ctx):
    """The per-layer step of this pass, for a calibration sweep (None without calibration data)."""
    if ctx.calib is None:
        ctx.report.notes.append("weight_correction skipped: it needs calibration data (--calib)")
        return None
    changed = {c.tensor for c in ctx.report.changes if c.role == "weights" and not c.lossless}
    original = ctx.original
    rng = np.random.default_rng(0)
    errors = ctx.report.layer_errors.setdefault("weight_correction", {})
    refitted = ctx.cache.setdefault("refitted_layers", set())   # layers rounded to an input-error target

    def on_layer(node, x_new, x_old):
        w_name = node.inputs[1]
        budget = node.attrs.get("acc_budget")    # set by accumulator_budget earlier in this sweep
        if w_name not in changed and (budget is None or not budget.regridded):
            return
        target_w = real_weights(original, original.node(node.name))
        before = layer_output_mse(graph, node, original, x_new, x_old, ctx.cache)
        t = graph.tensors[w_name]
        qp = t.qparams
        rng_state = rng.bit_generator.state
        x = patch_groups(graph, node, x_new, rng)                  # [G, rows, K]
        # Second moments in the sweep's precision (float32: ~1e-6 relative, far below the 1%
        # damping), then float64 for the inverse and the Cholesky factor.
        if x.shape[0] == 1:     # X^T X of one matrix: BLAS syrk (half the work of a general product)
            hessian = (x[0].T @ x[0])[None].astype(np.float64) / x.shape[1]
        else:
            hessian = np.matmul(x.transpose(0, 2, 1), x).astype(np.float64) / x.shape[1]
        n_out = t.data.shape[0 if node.op == "Conv" else 1]
        group = node.attrs["group"] if node.op == "Conv" else 1
        limits = None
        if budget is not None:
            bias = np.broadcast_to(np.asarray(graph.tensors[node.inputs[2]].data, np.int64).reshape(-1), (n_out,)) \
                if len(node.inputs) > 2 else np.zeros(n_out, np.int64)
            limits = (budget.x_lo, budget.x_hi) + tuple(v.reshape(group, n_out // group)
                                                        for v in (bias, budget.acc_lo, budget.acc_hi))
        if node.op == "Conv":
            m = t.data.shape[0]
            target_rows = target_w.reshape(group, m // group, -1)
            rows = refit_rows(ctx, graph, node, x, x_old, rng_state, target_rows, hessian)
            scale = np.broadcast_to(qp.scale, (m,)).reshape(group, m // group)
            zp = np.broadcast_to(qp.zero_point, (m,)).reshape(group, m // group)
            codes = gptq_round(rows, hessian, scale, zp, qp.qmin, qp.qmax, limits).reshape(t.data.shape)
        else:
            n = t.data.shape[1]
            target_rows = target_w.T[None]
            rows = refit_rows(ctx, graph, node, x, x_old, rng_state, target_rows, hessian)
            scale = np.broadcast_to(qp.scale, (n,))[None]
            zp = np.broadcast_to(qp.zero_point, (n,))[None]
            codes = np.ascontiguousarray(gptq_round(rows, hessian, scale, zp, qp.qmin, qp.qmax, limits)[0].T)
        if rows is not target_rows:     # error_folding leaves these layers alone (see there)
            refitted.add(node.name)
        old_codes = t.data
        t.data = codes.astype(t.data.dtype)
        after = layer_output_mse(graph, node, original, x_new, x_old, ctx.cache)
        if after > before:   # never make a layer worse than rounding to nearest
            t.data = old_codes
            after = before
        errors[node.name] = (before, after)

    return on_layer
