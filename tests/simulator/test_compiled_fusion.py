"""The batch-1 speed work (issue 18) against plain references:

- the lean fixed-point add (:mod:`simulator.kernels.add_i32`: rounding as an offset, zero points
  folded into one constant) against an int64/Python reference of ``clamp(round(((a - za) * ma +
  (b - zb) * mb) * mult / 2**s) + zp)`` for every rounding rule, on random codes, the dtype
  ends, ties (small shifts) and saturating multipliers, lengths around the 16-lane blocks, with
  each launch checked to take the lean kernel exactly when its bound holds; once more in a child
  process with ``SIMULATOR_KERNELS=portable``;
- a residual block (conv, conv, add) compiled as one program against the step-by-step
  interpreter, on random and extreme inputs.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from simulator.kernels import add_i32
from simulator.kernels import eltwise as elt_k
from simulator.rounding import CODES

# (a, b, output) dtypes: each is one more compiled specialisation per rounding rule
_DTYPES = ((np.int8, np.int8, "int8"), (np.uint8, np.uint8, "uint8"), (np.int16, np.uint8, "int8"))


def _round_ref(p, s, mode):
    """``round(p / 2**s)`` by ``mode`` in Python integers (``p`` int64 array)."""
    q = p >> s
    rem = p - (q << s)
    twice = 2 * rem
    full = np.int64(1) << s
    if mode == "half_up":
        up = twice >= full
    elif mode == "half_down":
        up = twice > full
    elif mode == "half_away":
        up = np.where(p >= 0, twice >= full, twice > full)
    elif mode == "half_even":
        up = (twice > full) | ((twice == full) & (q % 2 == 1))
    elif mode == "toward_zero":
        up = (p < 0) & (rem != 0)
    else:  # floor
        up = np.zeros(p.shape, dtype=bool)
    return q + up


def _add_ref(a, b, za, zb, ma, mb, mult, s, mode, zp, lo, hi):
    p = ((a.astype(np.int64) - za) * ma + (b.astype(np.int64) - zb) * mb) * mult
    v = _round_ref(p, s, mode) + zp
    return np.clip(v, lo, hi), int(((v < lo) | (v > hi)).sum())


def _codes(rng, dtype, n, fill):
    info = np.iinfo(dtype)
    if fill == "min":
        return np.full(n, info.min, dtype=dtype)
    if fill == "max":
        return np.full(n, info.max, dtype=dtype)
    if fill == "ends":
        return rng.choice(np.array([info.min, info.max], dtype=dtype), n)
    return rng.integers(info.min, info.max, n, endpoint=True).astype(dtype)


def _check_adds(seed, n_cases, modes=None, dtypes=_DTYPES):
    """Random add parameters of every rounding rule; returns how many took the lean kernel."""
    rng = np.random.default_rng(seed)
    modes = modes or [m for m, c in CODES.items() if c in add_i32.ROUNDINGS]
    lean = 0
    for case in range(n_cases):
        mode = modes[case % len(modes)]
        da, db, out_dtype = dtypes[int(rng.integers(0, len(dtypes)))]
        ia, ib = np.iinfo(da), np.iinfo(db)
        # zero points anywhere in the dtype, often at its ends
        za = int(rng.choice([ia.min, ia.max, rng.integers(ia.min, ia.max + 1)]))
        zb = int(rng.choice([ib.min, ib.max, rng.integers(ib.min, ib.max + 1)]))
        s = int(rng.integers(1, 31)) if case % 3 else int(rng.integers(1, 4))  # ties when small
        span = max(abs(int(ia.min) - za), abs(int(ia.max) - za)) + \
            max(abs(int(ib.min) - zb), abs(int(ib.max) - zb))
        # multipliers from tiny (most outputs clamp to the zero point) to the largest the
        # int32 bound allows (most outputs saturate), signed (a subtraction)
        top = max(1, (2**31 - 2**s) // span // 2)
        ma = int(rng.integers(-top, top + 1)) or 1
        mb = int(rng.integers(-top, top + 1))
        mult = 1 if case % 4 else int(rng.integers(1, 4))
        if mult > 1:
            ma, mb = ma // mult, mb // mult
        rq_mode = "fixed" if mult > 1 else "shift"
        oinfo = np.iinfo(out_dtype)
        zp = int(rng.choice([oinfo.min, oinfo.max, rng.integers(oinfo.min, oinfo.max + 1)]))
        n = int(rng.choice([1, 15, 16, 17, 33, 250]))
        fill = ("random", "min", "max", "ends")[case % 4]
        a = _codes(rng, da, n, fill)
        b = _codes(rng, db, n, "random" if case % 5 else fill)
        add = elt_k.AddFixed(zero_point_a=za, zero_point_b=zb, multiplier_a=ma,
                             multiplier_b=mb, rq_mode=rq_mode,
                             rq_multiplier=np.array([mult]), rq_shift=np.array([s]),
                             rq_rounding=mode, out_zero_point=zp, out_min=int(oinfo.min),
                             out_max=int(oinfo.max), out_dtype=out_dtype)
        launch = add.launch(a.shape, a.dtype, b.dtype)
        bound = (max(abs(int(ia.min) - za), abs(int(ia.max) - za)) * abs(ma)
                 + max(abs(int(ib.min) - zb), abs(int(ib.max) - zb)) * abs(mb)) * mult
        expect_lean = add_i32.applies(CODES[mode], s, bound) and bound < 2**31
        took = launch.calls[0].fn in add_i32.kernels(CODES[mode])
        assert took == expect_lean, (mode, s, bound)
        lean += took
        out, n_sat = add.run(a, b)
        want, want_sat = _add_ref(a, b, za, zb, ma, mb, mult, s, mode, zp, int(oinfo.min),
                                  int(oinfo.max))
        np.testing.assert_array_equal(out.astype(np.int64), want,
                                      err_msg=f"case {case}: {mode} s={s} ma={ma} mb={mb}")
        assert n_sat == want_sat, case
    return lean


def test_lean_add_matches_reference():
    assert _check_adds(18, 96) >= 48  # most cases are inside the lean kernel's bound


def test_lean_add_bound_edge():
    """``|p| + 2**s`` just below and just at 2**31: lean, then the general kernel; both exact
    at the extreme codes."""
    s = 30
    edge = (2**31 - 2**s - 1) // 255  # largest ma with 255 * ma + 2**s < 2**31
    for ma, lean in ((edge, True), (edge + 1, False)):
        # int8 a with za = 127: |a - za| <= 255; b unused (mb = 0)
        assert add_i32.applies(CODES["half_away"], s, 255 * ma) is lean
        a = np.array([-128, 127, -127, 0] * 5, dtype=np.int8)
        b = np.zeros_like(a)
        add = elt_k.AddFixed(zero_point_a=127, zero_point_b=0, multiplier_a=-ma,
                             multiplier_b=0, rq_mode="shift", rq_multiplier=np.array([1]),
                             rq_shift=np.array([s]), rq_rounding="half_away",
                             out_zero_point=0, out_min=-128, out_max=127, out_dtype="int8")
        took = add.launch(a.shape, a.dtype, b.dtype).calls[0].fn
        assert (took in add_i32.kernels(CODES["half_away"])) is lean
        out, n_sat = add.run(a, b)
        want, want_sat = _add_ref(a, b, 127, 0, -ma, 0, 1, s, "half_away", 0, -128, 127)
        np.testing.assert_array_equal(out.astype(np.int64), want)
        assert n_sat == want_sat


@pytest.mark.slow
def test_lean_add_portable_process():
    """The same checks where the process runs the portable kernels."""
    if os.environ.get("SIMULATOR_KERNELS") == "portable":
        pytest.skip("this process already runs the portable kernels")
    env = {k: v for k, v in os.environ.items()
           if k not in ("SIMULATOR_KERNELS", "SIMULATOR_SIMD", "SIMULATOR_AMX",
                        "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    env["SIMULATOR_KERNELS"] = "portable"
    code = ("import sys; sys.path.insert(0, 'tests/simulator'); import test_compiled_fusion as t;"
            "from simulator.capabilities import capabilities;"
            "assert capabilities().kernels == 'portable';"
            "print(t._check_adds(19, 24, ['half_away', 'half_even'], t._DTYPES[:1]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) > 0


# --- compiled programs: bounded epilogue and conv + add fusion against the interpreter ----------
def _program(seed=1):
    """Two residual blocks (the add reads an earlier conv's output; then both add operands are
    convs that a compiled program holds back) and a pointwise conv whose 25 positions end in a
    partial 8-position block, added to the program input. All ``fp32`` half to even; the
    pointwise conv's multipliers are too large for the bounded epilogue (and saturate)."""
    from simulator.program import Program, Step, TensorSpec

    rng = np.random.default_rng(seed)

    def w(shape):
        return rng.integers(-128, 128, shape).astype(np.int8)

    def rq(n, lo=1e-3, hi=6e-3):
        return {"rq_mode": "fp32", "rq_rounding": "half_even",
                "rq_multiplier": rng.uniform(lo, hi, n).astype(np.float32)}

    out8 = {"out_dtype": "int8", "out_min": -128, "out_max": 127}

    def conv(name, x, y, m, c, k, strides=(1, 1), pads=(1, 1, 1, 1), xzp=-128, zp=-128,
             scale=(1e-3, 6e-3)):
        return Step("conv", name, (x,), (y,), {
            "weight": w((m, c, k, k)), "bias": rng.integers(-3000, 3000, m),
            "input_zero_point": xzp, "strides": strides, "pads": pads, "layout": "NHWC",
            "out_zero_point": zp, **rq(m, *scale), **out8})

    def add(name, a, b, y, za, zb, rnd, zp=-128):
        return Step("add", name, (a, b), (y,), {
            "mode": "fixed", "zero_point_a": za, "zero_point_b": zb,
            "multiplier_a": int(rng.integers(1 << 13, 1 << 15)),
            "multiplier_b": int(rng.integers(1 << 13, 1 << 15)), "rq_mode": "shift",
            "rq_shift": np.array([15]), "rq_rounding": rnd, "out_zero_point": zp, **out8})

    steps = (
        conv("c1", "x", "a", 16, 16, 3, xzp=3),
        conv("c2", "a", "b", 16, 16, 3, zp=5),
        add("r1", "a", "b", "s", -128, 5, "half_up"),
        conv("c3", "s", "p", 32, 16, 1, strides=(2, 2), pads=(0, 0, 0, 0), zp=-7),
        conv("c4", "s", "q", 32, 16, 3, strides=(2, 2), pads=(0, 0, 1, 1), zp=9),
        add("r2", "p", "q", "t", -7, 9, "half_even", zp=-3),
        conv("c5", "v", "u", 16, 16, 1, pads=(0, 0, 0, 0), xzp=-2, zp=4, scale=(2e4, 4e4)),
        add("r3", "v", "u", "y2", -2, 4, "half_away", zp=2),
    )
    return Program((TensorSpec("x", "int8", (None, 16, 16, 16)),
                    TensorSpec("v", "int8", (None, 5, 5, 16))),
                   (TensorSpec("t", "int8", (None, 8, 8, 32)),
                    TensorSpec("y2", "int8", (None, 5, 5, 16))), steps)


