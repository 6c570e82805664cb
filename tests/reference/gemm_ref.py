"""Reference GEMM accumulator with Python ints, products added in k order."""
from __future__ import annotations

import numpy as np

from .accum_ref import Accumulator


def gemm_acc(a, w, wzp, bias, azp, acc_bits, acc_overflow):
    """``a`` [..., K], ``w`` [K, N]; returns (acc int64 [..., N], overflowed element count)."""
    depth, n_cols = w.shape
    a2 = a.reshape(-1, depth)
    wzp = np.broadcast_to(np.asarray(wzp), (n_cols,))
    bias = np.zeros(n_cols, dtype=np.int64) if bias is None else np.broadcast_to(bias, (n_cols,))
    out = np.zeros((a2.shape[0], n_cols), dtype=np.int64)
    n_ovf = 0
    for r in range(a2.shape[0]):
        for n in range(n_cols):
            acc = Accumulator(acc_bits, acc_overflow)
            acc.add(int(bias[n]))
            for k in range(depth):
                acc.add((int(a2[r, k]) - int(azp)) * (int(w[k, n]) - int(wzp[n])))
            out[r, n] = acc.read()
            n_ovf += acc.overflowed
    return out.reshape(a.shape[:-1] + (n_cols,)), n_ovf
