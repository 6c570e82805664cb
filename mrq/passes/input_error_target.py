"""The weights a layer should have when its inputs are re-quantized: the least-squares fit of the
input model's output onto the new model's input.

Rounding the input model's weights ``W`` well (weight_correction) makes ``W_q x_new`` close to
``W x_new``, but the layer should reproduce ``W x_old``: on a coarse activation grid (4 bits) the
input error ``x_new - x_old`` is large and correlated with ``x`` (clipping, and a rounding error
that is not zero-mean after a ReLU), so part of it is predictable from ``x_new`` itself. The
target that removes that part is the regression of the old output on the new input,

    W* = W E[x_old x_new^T] (E[x_new x_new^T] + damping)^-1,

which weight_correction then rounds (with the same second moment). When the input grid did not
change, ``x_new == x_old`` and ``W* == W``; only inputs on grids narrower than 8 bits are refitted.
"""
from __future__ import annotations

import numpy as np

from mrq.passes.layer_data import patch_groups

DAMPING = 0.01   # fraction of mean(diag(H)) added to the diagonal (the value weight_correction uses)
# A layer whose inputs moved less than this (relative RMS of x_new - x_old) keeps its weights:
# the fit would only add the damping's bias.
MIN_INPUT_ERROR = 0.02
# Only inputs on grids narrower than this many bits are refitted. On 8-bit grids the inputs move
# by 1-15% (measured on the QAT MobileNetV2: median 6% under nna-sym8, 12% under nna-w4a8, mostly
# the upstream weights' error), the 8-bit results are already within their targets and stay
# bit-identical; on 4-bit grids they move by 6-50% (median 41% under nna-w4a4).
MAX_INPUT_BITS = 7


def input_aware_rows(original, node, x_new_patches: np.ndarray, x_old: np.ndarray, rng_state,
                     rows: np.ndarray, hessian: np.ndarray | None = None) -> np.ndarray | None:
    """``rows`` [G, M/G, K] (the input model's real weights per group) refitted to map the new
    model's input patches ``x_new_patches`` [G, R, K] onto the input model's outputs; ``x_old``
    is the input model's layer input, ``rng_state`` the state the patch sampler had when it drew
    ``x_new_patches`` (so the same output positions are drawn), ``hessian`` E[x_new x_new^T]
    [G, K, K] when the caller has it. None when the inputs did not move enough to matter."""
    rng = np.random.default_rng()
    rng.bit_generator.state = rng_state
    old_node = original.node(node.name)
    x_old_patches = patch_groups(original, old_node, x_old, rng)         # same rows as x_new_patches
    dtype = x_new_patches.dtype
    x_old_patches = x_old_patches.astype(dtype, copy=False)
    moved = float(np.mean(np.square(x_new_patches - x_old_patches), dtype=np.float64))
    energy = float(np.mean(np.square(x_old_patches), dtype=np.float64))
    if moved <= MIN_INPUT_ERROR ** 2 * max(energy, 1e-30):
        return None
    n = x_new_patches.shape[1]
    # second moments in the patches' precision (float32 in the sweep: ~1e-6 relative, far
    # below the damping), float64 for the solve
    new_t = np.swapaxes(x_new_patches, 1, 2)
    if hessian is None:
        hessian = np.matmul(new_t, x_new_patches).astype(np.float64) / n      # [G, K, K]
    hessian = np.array(hessian, np.float64)
    cross = np.matmul(new_t, x_old_patches).astype(np.float64) / n            # E[x_new x_old^T]
    k = hessian.shape[1]
    diag = np.einsum("gkk->gk", hessian)
    # a column the new model never drives (a clipped-to-zero input) keeps its old weight
    dead = diag <= 0
    # A fit of K weights on few rows (a Gemm after global pooling sees one row per image) learns
    # the calibration set's noise: damp in proportion to K / rows, which pulls W* towards W.
    damp = (DAMPING + k / n) * np.maximum(diag.mean(axis=1, keepdims=True), 1e-12)
    hessian[:, np.arange(k), np.arange(k)] += damp + dead
    cross[:, np.arange(k), np.arange(k)] += damp + dead
    # W* = W E[x_old x_new^T] H^-1  <=>  H W*^T = E[x_new x_old^T] W^T (H symmetric); the same
    # damping on both sides makes W* = W exactly when x_new == x_old
    rhs = np.matmul(cross, np.swapaxes(rows, 1, 2))                          # [G, K, M/G]
    return np.swapaxes(np.linalg.solve(hessian, rhs), 1, 2)


def refit_rows(ctx, graph, node, x_new_patches, x_old, rng_state, rows, hessian=None):
    """weight_correction's target rows: :func:`input_aware_rows` when Options.input_error_target
    is on, the layer's input grid in ``graph`` is narrower than 8 bits and the inputs moved;
    else ``rows`` unchanged."""
    x_qp = graph.tensors[node.inputs[0]].qparams
    if not ctx.options.input_error_target or x_qp is None or x_qp.bits is None or x_qp.bits > MAX_INPUT_BITS:
        return rows
    # an input that activation_offsets shifted by c is compared with the input model's value - c
    offset = ctx.cache.get("activation_offsets", {}).get(node.inputs[0])
    if offset:
        x_old = x_old - np.asarray(offset, x_old.dtype)
    fitted = input_aware_rows(ctx.original, node, x_new_patches, x_old, rng_state, rows, hessian)
    return rows if fitted is None else fitted
