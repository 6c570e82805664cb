"""simulator/kernels/tflite_ops.py and the TFLite step kinds (simulator/steps/) against the numpy reference
(tests/reference/tflite_ref.py), and the lowering's parameter helpers against the same reference."""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from simulator.errors import KernelInputError, ProgramError  # noqa: E402
from simulator.steps import KINDS, execute_step  # noqa: E402
from simulator.kernels import tflite_ops as K  # noqa: E402
from simulator.program import Step  # noqa: E402
from tests.reference import tflite_ref as T  # noqa: E402


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_softmax_gemmlowp_matches_reference(dtype):
    r = _rng(1)
    info = np.iinfo(dtype)
    for trial in range(60):
        s = float(np.float32(10 ** r.uniform(-3, 1)))
        beta = float(r.choice([1.0, 0.5, 2.0, 0.1]))
        x = r.integers(info.min, info.max + 1, size=(3, int(r.integers(1, 40)))).astype(dtype)
        if trial % 3 == 0:   # near-equal logits: the exp/reciprocal paths, not just saturation
            x[:] = r.integers(info.max - 6, info.max + 1, size=x.shape)
        m, left, dmin = T.softmax_ref_params(s, beta)
        out, _ = K.softmax_gemmlowp(x, input_multiplier=m, input_left_shift=left, diff_min=dmin,
                                    out_dtype=dtype)
        assert np.array_equal(out, T.softmax_ref(x, s, beta, dtype)), (s, beta)


def test_softmax_lut_matches_reference():
    from mrq.lower_extra import tflite_softmax_table
    r = _rng(2)
    for _ in range(40):
        s = float(np.float32(10 ** r.uniform(-2.5, 0.5)))
        beta = float(np.float32(r.choice([1.0, 0.5])))
        zp = int(r.integers(-128, 0))
        so = float(np.float32(r.choice([1 / 256, 0.005, 0.01])))
        x = r.integers(-128, 128, size=(2, 3, int(r.integers(1, 30)))).astype(np.int8)
        out, _ = K.softmax_lut(x, table=tflite_softmax_table(s, beta), scale_out=np.float32(so),
                               zero_point_out=zp, out_min=-128, out_max=127, out_dtype="int8")
        assert np.array_equal(out, T.softmax_lut(x, s, beta, so, zp)), (s, beta, so, zp)
        xu = (x.astype(np.int64) + 128).astype(np.uint8)
        out, _ = K.softmax_lut(xu, table=tflite_softmax_table(s, beta), scale_out=np.float32(1 / 256),
                               zero_point_out=0, out_min=0, out_max=255, out_dtype="uint8",
                               rounding="add_half_truncate")
        assert np.array_equal(out, T.softmax_lut(xu, s, beta, 1 / 256, 0, "uint8"))


def test_lut8_and_logistic_table():
    from mrq.ir import QParams
    from mrq.lower_extra import tflite_logistic_table
    r = _rng(3)
    for dtype in ("int8", "uint8"):
        info = np.iinfo(dtype)
        out_zp = -128 if dtype == "int8" else 0
        for _ in range(30):
            s, zp = float(np.float32(10 ** r.uniform(-3, 0))), int(r.integers(info.min, info.max + 1))
            table = tflite_logistic_table(QParams([s], [zp], dtype), QParams([1 / 256], [out_zp], dtype))
            x = np.arange(info.min, info.max + 1).astype(dtype)
            got = K.lut8(x, table=table, out_dtype=dtype)
            assert np.array_equal(got, T.logistic(x, s, zp, 1 / 256, out_zp, dtype))
    with pytest.raises(KernelInputError):
        K.lut8(np.zeros(3, np.int8), table=np.zeros(255, np.int8), out_dtype="int8")
    with pytest.raises(KernelInputError):
        K.lut8(np.zeros(3, np.int16), table=np.zeros(256, np.int8), out_dtype="int8")


@pytest.mark.parametrize("axes,keep", [((1, 2), True), ((2, 1), False), ((3,), False), ((1,), True),
                                       ((1, 2, 3), False), ((-1,), True)])
def test_mean_kernels_match_reference(axes, keep):
    from mrq.ir import QParams
    from mrq.lower_extra import tflite_mean_params, xnnpack_mean_params
    r = _rng(4)
    for _ in range(20):
        shape = (2,) + tuple(int(d) for d in r.integers(1, 9, 3))
        x = r.integers(-128, 128, size=shape).astype(np.int8)
        si = float(np.float32(10 ** r.uniform(-2, 0)))
        so = float(np.float32(si * 10 ** r.uniform(-0.7, 0.7)))
        zi, zo = (int(v) for v in r.integers(-128, 128, 2))
        n = int(np.prod([shape[a] for a in axes]))
        qi, qo = QParams([si], [zi], "int8"), QParams([so], [zo], "int8")
        m, e = tflite_mean_params(qi, qo, n)
        out, _ = K.mean_tflite(x, axes=axes, keep_dims=keep, input_zero_point=zi, multiplier=m, shift=e,
                               out_zero_point=zo, out_min=-128, out_max=127, out_dtype="int8")
        assert np.array_equal(out, T.mean_ref(x, axes, keep, si, zi, so, zo))
        sc, zpf = xnnpack_mean_params(qi, qo, n)
        out, _ = K.mean_xnnpack(x, axes=axes, keep_dims=keep, scale=sc, zero_point=zpf, out_min=-128,
                                out_max=127, out_dtype="int8")
        assert np.array_equal(out, T.mean_xnnpack(x, axes, keep, si, zi, so, zo))