def _feeds(seed, fill=None):
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.integers(-128, 128, (1, 16, 16, 16)).astype(np.int8),
             "v": rng.integers(-128, 128, (1, 5, 5, 16)).astype(np.int8)}
    if fill is not None:
        for arr in feeds.values():
            arr[...] = fill
    return feeds


def test_fused_program_matches_interpreter():
    from simulator.capabilities import capabilities
    from simulator.compiled import compile_program, last_reason
    from simulator.kernels import rows_fused
    from simulator.run import run

    if not capabilities().vnni:
        pytest.skip("the fused kernels extend the VNNI row kernel")
    program = _program()
    compiled = compile_program(program, _feeds(0), threads=1)
    assert compiled is not None, last_reason()
    kernels = [k for k in compiled.fn.py_func.__globals__.values()
               if getattr(getattr(k, "py_func", None), "__module__", "") == rows_fused.__name__]
    # all three adds fused (the second after both its operands were held back); the plain
    # conv on the bounded epilogue, the pointwise one (large multipliers) on the general one
    assert compiled.source.count(">> 32") == 3
    assert sorted(k.__name__ for k in kernels) == ["rows"] + ["rows_add"] * 3  # 3 roundings
    assert sorted(rows_fused.spec_of(k)[2] for k in kernels) == [False, True, True, True]
    saturated = 0
    for seed, fill in ((0, None), (1, None), (2, -128), (3, 127), (4, None)):
        feeds = _feeds(seed, fill)
        want = run(program, feeds, compile="no")
        got = compiled.run(feeds)
        for name in want.outputs:
            np.testing.assert_array_equal(got.outputs[name], want.outputs[name], err_msg=name)
        assert dict(got.stats) == dict(want.stats), seed
        saturated += sum(s["out_saturated"] for s in want.stats.values())
    assert saturated > 0  # the counters are compared, not all zero


def test_fp32_bound_edge():
    """The bounded epilogue's test: ``(|bias| + 255 * sum|w|) * m`` just below 2**30 holds,
    just above does not; an accumulator bound outside int32 never does."""
    from simulator.kernels import rows_fused

    nk = 2
    wpk = np.zeros((1, nk, 16, 4), dtype=np.int8)
    wpk[0, :, 3, :] = -128  # channel 3: sum |w| = 1024
    biasp = np.zeros(32, dtype=np.int32)
    biasp[3] = -1000
    acc = 1000 + 255 * 1024
    mf = np.zeros(32, dtype=np.float32)
    limit = 2**30 * (1 - 2**-20)
    mf[3] = np.nextafter(np.float32(limit / acc), np.float32(0))
    assert rows_fused.fp32_bounded(wpk.reshape(-1), biasp, mf, 1, nk, 16)
    mf[3] = np.nextafter(np.float32(limit / acc), np.float32(1e9))
    assert not rows_fused.fp32_bounded(wpk.reshape(-1), biasp, mf, 1, nk, 16)
    biasp[3] = 2**31 - 1
    mf[3] = 1e-9
    assert not rows_fused.fp32_bounded(wpk.reshape(-1), biasp, mf, 1, nk, 16)
