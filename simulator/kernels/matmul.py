"""Kernel of the ``matmul`` step: a product of two integer activations (attention's ``Q @ K^T``
and ``softmax @ V``), each 2-D product one :func:`simulator.kernels.gemm.gemm_acc`, so the
accumulator width and overflow rules are the gemm's."""
from __future__ import annotations

import numpy as np

from simulator.kernels.gemm import GEMM_INPUT_DTYPES, gemm_acc
from simulator.kernels.pair_sums import check_pair_sums, gemm_acc_pairs
from simulator.kernels.quant import KernelInputError, check_int_array


def matmul_acc(a: np.ndarray, b: np.ndarray, *, zero_point_a: int = 0, zero_point_b: int = 0,
               acc_bits: int = 32, acc_overflow: str = "wrap", pair_sums: str = "exact") -> tuple:
    """``acc[..., m, n] = sum_k (a[..., m, k] - zero_point_a) * (b[..., k, n] - zero_point_b)``,
    the leading dimensions broadcast as numpy's matmul does; returns ``(acc int64, overflows)``.
    ``pair_sums`` ``saturate_int16``: each 2-D product as
    :func:`simulator.kernels.pair_sums.gemm_acc_pairs` (uint8 ``a``, int8 ``b``)."""
    check_int_array("matmul input a", a, GEMM_INPUT_DTYPES)
    check_int_array("matmul input b", b, GEMM_INPUT_DTYPES)
    if a.ndim < 2 or b.ndim < 2:
        raise KernelInputError(f"matmul: operands must be at least 2-D, got {list(a.shape)} and {list(b.shape)}")
    if a.shape[-1] != b.shape[-2]:
        raise KernelInputError(f"matmul: {list(a.shape)} @ {list(b.shape)}: inner dimensions differ")
    try:
        lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise KernelInputError(f"matmul: leading dimensions of {list(a.shape)} and {list(b.shape)} "
                               f"do not broadcast") from None
    accumulate = gemm_acc if check_pair_sums(pair_sums) == "exact" else gemm_acc_pairs
    a_b = np.broadcast_to(a, lead + a.shape[-2:])
    b_b = np.broadcast_to(b, lead + b.shape[-2:])
    out = np.empty(lead + (a.shape[-2], b.shape[-1]), np.int64)
    n_ovf = 0
    for idx in np.ndindex(*lead):
        acc, ovf = accumulate(np.ascontiguousarray(a_b[idx]), np.ascontiguousarray(b_b[idx]),
                              weight_zero_point=int(zero_point_b),
                              input_zero_point=int(zero_point_a), acc_bits=acc_bits,
                              acc_overflow=acc_overflow)
        out[idx] = acc
        n_ovf += ovf
    return out, n_ovf
