"""Float64 kernels for the float reference and calibration runs (not bit-exact hardware models:
those live in :mod:`simulator`). Numba loops where numpy would stream the data many times."""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, parallel=True)
def depthwise_conv_nchw(x, w, strides, pads, dilations, oh, ow):
    """Depthwise convolution of float64 ``x`` [N, C, H, W] with ``w`` [C, KH, KW]; zero padding
    (top, left) = pads; output [N, C, OH, OW]."""
    n, c, h, wd = x.shape
    kh, kw = w.shape[1], w.shape[2]
    sh, sw = strides
    dh, dw = dilations
    top, left = pads
    out = np.zeros((n, c, oh, ow), np.float64)
    for job in numba.prange(n * c):
        b = job // c
        ch = job % c
        for i in range(kh):
            for j in range(kw):
                wv = w[ch, i, j]
                for y in range(oh):
                    iy = y * sh + i * dh - top
                    if iy < 0 or iy >= h:
                        continue
                    for xx in range(ow):
                        ix = xx * sw + j * dw - left
                        if 0 <= ix < wd:
                            out[b, ch, y, xx] += wv * x[b, ch, iy, ix]
    return out
