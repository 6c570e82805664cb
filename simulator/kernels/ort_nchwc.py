"""Kernel of the ``float_conv`` step's ``nchwc`` order: a float32 2-D Conv with a constant weight
as ONNX Runtime 1.32's CPU provider runs it after its NchwcTransformer (optimization level ALL),
with one intra-op thread (onnxruntime/core/mlas/lib/snchwc.cpp, x86_64/SconvKernelAvx512F.S and
SconvKernelFma3.S). The channel block is ``MlasNchwcGetBlockSize()``: 16 on an AVX-512F host,
8 on an AVX2/FMA3 host (:data:`BLOCKS`, by the profile's ``runtime_isa``); the kernels of both
run the same order on their block.

Each output element is a sum of segments: a segment is a chain of fused multiply-adds from 0
over its taps in order (taps in the padding are skipped), and each later segment's chain is
added to the running value (the kernels' ``ACCUMULATE_OUTPUT`` flag); the bias is added last.
The segments are the MLAS algorithm's:

- ``nchw`` (group 1, fewer input channels than the block: the input stays NCHW): one segment per
  input channel, taps by kernel row then column;
- ``nchwc`` (a block or more of input channels; ORT pads group 1 to a multiple of the block, a
  grouped conv must have one): one segment per block of input channels, taps by kernel row,
  kernel column, then channel within the block;
- ``pointwise`` (a 1x1 kernel without padding on NCHWc input): one segment per batch of up to
  128 input channels, in channel order;
- ``depthwise`` (one input channel per group): one segment, kernel row then column.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from simulator.errors import KernelInputError
from simulator.primitives import f32_add, fma_f32

# MlasNchwcGetBlockSize() by MLAS kernel set (simulator.kernels.ort_eltwise.ORT_ISAS)
BLOCKS = {"avx512f": 16, "fma3": 8}
BLOCK = BLOCKS["avx512f"]
POINTWISE_BATCH = 128   # input channels per pointwise kernel call
VARIANTS = ("nchw", "nchwc", "pointwise", "depthwise")


def nchwc_variant(c_in: int, m_out: int, kernel: tuple, pads: tuple, group: int,
                  block: int = BLOCK) -> str | None:
    """The MLAS NCHWc algorithm ORT's NchwcTransformer picks for a Conv with a constant weight
    on a host whose channel block is ``block``, or None when the transformer leaves the Conv
    to MLAS's im2col path."""
    c_group = c_in // group
    if group > 1:
        if c_group == 1 and m_out == group:
            return "depthwise"   # channels off the block are padded
        if m_out % block:
            return None
        if c_group % block or m_out % group or (m_out // group) % block:
            return None
        return _nchwc_or_pointwise(kernel, pads)
    if c_in < block:
        return "nchw"
    # a channel count off the block is padded with zero channels, which add nothing
    return _nchwc_or_pointwise(kernel, pads)


def _nchwc_or_pointwise(kernel, pads) -> str:
    return "pointwise" if tuple(kernel) == (1, 1) and not any(pads) else "nchwc"


@njit(cache=True)
def _conv(x, w, bias, has_bias, sh, sw, dh, dw, pad_t, pad_l, oh, ow, group, seg_len, tap_major,
          out):
    """``seg_len`` input channels per segment; ``tap_major``: taps outer, channels inner within
    a segment (else channels outer)."""
    n, _, in_h, in_w = x.shape
    m_out, c_group, kh, kw = w.shape
    m_group = m_out // group
    for b in range(n):
        for m in range(m_out):
            c0 = (m // m_group) * c_group
            for oy in range(oh):
                for ox in range(ow):
                    total = np.float32(0.0)
                    for s0 in range(0, c_group, seg_len):
                        s1 = min(c_group, s0 + seg_len)
                        acc = np.float32(0.0)
                        if tap_major:
                            for ky in range(kh):
                                iy = oy * sh - pad_t + ky * dh
                                if iy < 0 or iy >= in_h:
                                    continue
                                for kx in range(kw):
                                    ix = ox * sw - pad_l + kx * dw
                                    if ix < 0 or ix >= in_w:
                                        continue
                                    for c in range(s0, s1):
                                        acc = fma_f32(x[b, c0 + c, iy, ix], w[m, c, ky, kx], acc)
                        else:
                            for c in range(s0, s1):
                                for ky in range(kh):
                                    iy = oy * sh - pad_t + ky * dh
                                    if iy < 0 or iy >= in_h:
                                        continue
                                    for kx in range(kw):
                                        ix = ox * sw - pad_l + kx * dw
                                        if ix < 0 or ix >= in_w:
                                            continue
                                        acc = fma_f32(x[b, c0 + c, iy, ix], w[m, c, ky, kx], acc)
                        total = acc if s0 == 0 else f32_add(acc, total)
                    if has_bias:
                        total = f32_add(total, bias[m])
                    out[b, m, oy, ox] = total


def conv_nchwc(x: np.ndarray, *, weight, bias=None, strides=(1, 1), pads=(0, 0, 0, 0),
               dilations=(1, 1), group: int = 1, block: int = BLOCK) -> np.ndarray:
    """ORT's NCHWc float32 Conv of NCHW ``x`` (module docstring) with channel block ``block``
    (a value of :data:`BLOCKS`); ``weight`` [M, C/group, KH, KW], ``pads`` (top, left, bottom,
    right)."""
    if block not in BLOCKS.values():
        raise KernelInputError(f"conv_nchwc: channel block {block} is not one of {sorted(BLOCKS.values())}")
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        raise KernelInputError("conv_nchwc: the input must be a 4-D float32 array")
    weight = np.ascontiguousarray(weight, np.float32)
    n, c, in_h, in_w = x.shape
    m_out, c_group, kh, kw = weight.shape
    if group < 1 or c != c_group * group or m_out % group:
        raise KernelInputError(f"conv_nchwc: weight {list(weight.shape)} and {group} groups for "
                               f"{c} input channels")
    variant = nchwc_variant(c, m_out, (kh, kw), tuple(pads), group, block)
    if variant is None:
        raise KernelInputError(f"conv_nchwc: ORT has no NCHWc kernel for weight "
                               f"{list(weight.shape)} in {group} groups")
    (sh, sw), (dh, dw) = (int(v) for v in strides), (int(v) for v in dilations)
    top, left, bottom, right = (int(v) for v in pads)
    oh = (in_h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (in_w + left + right - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise KernelInputError(f"conv_nchwc: no output pixels for input {list(x.shape)}")
    bias_arr = np.zeros(m_out, np.float32) if bias is None else \
        np.ascontiguousarray(bias, np.float32).reshape(-1)
    if bias_arr.size != m_out:
        raise KernelInputError(f"conv_nchwc: {bias_arr.size} bias values for {m_out} filters")
    seg_len = {"nchw": 1, "nchwc": block, "pointwise": POINTWISE_BATCH, "depthwise": 1}[variant]
    out = np.empty((n, m_out, oh, ow), np.float32)
    _conv(np.ascontiguousarray(x), weight, bias_arr, bias is not None, sh, sw, dh, dw, top, left,
          oh, ow, group, seg_len, variant == "nchwc", out)
    return out
