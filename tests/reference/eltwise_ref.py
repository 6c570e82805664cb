"""Reference element-wise ops, one element at a time (numpy broadcasting rules)."""
from __future__ import annotations

import numpy as np

from . import primitives_ref as P
from .quant_ref import clamp, requant_value

f32 = np.float32


def _pairs(a, b):
    ab, bb = np.broadcast_arrays(a, b)
    return ab, bb


def ort_input0_scalar(shape_a, shape_b) -> bool:
    """ORT Broadcaster's IsInput0Scalar, restated: find the innermost common axis whose output
    size is > 1 (or the outermost common axis), input 0 is scalar iff its size there is <= 1;
    rank-0 input 0 is scalar; with rank-0 input 1, look at input 0's last axis."""
    if len(shape_a) == 0:
        return True
    if len(shape_b) == 0:
        return shape_a[-1] <= 1
    common = min(len(shape_a), len(shape_b))
    for i in range(1, common + 1):
        da, db = shape_a[-i], shape_b[-i]
        out = 0 if min(da, db) == 0 else max(da, db)
        if out > 1 or i == common:
            return da <= 1
    raise AssertionError


def add_ort_fma(a, b, sa, za, sb, zb, sc, zc, out_min, out_max, out_dtype):
    sa, sb, sc = f32(sa), f32(sb), f32(sc)
    ra, rb = f32(sa / sc), f32(sb / sc)
    swapped = ort_input0_scalar(a.shape, b.shape)
    if swapped:
        k = f32(P.int_to_f32(zc) - P.fma_f32(rb, P.int_to_f32(zb), f32(ra * P.int_to_f32(za))))
    else:
        k = f32(P.int_to_f32(zc) - P.fma_f32(ra, P.int_to_f32(za), f32(rb * P.int_to_f32(zb))))
    ab, bb = _pairs(a, b)
    out = np.empty(ab.shape, dtype=np.int64)
    n_sat = 0
    for idx in np.ndindex(*ab.shape):
        av, bv = f32(int(ab[idx])), f32(int(bb[idx]))
        if swapped:
            v = P.fma_f32(bv, rb, P.fma_f32(av, ra, k))
        else:
            v = P.fma_f32(av, ra, P.fma_f32(bv, rb, k))
        out[idx], sat = clamp(P.round_float(v, "half_even"), out_min, out_max)
        n_sat += sat
    return out.astype(out_dtype), n_sat


def add_tflite(a, b, left_shift, ma, sha, mb, shb, mo, sho, za, zb, zo, out_min, out_max,
               out_dtype, ruy=False):
    """TFLite reference_integer_ops::Add, element by element."""
    mb_fn = P.mbqm_ruy if ruy else P.mbqm
    ab, bb = _pairs(a, b)
    out = np.empty(ab.shape, dtype=np.int64)
    n_sat = 0
    for idx in np.ndindex(*ab.shape):
        input1_val = -int(za) + int(ab[idx])
        input2_val = -int(zb) + int(bb[idx])
        shifted_input1_val = input1_val * (1 << left_shift)
        shifted_input2_val = input2_val * (1 << left_shift)
        scaled_input1_val = mb_fn(shifted_input1_val, ma, sha)
        scaled_input2_val = mb_fn(shifted_input2_val, mb, shb)
        raw_sum = scaled_input1_val + scaled_input2_val
        raw_output = mb_fn(raw_sum, mo, sho) + zo
        out[idx], sat = clamp(raw_output, out_min, out_max)
        n_sat += sat
    return out.astype(out_dtype), n_sat


def add_fixed(a, b, za, zb, ma, mb, rq_mode, rq_shift, rounding, zo, out_min, out_max,
              out_dtype, rq_multiplier=1):
    ab, bb = _pairs(a, b)
    out = np.empty(ab.shape, dtype=np.int64)
    n_sat = 0
    for idx in np.ndindex(*ab.shape):
        acc = (int(ab[idx]) - za) * ma + (int(bb[idx]) - zb) * mb
        out[idx], sat = requant_value(acc, rq_mode, rq_multiplier, rq_shift, rounding, zo, out_min,
                                              out_max)
        n_sat += sat
    return out.astype(out_dtype), n_sat


def add_float(a, b, sa, za, sb, zb, so, zo, rounding, out_min, out_max, out_dtype):
    ab, bb = _pairs(a, b)
    out = np.empty(ab.shape, dtype=np.int64)
    n_sat = 0
    for idx in np.ndindex(*ab.shape):
        fa = f32(P.int_to_f32(int(ab[idx]) - za) * f32(sa))
        fb = f32(P.int_to_f32(int(bb[idx]) - zb) * f32(sb))
        f = f32(f32(fa + fb) / f32(so))
        out[idx], sat = clamp(P.round_float(f, rounding) + zo, out_min, out_max)
        n_sat += sat
    return out.astype(out_dtype), n_sat


def mul(a, b, za, zb, rq_mode, mult, shift, rounding, zo, out_min, out_max, out_dtype):
    """Per-tensor requantization of (a - za) * (b - zb)."""
    ab, bb = _pairs(a, b)
    out = np.empty(ab.shape, dtype=np.int64)
    n_sat = 0
    for idx in np.ndindex(*ab.shape):
        acc = (int(ab[idx]) - za) * (int(bb[idx]) - zb)
        out[idx], sat = requant_value(acc, rq_mode, mult, shift, rounding, zo, out_min, out_max)
        n_sat += sat
    return out.astype(out_dtype), n_sat


def rescale_float(x, zin, s_in, s_out, zo, rounding, out_min, out_max, out_dtype):
    out = np.empty(x.shape, dtype=np.int64)
    n_sat = 0
    for idx in np.ndindex(*x.shape):
        f = f32(f32(P.int_to_f32(int(x[idx]) - zin) * f32(s_in)) / f32(s_out))
        out[idx], sat = clamp(P.round_float(f, rounding) + zo, out_min, out_max)
        n_sat += sat
    return out.astype(out_dtype), n_sat
