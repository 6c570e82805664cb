"""The step kinds of blocked quantization and run-time quantization parameters against plain
numpy references: ``quantize_blocked`` / ``dequantize_blocked`` (partial last block, 4- to
16-bit codes), ``quantize_runtime`` (ordinary and degenerate scales), ``float_reduce_minmax``
and the IEEE ops of ``float_math``."""
import numpy as np
import pytest

from simulator.errors import SimulatorError
from simulator.program import Step
from simulator.steps import execute_step

RNG = np.random.default_rng(5)


def _run(kind, inputs, **params):
    step = Step(kind, "s", [f"i{k}" for k in range(len(inputs))], ["o"], params)
    (out,), _ = execute_step(step, *inputs)
    return out


def _ref_quantize(x, scale, zp, lo, hi):
    """clamp(rint(f32(x / s)) + zp), NaN to lo (float64 from exact float32 quotients)."""
    with np.errstate(all="ignore"):
        v = (x / scale).astype(np.float32).astype(np.float64)
    v = np.where(np.isnan(v), lo - zp, np.clip(v, lo - zp, hi - zp))
    return (np.rint(v) + zp).astype(np.int64)


@pytest.mark.parametrize("dtype,lo,hi", [("uint8", 0, 255), ("int8", -8, 7), ("int16", -32768, 32767)])
def test_blocked_quantize_and_dequantize(dtype, lo, hi):
    x = (RNG.standard_normal((2, 7, 3)) * 40).astype(np.float32)
    x[0, 0, 0], x[1, 6, 2], x[0, 3, 1] = np.nan, np.inf, -np.inf
    scale = RNG.uniform(0.05, 0.5, (2, 3, 3)).astype(np.float32)   # blocks of 3 along axis 1
    zp = RNG.integers(lo, hi + 1, (2, 3, 3))
    x[1, :3, 0] = (np.array([0.5, 1.5, -2.5]) * scale[1, 0, 0]).astype(np.float32)   # ties
    full_s = np.repeat(scale, 3, axis=1)[:, :7]
    full_z = np.repeat(zp, 3, axis=1)[:, :7]
    q = _run("quantize_blocked", [x], scale=scale, zero_point=zp, axis=1, block_size=3,
             out_dtype="int8" if dtype == "int8" else dtype, out_min=lo, out_max=hi)
    assert np.array_equal(q.astype(np.int64), _ref_quantize(x, full_s, full_z, lo, hi))
    y = _run("dequantize_blocked", [q], scale=scale, zero_point=zp, axis=-2, block_size=3)
    want = ((q.astype(np.int64) - full_z).astype(np.float32) * full_s).astype(np.float32)
    assert y.dtype == np.float32 and np.array_equal(y, want)
    with pytest.raises(SimulatorError, match="do not fit"):
        _run("dequantize_blocked", [q[:, :4]], scale=scale, zero_point=zp, axis=1, block_size=3)


@pytest.mark.parametrize("scale", [0.037, 0.0, np.inf, np.nan, 1e-45])
def test_quantize_runtime(scale):
    x = (RNG.standard_normal(50) * 10).astype(np.float32)
    x[:3] = [0.0, np.nan, -0.0]
    s, z = np.float32(scale), np.uint8(17)
    got = _run("quantize_runtime", [x, np.array(s), np.array(z)], out_dtype="uint8", out_min=0,
               out_max=255)
    assert got.dtype == np.uint8 and np.array_equal(got.astype(np.int64), _ref_quantize(x, s, 17, 0, 255))


def test_float_reduce_minmax_and_ieee_math():
    x = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    assert _run("float_reduce_minmax", [x], op="Min", axes=(0, 1, 2), keepdims=False).shape == ()
    assert _run("float_reduce_minmax", [x], op="Min", axes=(0, 1, 2), keepdims=False) == x.min()
    assert np.array_equal(_run("float_reduce_minmax", [x], op="Max", axes=(1,), keepdims=True),
                          x.max(axis=1, keepdims=True))
    x[1, 2, 3] = np.nan
    with pytest.raises(SimulatorError, match="NaN"):
        _run("float_reduce_minmax", [x], op="Max", axes=(0, 1, 2), keepdims=False)
    halves = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 1e30, np.inf], np.float32)
    assert np.array_equal(_run("float_math", [halves], op="Round"),
                          np.array([-2, -2, -0, 0, 2, 2, 1e30, np.inf], np.float32))
    a, b = np.float32(3.0), np.float32(7.0)
    assert _run("float_math", [np.array(a), np.array(b)], op="Div") == np.float32(a / b)
    assert _run("float_math", [np.array(a), np.array(b)], op="Div").shape == ()
    assert _run("float_math", [np.array(np.float32(300)), np.array(np.float32(0)),
                               np.array(np.float32(255))], op="Clip") == 255
    assert _run("float_math", [x[0], np.float32(0)], op="Max").min() >= 0
    with pytest.raises(SimulatorError, match="takes 3 inputs"):
        _run("float_math", [x], op="Clip")
