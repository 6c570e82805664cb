"""2-D integer convolution (grouped, depthwise, strided, dilated, padded) to an int64 accumulator.

``conv2d_acc`` returns the accumulator ``acc[n, m, oh, ow] = bias[m] + sum_{c, kh, kw}
(x[n, g*Cg + c, oh*sh + kh*dh - pt, ow*sw + kw*dw - pl] - xzp) * (w[m, c, kh, kw] - wzp[m])``
in the requested layout, with the accumulator block semantics of :mod:`simulator.kernels.accum`.
Padding positions hold ``xzp`` (real value 0), so they add nothing and are skipped: this is the
same as ORT (pads with X_zp) and TFLite (skips taps outside the image).

The kernel works in NCHW; NHWC input is transposed in the wrapper and the accumulator transposed
back. Requantization is a separate step (:func:`simulator.kernels.quant.requantize`).
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
from simulator.kernels.epilogue import prepare as ep_prepare
from simulator.kernels.igemm import ConvFast
from simulator.kernels.portable_glue import read_only
from simulator.kernels.quant import check_int_array, per_channel, requant_params
from simulator.primitives import acc_add, wrap_bits

CONV_INPUT_DTYPES = ("int8", "uint8", "int16", "uint16")


@njit(cache=True, parallel=True)
def _conv_fast(xs, ws, bias, group, sh, sw, dh, dw, out):
    """Exact int64 accumulation; the caller proved no partial sum leaves the accumulator range.

    ``xs``: zero-point-free padded input [N, C, Hp, Wp] (int32); ``ws``: zero-point-free weights
    [M, Cg, KH, KW] (int32); ``out``: int64 [N, M, OH, OW]. Per output element the products are
    added in (c, kh, kw) order; each (n, m) plane is owned by one thread (deterministic).
    """
    n_batch = xs.shape[0]
    n_out, cg, kh_n, kw_n = ws.shape
    oh_n = out.shape[2]
    ow_n = out.shape[3]
    mg = n_out // group
    for nm in prange(n_batch * n_out):
        n = nm // n_out
        m = nm % n_out
        g = m // mg
        b = np.int64(bias[m])
        for oh in range(oh_n):
            for ow in range(ow_n):
                out[n, m, oh, ow] = b
        for c in range(cg):
            ci = g * cg + c
            for kh in range(kh_n):
                for kw in range(kw_n):
                    w = np.int64(ws[m, c, kh, kw])
                    if w == 0:
                        continue
                    for oh in range(oh_n):
                        ih = oh * sh + kh * dh
                        for ow in range(ow_n):
                            iw = ow * sw + kw * dw
                            out[n, m, oh, ow] += w * np.int64(xs[n, ci, ih, iw])


@njit(cache=True, parallel=True)
def _conv_checked(xs, ws, bias, group, sh, sw, dh, dw, lo, hi, bits, mode, out):
    """Sequential accumulation with a range check after every addition (see ``acc_add``).

    Same loop nest and order as ``_conv_fast``. Returns the number of output elements for which
    some partial sum left [lo, hi]. ``wrap`` results are wrapped to ``bits`` at the end.
    """
    n_batch = xs.shape[0]
    n_out, cg, kh_n, kw_n = ws.shape
    oh_n = out.shape[2]
    ow_n = out.shape[3]
    mg = n_out // group
    saturating = mode == ACC_SATURATE
    counts = np.zeros(n_batch * n_out, dtype=np.int64)
    for nm in prange(n_batch * n_out):
        n = nm // n_out
        m = nm % n_out
        g = m // mg
        flags = np.zeros((oh_n, ow_n), dtype=np.bool_)
        b = np.int64(bias[m])
        for oh in range(oh_n):
            for ow in range(ow_n):
                v, f = acc_add(np.int64(0), b, lo, hi, saturating)
                out[n, m, oh, ow] = v
                flags[oh, ow] = f
        for c in range(cg):
            ci = g * cg + c
            for kh in range(kh_n):
                for kw in range(kw_n):
                    w = np.int64(ws[m, c, kh, kw])
                    if w == 0:
                        continue
                    for oh in range(oh_n):
                        ih = oh * sh + kh * dh
                        if bits <= 62:
                            # |acc| <= 2**61 and |term| < 2**34: the int64 sum cannot overflow,
                            # so the check is branch-free and the row vectorizes
                            for ow in range(ow_n):
                                xv = np.int64(xs[n, ci, ih, ow * sw + kw * dw])
                                v = out[n, m, oh, ow] + w * xv
                                flags[oh, ow] |= (v < lo) | (v > hi)
                                if saturating:
                                    v = min(max(v, lo), hi)
                                out[n, m, oh, ow] = v
                        else:
                            for ow in range(ow_n):
                                iw = ow * sw + kw * dw
                                v, f = acc_add(out[n, m, oh, ow],
                                               w * np.int64(xs[n, ci, ih, iw]), lo, hi,
                                               saturating)
                                out[n, m, oh, ow] = v
                                if f:
                                    flags[oh, ow] = True
        cnt = 0
        for oh in range(oh_n):
            for ow in range(ow_n):
                if flags[oh, ow]:
                    cnt += 1
                if mode == ACC_WRAP:
                    out[n, m, oh, ow] = wrap_bits(out[n, m, oh, ow], bits)
        counts[nm] = cnt
    return counts.sum()


@njit(cache=True, parallel=True)
def _conv_checked_points(xs, ws, bias, group, sh, sw, dh, dw, lo, hi, bits, mode, points, out):
    """``_conv_checked`` for the listed output elements only (``points``: [P, 4] int64 rows of
    (n, m, oh, ow)): the same addition order and checks, one element per iteration. Writes the
    final accumulator into ``out`` and returns the number of elements that left the range."""
    n_out, cg, kh_n, kw_n = ws.shape
    mg = n_out // group
    saturating = mode == ACC_SATURATE
    flags = np.zeros(points.shape[0], dtype=np.int64)
    for i in prange(points.shape[0]):
        n = points[i, 0]
        m = points[i, 1]
        oh = points[i, 2]
        ow = points[i, 3]
        g = m // mg
        v, f = acc_add(np.int64(0), np.int64(bias[m]), lo, hi, saturating)
        left = f
        for c in range(cg):
            ci = g * cg + c
            for kh in range(kh_n):
                ih = oh * sh + kh * dh
                for kw in range(kw_n):
                    w = np.int64(ws[m, c, kh, kw])
                    if w == 0:
                        continue
                    v, f = acc_add(v, w * np.int64(xs[n, ci, ih, ow * sw + kw * dw]), lo, hi,
                                   saturating)
                    left = left or f
        if mode == ACC_WRAP:
            v = wrap_bits(v, bits)
        out[n, m, oh, ow] = v
        flags[i] = 1 if left else 0
    return flags.sum()


def _conv_exact(xs, ws, bias, group, sh, sw, dh, dw, oh_n, ow_n):
    """The exact int64 sum (no range), whatever the order: float64 BLAS when every partial sum is
    below 2**53, else the integer kernel."""
    abs_w = np.abs(ws.astype(np.int64)).reshape(ws.shape[0], -1).sum(axis=1)
    x_absmax = int(np.abs(xs).max()) if xs.size else 0
    if group == 1 and static_bound(abs_w, bias, x_absmax) < _FLOAT64_EXACT:
        return _conv_dense_blas(xs, ws, bias, sh, sw, dh, dw, oh_n, ow_n)
    out = np.empty((xs.shape[0], ws.shape[0], oh_n, ow_n), dtype=np.int64)
    _conv_fast(xs, ws, bias, group, sh, sw, dh, dw, out)
    return out


def _conv_narrow(xs, ws, b, group, sh, sw, dh, dw, lo, hi, acc_bits, mode, out):
    """Exact accumulator-range semantics at the cost of the fast path where possible.

    Every partial sum of an output element lies within ``|bias| + sum |w * x|`` of zero (a
    per-element bound, itself a convolution of ``|x|`` with ``|w|``). Elements whose bound fits
    [lo, hi] cannot overflow in any order, so their exact sum is the answer; only the others are
    replayed addition by addition in the reference order (c, kh, kw). Fills ``out``; returns the
    overflow count."""
    oh_n, ow_n = out.shape[2], out.shape[3]
    abs_xs, abs_ws, abs_b = (read_only(np.abs(v)) for v in (xs, ws, b))
    bound = _conv_exact(abs_xs, abs_ws, abs_b, group, sh, sw, dh, dw, oh_n, ow_n)
    # lo = -(hi + 1): a bound <= hi keeps every partial sum inside [lo, hi]
    risky = bound > hi
    n_risky = int(np.count_nonzero(risky))
    if 4 * n_risky > risky.size:
        # most elements need the replay: the plane-wise kernel (vectorized rows) is faster
        return int(_conv_checked(xs, ws, b, group, sh, sw, dh, dw, np.int64(lo), np.int64(hi),
                                 np.int64(acc_bits), np.int64(mode), out))
    out[...] = _conv_exact(xs, ws, b, group, sh, sw, dh, dw, oh_n, ow_n)
    if n_risky == 0:
        return 0
    points = np.argwhere(risky).astype(np.int64)
    return int(_conv_checked_points(xs, ws, b, group, sh, sw, dh, dw, np.int64(lo), np.int64(hi),
                                    np.int64(acc_bits), np.int64(mode), points, out))


# Products and partial sums below this are integers that float64 holds exactly in any order.
_FLOAT64_EXACT = 2 ** 53


def _conv_dense_blas(xs, ws, bias, sh, sw, dh, dw, oh_n, ow_n):
    """Ungrouped conv as one float64 BLAS product over im2col columns.

    Exact: the caller proved every partial sum is below 2**53 in magnitude, so each float64
    product and sum is an exact integer whatever order BLAS adds them in. Returns int64
    [N, M, OH, OW]."""
    n_batch, c_in = xs.shape[:2]
    n_out, _, kh_n, kw_n = ws.shape
    cols = np.empty((c_in, kh_n, kw_n, n_batch, oh_n, ow_n), dtype=np.float64)
    xt = xs.transpose(1, 0, 2, 3)
    for kh in range(kh_n):
        for kw in range(kw_n):
            cols[:, kh, kw] = xt[:, :, kh * dh:kh * dh + (oh_n - 1) * sh + 1:sh,
                                 kw * dw:kw * dw + (ow_n - 1) * sw + 1:sw]
    acc = ws.reshape(n_out, -1).astype(np.float64) @ cols.reshape(c_in * kh_n * kw_n, -1)
    acc += bias.astype(np.float64)[:, None]
    return np.ascontiguousarray(acc.astype(np.int64).reshape(n_out, n_batch, oh_n, ow_n).transpose(1, 0, 2, 3))


def conv_output_size(in_size, kernel, stride, pad_begin, pad_end, dilation) -> int:
    """ONNX Conv output length: ``floor((in + pads - ((k - 1) * d + 1)) / s) + 1``."""
    extent = (kernel - 1) * dilation + 1
    span = in_size + pad_begin + pad_end - extent
    if span < 0:
        return 0
    return span // stride + 1


def _pair(name, value, minimum):
    try:
        vals = tuple(int(v) for v in value)
    except TypeError:
        raise KernelInputError(f"{name}: expected 2 ints, got {value!r}") from None
    if len(vals) != 2 or any(v < minimum for v in vals):
        raise KernelInputError(f"{name}: expected 2 ints >= {minimum}, got {value!r}")
    return vals


def conv2d_acc(x, weight, *, weight_zero_point=0, bias=None, input_zero_point=0,
               strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1, layout="NCHW",
               acc_bits=32, acc_overflow="wrap"):
    """Integer conv accumulator; returns ``(acc int64 in `layout`, acc_overflow_count)``.

    ``x``: int8/uint8/int16/uint16, [N, C, H, W] or [N, H, W, C]. ``weight``: integer
    [M, C/group, KH, KW] (OIHW). ``weight_zero_point``: int [1] or [M]. ``bias``: int [M] or None.
    ``pads``: (top, left, bottom, right). Raises AccumulatorOverflowError in ``error`` mode.
    """
    check_int_array("conv input", x, CONV_INPUT_DTYPES)
    check_int_array("conv weight", weight, CONV_INPUT_DTYPES)
    if x.ndim != 4:
        raise KernelInputError(f"conv input: expected 4-D, got shape {list(x.shape)}")
    if weight.ndim != 4:
        raise KernelInputError(f"conv weight: expected 4-D OIHW, got shape {list(weight.shape)}")
    if layout not in ("NCHW", "NHWC"):
        raise KernelInputError(f"conv layout must be 'NCHW' or 'NHWC', got {layout!r}")
    lo, hi = acc_limits(acc_bits)
    mode = acc_mode_code(acc_overflow)
    sh, sw = _pair("strides", strides, 1)
    dh, dw = _pair("dilations", dilations, 1)
    try:
        pt, pl, pb, pr = (int(p) for p in pads)
    except (TypeError, ValueError):
        raise KernelInputError(f"pads: expected (top, left, bottom, right), got {pads!r}") from None
    if min(pt, pl, pb, pr) < 0:
        raise KernelInputError(f"pads must be >= 0, got {pads!r}")

    xn = x if layout == "NCHW" else np.transpose(x, (0, 3, 1, 2))
    n_batch, n_in, height, width = xn.shape
    n_out, cg, kh_n, kw_n = weight.shape
    group = int(group)
    if group < 1 or n_in % group or n_out % group or n_in // group != cg:
        raise KernelInputError(
            f"conv: input channels {n_in}, output channels {n_out} and weight in-channels {cg}"
            f" do not match group={group}"
        )
    oh_n = conv_output_size(height, kh_n, sh, pt, pb, dh)
    ow_n = conv_output_size(width, kw_n, sw, pl, pr, dw)
    if oh_n < 1 or ow_n < 1:
        raise KernelInputError(
            f"conv: empty output for input {height}x{width}, kernel {kh_n}x{kw_n}, pads {pads},"
            f" dilations {dilations}"
        )
    wzp = per_channel("weight_zero_point", weight_zero_point, n_out, np.int64)
    b = (np.zeros(n_out, dtype=np.int64) if bias is None
         else per_channel("bias", bias, n_out, np.int64))
    xzp = int(input_zero_point)

    # Zero-point-free operands; padding holds 0 (= xzp - xzp). Only rows/cols a window reaches.
    hp = (oh_n - 1) * sh + (kh_n - 1) * dh + 1
    wp = (ow_n - 1) * sw + (kw_n - 1) * dw + 1
    xs = np.zeros((n_batch, n_in, max(hp, pt + height), max(wp, pl + width)), dtype=np.int32)
    xs[:, :, pt:pt + height, pl:pl + width] = xn.astype(np.int32) - np.int32(xzp)
    xs = np.ascontiguousarray(xs[:, :, :hp, :wp])
    ws = np.ascontiguousarray(weight.astype(np.int64) - wzp[:, None, None, None]).astype(np.int32)
    # read-only, as launches pass kernel inputs: one specialisation of each kernel below
    xs, ws, b = read_only(xs), read_only(ws), read_only(b)

    out = np.empty((n_batch, n_out, oh_n, ow_n), dtype=np.int64)
    x_absmax = int(np.abs(xs).max()) if xs.size else 0
    abs_w = np.abs(ws.astype(np.int64)).reshape(n_out, -1).sum(axis=1)
    bound = static_bound(abs_w, b, x_absmax)
    if bound <= hi and group == 1 and bound < _FLOAT64_EXACT:
        out = _conv_dense_blas(xs, ws, b, sh, sw, dh, dw, oh_n, ow_n)
        n_ovf = 0
    elif bound <= hi:
        _conv_fast(xs, ws, b, group, sh, sw, dh, dw, out)
        n_ovf = 0
    else:
        n_ovf = _conv_narrow(xs, ws, b, group, sh, sw, dh, dw, lo, hi, acc_bits, mode, out)
    if n_ovf and acc_overflow == "error":
        raise AccumulatorOverflowError(
            f"{n_ovf} accumulator element(s) left the {acc_bits}-bit range"
        )
    if layout == "NHWC":
        out = np.ascontiguousarray(np.transpose(out, (0, 2, 3, 1)))
    return out, n_ovf


def prepare_conv(weight, *, weight_zero_point=0, bias=None, input_zero_point=0, strides=(1, 1),
                 pads=(0, 0, 0, 0), dilations=(1, 1), group=1, layout="NCHW", acc_bits=32,
                 acc_overflow="wrap", requant=None, channel_axis=None):
    """A :class:`simulator.kernels.igemm.ConvFast` for these parameters (conv + requantization
    fused), or ``None`` when the fast kernels cannot run them (then use :func:`conv2d_acc` and
    ``requantize``, which also report any parameter error).

    ``requant``: the keyword arguments of :func:`simulator.kernels.quant.requant_params` (without
    ``n_ch``); ``channel_axis``: the requantization axis of the 4-D output.
    """
    try:
        check_int_array("conv weight", weight, CONV_INPUT_DTYPES)
        if weight.ndim != 4 or layout not in ("NCHW", "NHWC"):
            return None
        lo, hi = acc_limits(acc_bits)
        acc_mode_code(acc_overflow)
        sh, sw = _pair("strides", strides, 1)
        dh, dw = _pair("dilations", dilations, 1)
        pt, pl, pb, pr = (int(p) for p in pads)
        if min(pt, pl, pb, pr) < 0:
            return None
        n_out = weight.shape[0]
        group = int(group)
        if group < 1 or n_out % group:
            return None
        wzp = per_channel("weight_zero_point", weight_zero_point, n_out, np.int64)
        b = (np.zeros(n_out, dtype=np.int64) if bias is None
             else per_channel("bias", bias, n_out, np.int64))
        xzp = int(input_zero_point)
        axis = 1 if layout == "NCHW" else 3
        if channel_axis is not None and int(channel_axis) % 4 != axis:
            return None
        rq = requant_params(**requant, n_ch=n_out)
    except (KernelInputError, TypeError, ValueError, OverflowError):
        return None
    ep = rq.epilogue() if rq.mode else ep_prepare(0, 0, rq.mult_f, rq.mult_i, rq.shifts, 0,
                                                  rq.out_min, rq.out_max, rq.dtype, n_out)
    if ep is None:
        return None
    ws = weight.astype(np.int64) - wzp[:, None, None, None]
    fast = ConvFast(ws, b, xzp, (sh, sw), (pt, pl, pb, pr), (dh, dw), group, layout, hi, ep,
                    rq.dtype)
    return fast if fast.usable else None
