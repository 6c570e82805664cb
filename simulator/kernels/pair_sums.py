"""Pair-saturated dot products: ONNX Runtime's MLAS u8 x s8 kernels on x86 hosts without VNNI.

There MLAS multiplies uint8 activation codes by int8 weight codes with ``vpmaddubsw``, which adds
each two adjacent products and saturates that pair sum to int16 before ``vpmaddwd`` widens it
to the int32 accumulator (/work/shared/docs/peer_arithmetic.md 1.7). The operands are the raw
codes: the zero points are taken afterwards, exactly, through row and column sums. So the
accumulator is the exact one plus, for every pair ``p = a0*w0 + a1*w1`` of raw codes, the
``sat16(p) - p`` that the saturation removed: this module computes that excess.

Pair order (measured against onnxruntime 1.32.0 on an AVX2 host, tests/mrq/
test_pair_sums_ort.py): K elements ``2j`` and ``2j + 1`` of the dot product, from the start of
K. MLAS's QGEMM packs K in groups of 4 (zero-filled at the end) and the ConvSym kernel takes
input channels in groups of 4 per kernel tap (only when the channels are a multiple of 4), so
both pair exactly these elements. For a convolution, K is ORT's NHWC im2col order per group:
kernel row, kernel column, input channel; padding holds the input zero point (a raw code).
An odd last element stands alone: one u8 x s8 product (|p| <= 32640) always fits int16.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from simulator.errors import KernelInputError
from simulator.kernels.accum import acc_limits

PAIR_SUMS = ("exact", "saturate_int16")
INT16_MIN = -32768
INT16_MAX = 32767


def check_pair_sums(value) -> str:
    if value not in PAIR_SUMS:
        raise KernelInputError(f"pair_sums must be one of {PAIR_SUMS}, got {value!r}")
    return value


@njit(cache=True, parallel=True)
def _pair_excess_rows(a, w_t, out):
    """``out[r, n] = sum_j (sat16(p) - p)``, ``p = a[r, 2j] * w_t[n, 2j] + a[r, 2j + 1] *
    w_t[n, 2j + 1]`` (``a`` uint8 [R, K], ``w_t`` int8 [N, K]; int64 arithmetic)."""
    rows, depth = a.shape
    n_cols = w_t.shape[0]
    half = depth // 2
    for r in prange(rows):
        for n in range(n_cols):
            excess = np.int64(0)
            for j in range(half):
                k = 2 * j
                p = (np.int64(a[r, k]) * np.int64(w_t[n, k])
                     + np.int64(a[r, k + 1]) * np.int64(w_t[n, k + 1]))
                if p > INT16_MAX:
                    excess += np.int64(INT16_MAX) - p
                elif p < INT16_MIN:
                    excess += np.int64(INT16_MIN) - p
            out[r, n] = excess


def pair_excess_reference(a, w) -> np.ndarray:
    """Slow, obvious :func:`pair_excess` of a 2-D ``a`` [R, K] and ``w`` [K, N] (Python ints)."""
    rows, depth = len(a), len(w)
    n_cols = len(w[0]) if depth else 0
    out = np.zeros((rows, n_cols), np.int64)
    for r in range(rows):
        for n in range(n_cols):
            total = 0
            for k in range(0, depth - 1, 2):
                p = int(a[r][k]) * int(w[k][n]) + int(a[r][k + 1]) * int(w[k + 1][n])
                total += min(max(p, INT16_MIN), INT16_MAX) - p
            out[r, n] = total
    return out


def _check_operands(a, w, what: str) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8:
        raise KernelInputError(f"{what}: pair_sums 'saturate_int16' is the uint8 x int8 "
                               f"product; the input is {getattr(a, 'dtype', type(a).__name__)}")
    if not isinstance(w, np.ndarray) or w.dtype != np.int8:
        raise KernelInputError(f"{what}: pair_sums 'saturate_int16' is the uint8 x int8 "
                               f"product; the weight is {getattr(w, 'dtype', type(w).__name__)}")


def pair_excess(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_j (sat16(p_j) - p_j)`` over the K pairs of ``a[..., K] @ w[K, N]`` (uint8 ``a``,
    int8 ``w``): int64 [..., N]."""
    _check_operands(a, w, "pair sums")
    if a.ndim < 1 or w.ndim != 2 or a.shape[-1] != w.shape[0]:
        raise KernelInputError(f"pair sums: {list(a.shape)} @ {list(w.shape)}")
    depth, n_cols = w.shape
    a2 = np.ascontiguousarray(a.reshape(-1, depth))
    out = np.empty((a2.shape[0], n_cols), np.int64)
    _pair_excess_rows(a2, np.ascontiguousarray(w.T), out)
    return out.reshape(a.shape[:-1] + (n_cols,))