def test_reduce_sum_and_requant_mean_step():
    x = _rng(5).integers(-128, 128, size=(2, 3, 4, 5)).astype(np.int8)
    sums, n = K.reduce_sum(x, axes=(1, 2), keep_dims=True, input_zero_point=7)
    assert n == 12 and np.array_equal(sums, x.astype(np.int64).sum(axis=(1, 2), keepdims=True) - 7 * 12)
    step = Step("mean", "m", ("x",), ("y",), dict(
        axes=(1, 2), keep_dims=False, mode="requant", input_zero_point=7, rq_mode="fixed",
        rq_multiplier=np.array([3], np.int64), rq_shift=np.array([5], np.int64), rq_rounding="half_away",
        out_zero_point=-3, out_min=-128, out_max=127, out_dtype="int8", channel_axis=-1))
    (out,), stats = execute_step(step, x)
    acc = (x.astype(np.int64).sum(axis=(1, 2)) - 7 * 12) * 3
    expected = np.clip(np.sign(acc) * ((np.abs(acc) + 16) // 32) - 3, -128, 127)
    assert np.array_equal(out, expected) and out.dtype == np.int8 and "out_saturated" in stats


def test_pad_kernel():
    x = _rng(6).integers(-128, 128, size=(2, 3, 4, 1)).astype(np.int8)
    pads = ((0, 0), (1, 2), (0, 3), (0, 0))
    assert np.array_equal(K.pad(x, pads=pads, value=-5), np.pad(x, pads, constant_values=-5))
    with pytest.raises(KernelInputError):
        K.pad(x, pads=((0, 0), (1, 1)), value=0)
    with pytest.raises(KernelInputError):
        K.pad(x, pads=pads, value=300)


def test_executors_registered_and_validate():
    for kind in ("softmax_tflite", "lut", "mean", "pad"):
        assert kind in KINDS
    x = np.zeros((1, 4), np.int8)
    with pytest.raises(ProgramError):
        execute_step(Step("softmax_tflite", "s", ("x",), ("y",), dict(mode="nope", out_dtype="int8")), x)
    with pytest.raises(ProgramError):
        execute_step(Step("softmax_tflite", "s", ("x",), ("y",), dict(
            mode="lut", axis=0, out_dtype="int8")), np.zeros((2, 4), np.int8))
    with pytest.raises(ProgramError):
        execute_step(Step("mean", "m", ("x",), ("y",), dict(axes=(1,), keep_dims=False, mode="x")), x)
    with pytest.raises(ProgramError):
        execute_step(Step("pad", "p", ("x",), ("y",), dict(value=0)), x)


def test_lowering_helpers_match_reference():
    from mrq.lower_extra import tflite_softmax_ref_params, xnnpack_add_params
    r = _rng(7)
    for _ in range(200):
        s = float(np.float32(10 ** r.uniform(-3, 1)))
        beta = float(r.choice([1.0, 0.5, 2.0]))
        assert tflite_softmax_ref_params(s, beta) == T.softmax_ref_params(s, beta)
        sa, sb, so = (float(np.float32(10 ** r.uniform(-2, 0))) for _ in range(3))
        if 2 ** -10 <= sa / so < 256 and 2 ** -10 <= sb / so < 256:
            assert xnnpack_add_params(sa, sb, so) == T.xnnpack_add_params(sa, sb, so)


def test_softmax_gemmlowp_against_float_softmax():
    """Sanity: the fixed-point softmax is within 1 code of the real softmax."""
    r = _rng(8)
    s = 0.1
    m, left, dmin = T.softmax_ref_params(s, 1.0)
    x = r.integers(-128, 128, size=(50, 10)).astype(np.int8)
    out, _ = K.softmax_gemmlowp(x, input_multiplier=m, input_left_shift=left, diff_min=dmin, out_dtype="int8")
    xf = x.astype(np.float64) * s
    e = np.exp(xf - xf.max(axis=1, keepdims=True))
    real = np.clip(np.round(e / e.sum(axis=1, keepdims=True) * 256) - 128, -128, 127)
    assert np.max(np.abs(out.astype(np.int64) - real)) <= 1
