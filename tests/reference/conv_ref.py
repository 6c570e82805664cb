"""Reference 2-D convolution accumulator: seven nested Python loops, Python ints.

When no partial sum can leave the accumulator (the bias's and every product's magnitudes add up
to at most its maximum, whatever the order), the sum is exact in any order, and numpy computes
it tap by tap instead (:func:`_exact_without_overflow`); the loops run only where a partial sum
could overflow, where the order of the additions matters. Most test cases are of the first kind,
and the loops cost seconds per case on the larger ones."""
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
    n_batch, _n_in, height, width = x.shape
    n_out, cg, kh_n, kw_n = w.shape
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    oh_n = (height + pt + pb - ((kh_n - 1) * dh + 1)) // sh + 1
    ow_n = (width + pl + pr - ((kw_n - 1) * dw + 1)) // sw + 1
    mg = n_out // group
    wzp = np.broadcast_to(np.asarray(wzp), (n_out,))
    bias = np.zeros(n_out, dtype=np.int64) if bias is None else np.broadcast_to(bias, (n_out,))
    exact = _exact_without_overflow(x, w, wzp, bias, xzp, (sh, sw), pads, (dh, dw), group,
                                    (oh_n, ow_n), acc_bits)
    if exact is not None:
        return (np.transpose(exact, (0, 2, 3, 1)) if layout == "NHWC" else exact), 0
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


def _exact_without_overflow(x, w, wzp, bias, xzp, strides, pads, dilations, group, out_hw,
                            acc_bits):
    """The NCHW int64 accumulators, or ``None`` when a partial sum might leave the ``acc_bits``
    range (or int64 here): then only the loops above give the order's answer."""
    oh_n, ow_n = out_hw
    if oh_n <= 0 or ow_n <= 0 or min(pads) < 0 or x.size == 0 or w.size == 0:
        return None
    xs = x.astype(np.int64) - int(xzp)
    ws = w.astype(np.int64) - np.asarray(wzp, dtype=np.int64)[:, None, None, None]
    bias = np.asarray(bias, dtype=np.int64)
    n_out, cg, kh_n, kw_n = w.shape
    # every product, and the sums of their magnitudes, must fit in int64 for numpy's sums
    bound = int(np.abs(xs).max()) * int(np.abs(ws).max()) * cg * kh_n * kw_n + int(np.abs(bias).max())
    if bound >= 2 ** 62:
        return None
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    # out-of-image taps read 0 (the input zero point): they add nothing, as in the loops
    xp = np.pad(xs, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    mg = n_out // group
    total = np.broadcast_to(bias[None, :, None, None], (x.shape[0], n_out, oh_n, ow_n)).copy()
    magnitude = np.abs(total)
    for g in range(group):
        xg, wg = xp[:, g * cg:(g + 1) * cg], ws[g * mg:(g + 1) * mg]
        for i in range(kh_n):
            for j in range(kw_n):
                win = xg[:, :, i * dh:i * dh + (oh_n - 1) * sh + 1:sh,
                         j * dw:j * dw + (ow_n - 1) * sw + 1:sw]
                tap = wg[:, :, i, j]
                total[:, g * mg:(g + 1) * mg] += np.einsum("nchw,mc->nmhw", win, tap)
                magnitude[:, g * mg:(g + 1) * mg] += np.einsum("nchw,mc->nmhw", np.abs(win),
                                                               np.abs(tap))
    if int(magnitude.max(initial=0)) > 2 ** (acc_bits - 1) - 1:
        return None
    return total
