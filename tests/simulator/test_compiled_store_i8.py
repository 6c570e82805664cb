"""The saturating int8 store of the bounded fp32 row kernel (``rows_fused`` ``store_i8``, chosen
by :func:`simulator.fusion.refine` when a conv clamps to the whole int8 range) against a plain
numpy reference of the conv and its requantization (int64 accumulators, ``f32(acc) * m`` rounded
half to even, ``+ zp``, clamped to [-128, 127], saturations counted) and against the
step-by-step interpreter (whose kernel clamps with max/min): a 3x3 conv with a partial 16-channel
block (24 outputs), one with ``zp = 127``, and a pointwise conv whose 25 positions end in a
partial 8-position block; random inputs and every input at each extreme, saturating at both ends.
The kernel is VNNI code (the portable path has no row kernel to refine)."""
import numpy as np
import pytest
from test_compiled_fusion import _feeds  # the same two inputs, x and v

from simulator.program import Program, Step, TensorSpec


def _conv_ref(x, w, bias, xzp, pads, stride, m, zp):
    """NHWC conv (``w``: [M, C, KH, KW]) and fp32 half-to-even requantization to int8."""
    n, h, wd, c = x.shape
    mo, _, kh, kw = w.shape
    pt, pl, pb, pr = pads
    xp = np.full((n, h + pt + pb, wd + pl + pr, c), xzp, dtype=np.int64)
    xp[:, pt:pt + h, pl:pl + wd] = x
    oh = (h + pt + pb - kh) // stride + 1
    ow = (wd + pl + pr - kw) // stride + 1
    acc = np.zeros((n, oh, ow, mo), dtype=np.int64) + bias.astype(np.int64)
    for i in range(kh):
        for j in range(kw):
            win = xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride] - xzp
            acc += np.einsum("nhwc,mc->nhwm", win, w[:, :, i, j].astype(np.int64))
    r = np.rint(acc.astype(np.float32) * m.astype(np.float32)).astype(np.int64) + zp
    return np.clip(r, -128, 127).astype(np.int8), int(((r < -128) | (r > 127)).sum())


def _program():
    rng = np.random.default_rng(7)
    params = {}

    def conv(name, x, y, m, c, k, pads, zp, xzp, scale):
        p = {"weight": rng.integers(-128, 128, (m, c, k, k)).astype(np.int8),
             "bias": rng.integers(-30000, 30000, m), "input_zero_point": xzp,
             "strides": (1, 1), "pads": pads, "layout": "NHWC", "out_zero_point": zp,
             "rq_mode": "fp32", "rq_rounding": "half_even",
             "rq_multiplier": rng.uniform(*scale, m).astype(np.float32),
             "out_dtype": "int8", "out_min": -128, "out_max": 127}
        params[name] = p
        return Step("conv", name, (x,), (y,), p)

    steps = (conv("a", "x", "ya", 24, 16, 3, (1, 1, 1, 1), -128, 3, (1e-4, 2e-3)),
             conv("b", "ya", "yb", 16, 24, 3, (1, 1, 1, 1), 127, -128, (1e-4, 2e-3)),
             conv("c", "v", "yc", 16, 16, 1, (0, 0, 0, 0), 5, -2, (1e-3, 2e-2)))
    program = Program((TensorSpec("x", "int8", (None, 16, 16, 16)),
                       TensorSpec("v", "int8", (None, 5, 5, 16))),
                      (TensorSpec("ya", "int8", (None, 16, 16, 24)),
                       TensorSpec("yb", "int8", (None, 16, 16, 16)),
                       TensorSpec("yc", "int8", (None, 5, 5, 16))), steps)
    return program, params


def test_store_i8_matches_reference_and_interpreter():
    from simulator import fusion
    from simulator.capabilities import capabilities
    from simulator.compiled import compile_program, last_reason
    from simulator.kernels import rows_fused
    from simulator.run import run
    from simulator.steps import spec, step_launch

    if not capabilities().vnni:
        pytest.skip("the saturating store refines the VNNI row kernel")
    program, params = _program()
    # every conv's refined launch runs the store_i8 kernel
    shapes = {"x": (1, 16, 16, 16), "ya": (1, 16, 16, 24), "v": (1, 5, 5, 16)}
    for step in program.steps:
        launch = fusion.refine(step_launch(step, [spec(shapes[step.inputs[0]], np.int8)]))
        kind, rnd, bounded = rows_fused.spec_of(launch.calls[-1].fn)
        assert bounded, step.name
        assert launch.calls[-1].fn is rows_fused.kernels(kind, rnd, True, -1, True)[0], step.name
    compiled = compile_program(program, _feeds(0), threads=1)
    assert compiled is not None, last_reason()
    sat = {"low": 0, "high": 0}
    for seed, fill in ((0, None), (1, None), (2, -128), (3, 127)):
        feeds = _feeds(seed, fill)
        got = compiled.run(feeds)
        want = run(program, feeds, compile="no")
        inputs = dict(feeds)
        for step in program.steps:
            p = params[step.name]
            ref, n_sat = _conv_ref(inputs[step.inputs[0]], p["weight"], p["bias"],
                                   p["input_zero_point"], p["pads"], 1, p["rq_multiplier"],
                                   p["out_zero_point"])
            inputs[step.outputs[0]] = ref
            out = step.outputs[0]
            np.testing.assert_array_equal(got.outputs[out], ref, err_msg=f"{step.name} {seed}")
            np.testing.assert_array_equal(want.outputs[out], ref, err_msg=f"{step.name} {seed}")
            assert got.stats[step.name]["out_saturated"] == n_sat, (step.name, seed)
            assert want.stats[step.name]["out_saturated"] == n_sat, (step.name, seed)
            sat["low"] += int((ref == -128).sum())
            sat["high"] += int((ref == 127).sum())
    assert sat["low"] and sat["high"]  # both ends of the clamp were exercised