def im2col_nhwc(xn: np.ndarray, kh_n: int, kw_n: int, strides, pads, dilations,
                pad_value: int) -> np.ndarray:
    """ORT's NHWC im2col of an NCHW ``xn`` [N, C, H, W]: [N, OH, OW, KH, KW, C] (raw codes,
    padding ``pad_value``)."""
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    n_batch, chans, height, width = xn.shape
    oh_n = (height + pt + pb - (kh_n - 1) * dh - 1) // sh + 1
    ow_n = (width + pl + pr - (kw_n - 1) * dw - 1) // sw + 1
    xp = np.full((n_batch, chans, height + pt + pb, width + pl + pr), pad_value, xn.dtype)
    xp[:, :, pt:pt + height, pl:pl + width] = xn
    cols = np.empty((n_batch, oh_n, ow_n, kh_n, kw_n, chans), xn.dtype)
    for i in range(kh_n):
        for j in range(kw_n):
            win = xp[:, :, i * dh:i * dh + (oh_n - 1) * sh + 1:sh,
                     j * dw:j * dw + (ow_n - 1) * sw + 1:sw]
            cols[:, :, :, i, j, :] = win.transpose(0, 2, 3, 1)
    return cols


def conv_pair_excess(x: np.ndarray, weight: np.ndarray, *, input_zero_point: int,
                     strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group: int = 1,
                     layout: str = "NCHW") -> np.ndarray:
    """:func:`pair_excess` of each output of a grouped 2-D conv (uint8 ``x`` in ``layout``,
    int8 OIHW ``weight``), K in ORT's per-group im2col order (kernel row, kernel column, input
    channel): int64 output in ``layout``."""
    _check_operands(x, weight, "conv pair sums")
    xn = x if layout == "NCHW" else np.transpose(x, (0, 3, 1, 2))
    n_out, cg, kh_n, kw_n = weight.shape
    pad_value = int(input_zero_point)
    if not 0 <= pad_value <= 255:
        raise KernelInputError(f"conv pair sums: input zero point {pad_value} is not a uint8")
    cols = im2col_nhwc(xn, kh_n, kw_n, tuple(strides), tuple(pads), tuple(dilations), pad_value)
    n_batch, oh_n, ow_n = cols.shape[:3]
    mg = n_out // group
    out = np.empty((n_batch, oh_n, ow_n, n_out), np.int64)
    for g in range(group):
        a = np.ascontiguousarray(cols[..., g * cg:(g + 1) * cg]).reshape(-1, kh_n * kw_n * cg)
        # weight [Mg, Cg, KH, KW] -> [KH, KW, Cg, Mg]: K in the same (row, column, channel) order
        w = np.ascontiguousarray(weight[g * mg:(g + 1) * mg].transpose(2, 3, 1, 0)).reshape(-1, mg)
        out[..., g * mg:(g + 1) * mg] = pair_excess(a, w).reshape(n_batch, oh_n, ow_n, mg)
    return out if layout == "NHWC" else np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def add_excess(exact: np.ndarray, excess: np.ndarray, acc_bits: int) -> tuple:
    """``(acc, n_ovf)``: the exact int64 accumulator plus the pair excess, wrapped to
    ``acc_bits`` (MLAS's int32 adds wrap), and how many elements the wrap changed."""
    total = exact.astype(np.int64) + excess
    lo, hi = acc_limits(acc_bits)
    if acc_bits >= 64:
        return total, 0
    wrapped = (total - lo) % (np.int64(hi) - lo + 1) + lo
    return wrapped, int(np.count_nonzero(wrapped != total))


def _require_wrap(acc_overflow) -> None:
    if acc_overflow != "wrap":
        raise KernelInputError(f"pair_sums 'saturate_int16' needs acc_overflow 'wrap', got "
                               f"{acc_overflow!r}")


def conv2d_acc_pairs(x, weight, *, weight_zero_point=0, bias=None, input_zero_point=0,
                     strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
                     layout="NCHW", acc_bits=32, acc_overflow="wrap") -> tuple:
    """:func:`simulator.kernels.conv.conv2d_acc` with pair sums saturated to int16: ``(acc
    int64 in ``layout``, elements the ``acc_bits`` wrap changed)``."""
    from simulator.kernels.conv import conv2d_acc
    _require_wrap(acc_overflow)
    exact, _ = conv2d_acc(x, weight, weight_zero_point=weight_zero_point, bias=bias,
                          input_zero_point=input_zero_point, strides=strides, pads=pads,
                          dilations=dilations, group=group, layout=layout, acc_bits=64,
                          acc_overflow="wrap")
    excess = conv_pair_excess(x, weight, input_zero_point=input_zero_point, strides=strides,
                              pads=pads, dilations=dilations, group=int(group), layout=layout)
    return add_excess(exact, excess, int(acc_bits))


def gemm_acc_pairs(a, weight, *, weight_zero_point=0, bias=None, input_zero_point=0,
                   acc_bits=32, acc_overflow="wrap") -> tuple:
    """:func:`simulator.kernels.gemm.gemm_acc` with pair sums saturated to int16."""
    from simulator.kernels.gemm import gemm_acc
    _require_wrap(acc_overflow)
    exact, _ = gemm_acc(a, weight, weight_zero_point=weight_zero_point, bias=bias,
                        input_zero_point=input_zero_point, acc_bits=64, acc_overflow="wrap")
    return add_excess(exact, pair_excess(a, weight), int(acc_bits))
