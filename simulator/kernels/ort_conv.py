"""Kernels of the ``conv_ort`` and ``gemm_ort`` steps: ONNX ``Conv`` (2-D, grouped) and ``Gemm``
on float32 values as ONNX Runtime 1.32's CPU provider computes them with one intra-op thread on
x86-64 (MLAS ``MlasConv``, onnxruntime/core/mlas/lib/convolve.cpp, and ``MlasGemm``). This is the
arithmetic ORT runs for a 16-bit QDQ ``DQ -> Conv/Gemm -> Q`` group, which it never fuses into an
integer kernel.

Per group, ``MlasConvPrepare`` picks one of three algorithms; all end in an SGEMM
``out[M, N] = W[M, K] @ col[K, N]`` (``M`` filters of the group, ``N`` output pixels, ``K`` =
input channels of the group x kernel taps, im2col order: channel, kernel row, kernel column):

- *GemmDirect* (a 1x1 kernel, unit strides, no padding): one SGEMM over the input itself;
- *ExpandThenGemm* (more filters than output pixels): im2col, one SGEMM;
- *ExpandThenGemmSegmented* (the rest): ``MlasConvOperation`` cuts ``N`` and ``K`` into slices
  with the same rule as ``MlasSgemmOperation`` (:func:`sgemm_stride_k`), one SGEMM per K slice,
  the first writing the output and the later ones adding to it.

Within one SGEMM each element is what the AVX-512/FMA3 kernels compute: a chain of fused
multiply-adds over K in order from 0, the K slices' chains added to the running value
(``simulator/kernels/ort_convtranspose.py``). An SGEMM with one row (``M == 1``: depthwise
convolutions, batch-1 ``Gemm``) takes ``MlasSgemmKernelM1Avx`` instead: products rounded
separately and summed in K order (AVX, no FMA). The bias is added last, one float32 addition per
element (``MlasActivation``). The ``Gemm`` kernel copies the bias into the output first and runs
the SGEMM with ``beta = 1`` (onnxruntime/core/providers/cpu/math/gemm.cc).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from simulator.errors import KernelInputError
from simulator.kernels.ort_convtranspose import _SGEMM_STRIDE_K, sgemm_stride_k
from simulator.primitives import f32_add, f32_mul, fma_f32

_SGEMM_PACKED_STRIDE_K = 256   # MLAS_SGEMM_PACKED_STRIDEK (onnxruntime/core/mlas/lib/mlasi.h)


@njit(cache=True)
def _sgemm(a, b, out, stride_k, accumulate, alpha):
    """``out (+)= alpha * a @ b`` as MLAS's SGEMM for a multi-row ``a``: per element FMA chains
    over K slices of ``stride_k``; the first slice's chain times ``alpha`` is the value (zero
    mode), each later one is fused into it, ``fma(chain, alpha, value)`` (the AVX-512F kernel's
    ``vmulps`` / ``vfmadd213ps``; with ``alpha = 1`` a plain addition). With ``accumulate`` the
    first slice is fused into ``out`` too (``beta = 1``)."""
    rows, depth = a.shape
    cols = b.shape[1]
    for i in range(rows):
        for j in range(cols):
            total = out[i, j]
            for k0 in range(0, depth, stride_k):
                acc = np.float32(0.0)
                for k in range(k0, min(depth, k0 + stride_k)):
                    acc = fma_f32(a[i, k], b[k, j], acc)
                if k0 == 0 and not accumulate:
                    total = f32_mul(acc, alpha)
                else:
                    total = fma_f32(acc, alpha, total)
            out[i, j] = total


@njit(cache=True)
def _sgemm_m1(a, b, out, accumulate):
    """``out[0] (+)= a[0] @ b``: ``MlasSgemmKernelM1Avx`` (AVX, no FMA). K in blocks of 4 (then
    2, then 1): each block's separately rounded products summed left to right, then added to the
    running value (zero before the first block unless ``accumulate``)."""
    depth = a.shape[1]
    for j in range(b.shape[1]):
        total = out[0, j] if accumulate else np.float32(0.0)
        k = 0
        while k < depth:
            width = 4 if depth - k >= 4 else (2 if depth - k >= 2 else 1)
            block = f32_mul(a[0, k], b[k, j])
            for t in range(k + 1, k + width):
                block = f32_add(block, f32_mul(a[0, t], b[t, j]))
            total = f32_add(block, total)
            k += width
        out[0, j] = total


@njit(cache=True)
def _lane_sums(x, y):
    """The 8 AVX lane accumulators of ``MlasSgemmKernelM1TransposeBAvx``: lane ``l`` sums the
    products of positions ``l, l + 8, ...`` in order."""
    lanes = np.zeros(8, np.float32)
    for k in range(x.shape[0]):
        lanes[k % 8] = f32_add(lanes[k % 8], f32_mul(x[k], y[k]))
    return lanes


@njit(cache=True)
def _dot_m1t(vec, rows, out, accumulate):
    """``out[r] (+)= vec . rows[r]`` as ``MlasSgemmKernelM1TransposeBAvx``: rows in blocks of 4
    (then 2, then 1), each block shape with its own reduction of the 8 lane sums, the result
    added to the running value (zero unless ``accumulate``)."""
    n_rows = rows.shape[0]
    r = 0
    while r < n_rows:
        width = 4 if n_rows - r >= 4 else (2 if n_rows - r >= 2 else 1)
        for i in range(r, r + width):
            s = _lane_sums(vec, rows[i])
            if width == 4:
                lo = f32_add(f32_add(f32_add(s[0], s[1]), s[2]), s[3])
                hi = f32_add(f32_add(f32_add(s[4], s[5]), s[6]), s[7])
                dot = f32_add(lo, hi)
            elif width == 2:
                even = f32_add(f32_add(s[2], s[0]), f32_add(s[6], s[4]))
                odd = f32_add(f32_add(s[3], s[1]), f32_add(s[7], s[5]))
                dot = f32_add(even, odd)
            else:
                lo = f32_add(f32_add(s[0], s[1]), f32_add(s[2], s[3]))
                hi = f32_add(f32_add(s[4], s[5]), f32_add(s[6], s[7]))
                dot = f32_add(lo, hi)
            out[i] = f32_add(dot, out[i] if accumulate else np.float32(0.0))
        r += width


def sgemm(a: np.ndarray, b: np.ndarray, out: np.ndarray, *, accumulate: bool,
          stride_n: int | None = None, trans_b: bool = False, ldb: int | None = None,
          ldc: int | None = None, trans_a: bool = False, alpha: float = 1.0,
          packed_b: bool = False) -> None:
    """MLAS's ``MlasSgemmOperation`` (``beta`` 0 or 1 as ``accumulate``) of ``alpha``, ``a``
    [M, K] and ``b`` [K, N] into ``out`` [M, N] in place. ``trans_a``, ``trans_b``, ``ldb`` and
    ``ldc`` say how the caller stores A, B and C (they pick MLAS's one-row kernels and, for A, the
    K slice); ``stride_n`` is the N extent the K slice is chosen for (default N). ``packed_b``:
    B was packed ahead (ORT's PrePack of a constant MatMul weight), ``MlasSgemmPackedOperation``:
    no one-row kernels, K slices of a fixed 256."""
    rows, cols = a.shape[0], b.shape[1]
    ldb = (a.shape[1] if trans_b else cols) if ldb is None else ldb
    ldc = cols if ldc is None else ldc
    alpha = np.float32(alpha)
    if packed_b:
        _sgemm(np.ascontiguousarray(a), np.ascontiguousarray(b), out, _SGEMM_PACKED_STRIDE_K,
               accumulate, alpha)
    elif rows == 1 and not trans_a and alpha == 1:
        if trans_b:
            column = np.ascontiguousarray(out[0])
            _dot_m1t(np.ascontiguousarray(a[0]), np.ascontiguousarray(b.T), column, accumulate)
            out[0] = column
        else:
            _sgemm_m1(np.ascontiguousarray(a), np.ascontiguousarray(b), out, accumulate)
    elif cols == 1 and ldb == 1 and ldc == 1 and alpha == 1:
        # C and B are contiguous column vectors: MLAS transposes the product into a one-row one
        # (a stored A^T is then the one-row kernel's plain B)
        column = np.ascontiguousarray(out[:, 0])
        if trans_a:
            row = column.reshape(1, -1)
            _sgemm_m1(np.ascontiguousarray(b.T), np.ascontiguousarray(a.T), row, accumulate)
            column = row[0]
        else:
            _dot_m1t(np.ascontiguousarray(b[:, 0]), np.ascontiguousarray(a), column, accumulate)
        out[:, 0] = column
    else:
        n_extent = cols if stride_n is None else stride_n
        # MLAS keeps its K slice where A is transposed through its panel and N < K
        step = _SGEMM_STRIDE_K if trans_a and n_extent < a.shape[1] else \
            sgemm_stride_k(n_extent, a.shape[1])
        _sgemm(np.ascontiguousarray(a), np.ascontiguousarray(b), out, step, accumulate, alpha)


@njit(cache=True)
def _im2col(x, kh, kw, sh, sw, dh, dw, pad_t, pad_l, oh, ow, col):
    """``col[(c, ky, kx), (oy, ox)]``: the input tap of each output pixel, zero in the padding."""
    c_in, in_h, in_w = x.shape
    for c in range(c_in):
        for ky in range(kh):
            for kx in range(kw):
                row = (c * kh + ky) * kw + kx
                for oy in range(oh):
                    iy = oy * sh - pad_t + ky * dh
                    for ox in range(ow):
                        ix = ox * sw - pad_l + kx * dw
                        inside = 0 <= iy < in_h and 0 <= ix < in_w
                        col[row, oy * ow + ox] = x[c, iy, ix] if inside else np.float32(0.0)


@njit(cache=True)
def _add_bias(y, bias):
    for m in range(y.shape[0]):
        for j in range(y.shape[1]):
            y[m, j] = f32_add(y[m, j], bias[m])


def conv_ort(x: np.ndarray, *, weight, bias=None, strides=(1, 1), pads=(0, 0, 0, 0),
             dilations=(1, 1), group: int = 1) -> np.ndarray:
    """ORT's float32 Conv of NCHW ``x`` (module docstring); ``weight`` [M, C/group, KH, KW],
    ``pads`` (top, left, bottom, right)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        raise KernelInputError("conv_ort: the input must be a 4-D float32 array")
    weight = np.ascontiguousarray(weight, np.float32)
    n, c, in_h, in_w = x.shape
    m_out, c_group, kh, kw = weight.shape
    if group < 1 or c != c_group * group or m_out % group:
        raise KernelInputError(f"conv_ort: weight {list(weight.shape)} and {group} groups for "
                               f"{c} input channels")
    (sh, sw), (dh, dw) = (int(v) for v in strides), (int(v) for v in dilations)
    top, left, bottom, right = (int(v) for v in pads)
    oh = (in_h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (in_w + left + right - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise KernelInputError(f"conv_ort: no output pixels for input {list(x.shape)}")
    bias_arr = None if bias is None else np.ascontiguousarray(bias, np.float32).reshape(-1)
    if bias_arr is not None and bias_arr.size != m_out:
        raise KernelInputError(f"conv_ort: {bias_arr.size} bias values for {m_out} filters")
    m_group, depth, size = m_out // group, c_group * kh * kw, oh * ow
    direct = kh == kw == 1 and sh == sw == 1 and top == left == bottom == right == 0
    filters = weight.reshape(group, m_group, depth)
    out = np.zeros((n, group, m_group, size), np.float32)
    col = np.empty((depth, size), np.float32)
    for b in range(n):
        for g in range(group):
            xg = np.ascontiguousarray(x[b, g * c_group:(g + 1) * c_group])
            y = out[b, g]
            if direct:
                sgemm(filters[g], xg.reshape(depth, size), y, accumulate=False, ldc=size)
            else:
                _im2col(xg, kh, kw, sh, sw, dh, dw, top, left, oh, ow, col)
                # ExpandThenGemm is one SGEMM; Segmented cuts K itself with the SGEMM's rule and
                # runs one SGEMM per slice, which matters where that SGEMM has one row
                step = depth if m_group > size else sgemm_stride_k(size, depth)
                for k0 in range(0, depth, step):
                    sgemm(filters[g][:, k0:k0 + step], col[k0:k0 + step], y, accumulate=k0 > 0,
                          stride_n=size, ldc=size)
            if bias_arr is not None:
                _add_bias(y, bias_arr[g * m_group:(g + 1) * m_group])
    return out.reshape(n, m_out, oh, ow)


def gemm_ort(a: np.ndarray, *, weight, bias=None, trans_b: bool = False) -> np.ndarray:
    """ORT's float32 ``Gemm``/``MatMul`` ``a @ weight (+ bias)`` of a 2-D ``a`` [M, K] and a
    ``weight`` [K, N]; ``trans_b``: the model stores it as [N, K] (``Gemm`` ``transB=1``), which
    picks another one-row kernel. The bias is broadcast over rows."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 2:
        raise KernelInputError("gemm_ort: the input must be a 2-D float32 array")
    weight = np.ascontiguousarray(weight, np.float32)
    if weight.ndim != 2 or weight.shape[0] != a.shape[1]:
        raise KernelInputError(f"gemm_ort: weight {list(weight.shape)} for input {list(a.shape)}")
    out = np.zeros((a.shape[0], weight.shape[1]), np.float32)
    if bias is not None:
        out[:] = np.asarray(bias, np.float32).reshape(1, -1)
    sgemm(np.ascontiguousarray(a), weight, out, accumulate=bias is not None, trans_b=trans_b)
    return out
