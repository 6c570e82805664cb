"""Integer matrix multiply ``a[..., K] @ w[K, N]`` to an int64 accumulator.

``acc[r, n] = bias[n] + sum_k (a[r, k] - azp) * (w[k, n] - wzp[n])``, products added in k order,
with the accumulator block semantics of :mod:`simulator.kernels.accum`. Requantization is a
separate step (:func:`simulator.kernels.quant.requantize`, ``channel_axis = -1``).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from simulator.errors import AccumulatorOverflowError, KernelInputError
from simulator.kernels.accum import (
    ACC_SATURATE,
    ACC_WRAP,
    acc_limits,
    acc_mode_code,
    static_bound,
)
from simulator.kernels.conv import prepare_conv
from simulator.kernels.portable_glue import read_only
from simulator.kernels.quant import check_int_array, per_channel
from simulator.primitives import acc_add, wrap_bits

GEMM_INPUT_DTYPES = ("int8", "uint8", "int16", "uint16")


@njit(cache=True, parallel=True)
def _gemm_fast(a_s, w_s, bias, out):
    """Exact int64 accumulation (the caller proved no overflow). ``a_s`` [R, K] and ``w_s`` [K, N]
    are zero-point free (int32); each row of ``out`` [R, N] is owned by one thread."""
    rows, depth = a_s.shape
    n_cols = w_s.shape[1]
    for r in prange(rows):
        for n in range(n_cols):
            out[r, n] = np.int64(bias[n])
        for k in range(depth):
            av = np.int64(a_s[r, k])
            if av == 0:
                continue
            for n in range(n_cols):
                out[r, n] += av * np.int64(w_s[k, n])


@njit(cache=True, parallel=True)
def _gemm_checked(a_s, w_s, bias, lo, hi, bits, mode, out):
    """Sequential accumulation in k order with a range check after every addition."""
    rows, depth = a_s.shape
    n_cols = w_s.shape[1]
    saturating = mode == ACC_SATURATE
    counts = np.zeros(rows, dtype=np.int64)
    for r in prange(rows):
        flags = np.zeros(n_cols, dtype=np.bool_)
        for n in range(n_cols):
            v, f = acc_add(np.int64(0), np.int64(bias[n]), lo, hi, saturating)
            out[r, n] = v
            flags[n] = f
        for k in range(depth):
            av = np.int64(a_s[r, k])
            if av == 0:
                continue
            if bits <= 62:
                # |acc| <= 2**61 and |term| < 2**34: the int64 sum cannot overflow, so the
                # check is branch-free and the row vectorizes
                for n in range(n_cols):
                    v = out[r, n] + av * np.int64(w_s[k, n])
                    flags[n] |= (v < lo) | (v > hi)
                    if saturating:
                        v = min(max(v, lo), hi)
                    out[r, n] = v
            else:
                for n in range(n_cols):
                    v, f = acc_add(out[r, n], av * np.int64(w_s[k, n]), lo, hi, saturating)
                    out[r, n] = v
                    if f:
                        flags[n] = True
        cnt = 0
        for n in range(n_cols):
            if flags[n]:
                cnt += 1
            if mode == ACC_WRAP:
                out[r, n] = wrap_bits(out[r, n], bits)
        counts[r] = cnt
    return counts.sum()


@njit(cache=True, parallel=True)
def _gemm_checked_points(a_s, w_s, bias, lo, hi, bits, mode, points, out):
    """``_gemm_checked`` for the listed (row, column) elements only; returns how many left the
    range. Same order (bias, then k ascending, zero inputs skipped) and checks."""
    saturating = mode == ACC_SATURATE
    depth = a_s.shape[1]
    flags = np.zeros(points.shape[0], dtype=np.int64)
    for i in prange(points.shape[0]):
        r = points[i, 0]
        n = points[i, 1]
        v, left = acc_add(np.int64(0), np.int64(bias[n]), lo, hi, saturating)
        for k in range(depth):
            av = np.int64(a_s[r, k])
            if av == 0:
                continue
            v, f = acc_add(v, av * np.int64(w_s[k, n]), lo, hi, saturating)
            left = left or f
        if mode == ACC_WRAP:
            v = wrap_bits(v, bits)
        out[r, n] = v
        flags[i] = 1 if left else 0
    return flags.sum()


def gemm_acc(a, weight, *, weight_zero_point=0, bias=None, input_zero_point=0, acc_bits=32,
             acc_overflow="wrap"):
    """Integer GEMM accumulator; returns ``(acc int64 [..., N], acc_overflow_count)``.

    ``a``: int8/uint8/int16/uint16 [..., K] (at least 1-D). ``weight``: integer [K, N].
    ``weight_zero_point``: [1] or [N]; ``bias``: [N] or None.
    """
    check_int_array("gemm input", a, GEMM_INPUT_DTYPES)
    check_int_array("gemm weight", weight, GEMM_INPUT_DTYPES)
    if a.ndim < 1:
        raise KernelInputError("gemm input: expected at least 1-D")
    if weight.ndim != 2:
        raise KernelInputError(f"gemm weight: expected [K, N], got shape {list(weight.shape)}")
    depth, n_cols = weight.shape
    if a.shape[-1] != depth:
        raise KernelInputError(
            f"gemm: input inner dimension {a.shape[-1]} does not match weight K={depth}"
        )
    lo, hi = acc_limits(acc_bits)
    mode = acc_mode_code(acc_overflow)
    wzp = per_channel("weight_zero_point", weight_zero_point, n_cols, np.int64)
    b = (np.zeros(n_cols, dtype=np.int64) if bias is None
         else per_channel("bias", bias, n_cols, np.int64))
    lead = a.shape[:-1]
    a2 = np.ascontiguousarray(a.reshape(-1, depth).astype(np.int32) - np.int32(input_zero_point))
    w_s = np.ascontiguousarray(weight.astype(np.int64) - wzp[None, :]).astype(np.int32)
    # read-only, as launches pass kernel inputs: one specialisation of each kernel below
    a2, w_s, b = read_only(a2), read_only(w_s), read_only(b)
    out = np.empty((a2.shape[0], n_cols), dtype=np.int64)
    x_absmax = int(np.abs(a2).max()) if a2.size else 0
    abs_w = np.abs(w_s.astype(np.int64)).sum(axis=0)
    if static_bound(abs_w, b, x_absmax) <= hi:
        _gemm_fast(a2, w_s, b, out)
        n_ovf = 0
    else:
        # Per-element bound |bias| + sum |a * w| (itself a product of |a| and |w|): elements
        # whose bound fits the range cannot overflow in any order and keep the exact sum; only
        # the others are replayed addition by addition in k order.
        bound = np.empty_like(out)
        _gemm_fast(*(read_only(np.abs(v)) for v in (a2, w_s, b)), bound)
        risky = bound > hi
        n_risky = int(np.count_nonzero(risky))
        n_ovf = 0
        if 4 * n_risky > risky.size:  # mostly risky: the row-wise kernel (vectorized) is faster
            n_ovf = int(_gemm_checked(a2, w_s, b, np.int64(lo), np.int64(hi), np.int64(acc_bits),
                                      np.int64(mode), out))
        elif n_risky:
            _gemm_fast(a2, w_s, b, out)
            points = np.argwhere(risky).astype(np.int64)
            n_ovf = int(_gemm_checked_points(a2, w_s, b, np.int64(lo), np.int64(hi),
                                             np.int64(acc_bits), np.int64(mode), points, out))
        else:
            _gemm_fast(a2, w_s, b, out)
    if n_ovf and acc_overflow == "error":
        raise AccumulatorOverflowError(
            f"{n_ovf} accumulator element(s) left the {acc_bits}-bit range"
        )
    return out.reshape(lead + (n_cols,)), n_ovf


class GemmFast:
    """A gemm step prepared for the fused kernels: ``a[..., K] @ w[K, N]`` runs as a 1x1 NHWC
    convolution over an ``R x 1`` image (``R`` = the product of the leading dimensions)."""

    def __init__(self, conv_fast, depth, n_cols):
        self.conv = conv_fast
        self.depth = depth
        self.n_cols = n_cols

    def run(self, a):
        """``(out, n_sat)`` or ``None`` (then use :func:`gemm_acc` and ``requantize``)."""
        got = self.launch(a.shape, a.dtype)
        return None if got is None else self.conv.execute(got, a)

    def launch(self, shape, dtype):
        """``(Launch, static_ok)`` for an input of this shape and dtype, or ``None`` (see
        :meth:`simulator.kernels.igemm.ConvFast.launch`)."""
        if len(shape) < 1 or shape[-1] != self.depth:
            return None
        lead = tuple(int(d) for d in shape[:-1])
        rows = int(np.prod(lead, dtype=np.int64))
        return self.conv.launch((1, rows, 1, self.depth), dtype,
                                in_view=(1, rows, 1, self.depth), out_shape=lead + (self.n_cols,))


def prepare_gemm(weight, *, weight_zero_point=0, bias=None, input_zero_point=0, acc_bits=32,
                 acc_overflow="wrap", requant=None, channel_axis=None):
    """A :class:`GemmFast` for these parameters, or ``None`` (see
    :func:`simulator.kernels.conv.prepare_conv`). ``channel_axis`` must name the last axis."""
    if not isinstance(weight, np.ndarray) or weight.ndim != 2:
        return None
    if channel_axis is not None and int(channel_axis) != -1:
        return None  # the output rank is only known per input; only -1 is taken
    depth, n_cols = weight.shape
    w4 = np.ascontiguousarray(weight.T).reshape(n_cols, depth, 1, 1)
    fast = prepare_conv(w4, weight_zero_point=weight_zero_point, bias=bias,
                        input_zero_point=input_zero_point, layout="NHWC", acc_bits=acc_bits,
                        acc_overflow=acc_overflow, requant=requant)
    return None if fast is None else GemmFast(fast, depth, n_cols)
