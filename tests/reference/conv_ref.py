"""Reference 2-D convolution accumulator: seven nested Python loops, Python ints."""
from __future__ import annotations

import numpy as np

from .accum_ref import Accumulator


def conv2d_acc(x, w, wzp, bias, xzp, strides, pads, dilations, group, layout, acc_bits,
               acc_overflow):
    """Returns (acc int64 array in `layout`, number of overflowed elements).

    ``x`` NCHW or NHWC; ``w`` [M, C/group, KH, KW]; ``wzp``, ``bias`` per output channel.
    Out-of-image taps are skipped (they hold the input zero point, i.e. contribute 0).
    """
    if layout == "NHWC":
        x = np.transpose(x, (0, 3, 1, 2))
    n_batch, n_in, height, width = x.shape
    n_out, cg, kh_n, kw_n = w.shape
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    oh_n = (height + pt + pb - ((kh_n - 1) * dh + 1)) // sh + 1
    ow_n = (width + pl + pr - ((kw_n - 1) * dw + 1)) // sw + 1
    mg = n_out // group
    wzp = np.broadcast_to(np.asarray(wzp), (n_out,))
    bias = np.zeros(n_out, dtype=np.int64) if bias is None else np.broadcast_to(bias, (n_out,))
    out = np.zeros((n_batch, n_out, oh_n, ow_n), dtype=np.int64)
    n_ovf = 0
    for n in range(n_batch):
        for m in range(n_out):
            g = m // mg
            for oh in range(oh_n):
                for ow in range(ow_n):
                    acc = Accumulator(acc_bits, acc_overflow)
                    acc.add(int(bias[m]))
                    for c in range(cg):
                        for i in range(kh_n):
                            for j in range(kw_n):
                                h = oh * sh - pt + i * dh
                                ww = ow * sw - pl + j * dw
                                if 0 <= h < height and 0 <= ww < width:
                                    xv = int(x[n, g * cg + c, h, ww]) - int(xzp)
                                    wv = int(w[m, c, i, j]) - int(wzp[m])
                                    acc.add(xv * wv)
                    out[n, m, oh, ow] = acc.read()
                    n_ovf += acc.overflowed
    if layout == "NHWC":
        out = np.transpose(out, (0, 2, 3, 1))
    return out, n_ovf
