"""The padded-image prepass (simulator/kernels/igemm.py) and the dequantize kernel after their
compile-time restructuring: the same bytes as a NumPy reference for both layouts, with and without
channel padding (an NHWC image without it is copied as one channel), serial and parallel."""
import numpy as np
import pytest

from simulator.kernels import igemm as ig
from simulator.kernels import quant
from simulator.kernels.portable_glue import read_only


def _reference(x, nchw, pt, pl, pb, pr, n_groups, cg, cgp, flip, padval, dtype):
    xh = np.transpose(x, (0, 2, 3, 1)) if nchw else x
    n, h, w, _ = xh.shape
    u = (xh.astype(np.int64) + flip).astype(np.uint8).reshape(n, h, w, n_groups, cg)
    img = np.zeros((n, h, w, n_groups, cgp), np.uint8)
    img[..., :cg] = u
    img = img.reshape(n, h, w, n_groups * cgp)
    out = np.full((n, pt + h + pb, pl + w + pr, n_groups * cgp), np.uint8(padval), np.uint8)
    out[:, pt:pt + h, pl:pl + w] = img
    return out.reshape(-1).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
@pytest.mark.parametrize("nchw", [True, False])
@pytest.mark.parametrize("geo", [(1, 3, 4, 1, 0, 1, 2), (2, 3, 4, 1, 1, 0, 2),
                                 (1, 8, 8, 0, 0, 0, 0), (2, 4, 4, 1, 2, 1, 0),
                                 (1, 1, 1, 2, 1, 0, 1)])
def test_prepass_matches_reference(dtype, nchw, geo):
    n_groups, cg, cgp, pt, pl, pb, pr = geo
    rng = np.random.default_rng(0)
    n, h, w = 3, 5, 7
    c = n_groups * cg
    x = rng.integers(-128, 128, (n, c, h, w) if nchw else (n, h, w, c)).astype(np.int8)
    flip, padval = 128, 125
    ctot = n_groups * cgp
    hp_n, wp_n = pt + h + pb, pl + w + pr
    want = _reference(x, nchw, pt, pl, pb, pr, n_groups, cg, cgp, flip, padval, dtype)
    img = hp_n * wp_n * ctot
    # what ConvFast's launch passes: its input and constants read-only
    x1, layout = read_only(x.reshape(-1)), read_only(np.array([int(nchw), h, w], np.int64))
    for parallel in (False, True):
        xp = np.full(n * img + 16, 77, dtype=dtype)
        args = (layout, pt, pl, hp_n, wp_n, n_groups, cg, cgp, ctot, flip, padval, xp)
        if parallel:
            ig._prepass_par(x1, *args, n, 2)
        else:
            ig._prepass_images(x1, *args, 0, 1)
            ig._prepass_images(x1, *args, 1, n)
        np.testing.assert_array_equal(xp[:n * img], want)
        assert (xp[n * img:] == 77).all()


@pytest.mark.parametrize("shape,axis,per_axis", [((2, 3, 5), 1, True), ((4, 7), 0, True),
                                                 ((600, 1000), 1, False), ((0, 3), 1, True)])
def test_dequantize_matches_formula(shape, axis, per_axis):
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, shape).astype(np.int8)
    n = shape[axis] if per_axis else 1
    s = rng.uniform(0.001, 2.0, n).astype(np.float32)
    z = rng.integers(-20, 20, n).astype(np.int64)
    got = quant.dequantize(x, scale=s, zero_point=z, axis=axis)
    bshape = [1] * len(shape)
    if per_axis:
        bshape[axis] = n
    want = ((x.astype(np.int64) - z.reshape(bshape)).astype(np.float32)
            * s.reshape(bshape)).astype(np.float32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_qladd_constant_in_python_matches_numba():
    """The launch-time QLinearAdd constant, computed by the interpreter through the primitives'
    Python functions, equals the same formula compiled by numba from the primitives."""
    from numba import njit

    from simulator.kernels import eltwise
    from simulator.primitives import f32_mul, fma_f32, int_to_f32

    @njit
    def compiled(r_first, z_first, r_second, z_second, z_out):
        inner = fma_f32(r_first, int_to_f32(z_first), f32_mul(r_second, int_to_f32(z_second)))
        return np.float32(np.float64(int_to_f32(z_out)) - np.float64(inner))

    rng = np.random.default_rng(2)
    for _ in range(3000):
        r1, r2 = (np.float32(v) for v in np.exp(rng.uniform(-12, 6, 2)))
        z1, z2, zc = (int(v) for v in rng.integers(-300, 300, 3))
        want = compiled(r1, z1, r2, z2, zc)
        got = eltwise.ort_qladd_constant(r1, z1, r2, z2, zc)
        assert isinstance(got, np.float32)
        assert np.float32(got).view(np.int32) == np.float32(want).view(np.int32), (r1, z1, r2, z2, zc)
