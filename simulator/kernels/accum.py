"""Accumulator-width handling shared by conv and gemm (docs/PROGRAM.md "Accumulator block").

An accumulator is ``acc_bits`` wide (two's complement) and behaves on overflow as:

- ``wrap``: the exact int64 sum wrapped to ``acc_bits`` at the end. Because wrapping is addition
  modulo ``2**acc_bits``, this equals wrapping after every addition, in any order.
- ``saturate``: clamped after *every* addition, so the result depends on the order. The order is
  ``acc = bias`` (the bias is the first addend: a bias outside the range is clamped), then the
  products in (input channel, kernel row, kernel column) order for conv and k order for gemm.
- ``error``: the step fails if any partial sum leaves the range.

``acc_overflow`` counts accumulator elements for which some partial sum (in that order) left the
range, in all three modes.

The kernels first try a static bound: ``max_c(|bias[c]| + sum|w[c] - wzp[c]| * max|x - xzp|)``.
If it fits in the range, no partial sum can leave it whatever the order, and a plain int64 sum is
exact (fast path, 0 overflows). Otherwise they run the sequential checked path. Zero products are
skipped in both paths: adding 0 leaves a clamped accumulator unchanged.
"""
from __future__ import annotations

import numpy as np

from simulator.errors import KernelInputError

ACC_WRAP = 0
ACC_SATURATE = 1
ACC_ERROR = 2

ACC_MODES = {"wrap": ACC_WRAP, "saturate": ACC_SATURATE, "error": ACC_ERROR}


def acc_mode_code(name) -> int:
    try:
        return ACC_MODES[name]
    except (KeyError, TypeError):
        raise KernelInputError(
            f"unknown acc_overflow {name!r}; expected one of {sorted(ACC_MODES)}"
        ) from None


def acc_limits(acc_bits) -> tuple[int, int]:
    """(lo, hi) of a signed ``acc_bits`` accumulator; KernelInputError outside 16..64."""
    if isinstance(acc_bits, bool) or not isinstance(acc_bits, (int, np.integer)):
        raise KernelInputError(f"acc_bits must be an int, got {acc_bits!r}")
    bits = int(acc_bits)
    if not 16 <= bits <= 64:
        raise KernelInputError(f"acc_bits must be in 16..64, got {bits}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def static_bound(abs_weight_sums, bias, x_absmax) -> int:
    """Largest possible |partial sum|: ``max_c(|bias[c]| + abs_weight_sums[c] * x_absmax)``.

    Computed with Python ints (no overflow).
    """
    if len(bias) == 0:
        return 0
    sums = [abs(int(b)) + int(s) * int(x_absmax) for b, s in zip(bias, abs_weight_sums)]
    return max(sums)
