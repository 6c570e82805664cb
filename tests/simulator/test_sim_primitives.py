"""simulator.primitives against the exact references in tests/reference/primitives_ref.py."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from fractions import Fraction  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from simulator import primitives as prim  # noqa: E402
from tests.reference import primitives_ref as ref  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)
MODES = ref.MODES
CODES = prim.ROUNDING_CODES
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def sat64(v: int) -> int:
    return ref.saturate_to(v, I64_MIN, I64_MAX)


def lattice_i32():
    """gemmlowp's test values: +-(2**i + {-2..2}) for i in 0..30, int32 min/max neighbourhoods."""
    vals = set()
    for i in range(31):
        for d in (-2, -1, 0, 1, 2):
            for s in (1, -1):
                v = s * (2**i + d)
                if -(2**31) <= v < 2**31:
                    vals.add(v)
    vals.update([-(2**31), -(2**31) + 1, -(2**31) + 2, 2**31 - 1, 2**31 - 2, 2**31 - 3])
    return sorted(vals)


def test_rounding_codes_cover_the_program_modes():
    assert set(CODES) == set(MODES)
    assert len(set(CODES.values())) == len(MODES)


# --- round_float ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_round_float_ties_and_neighbours(mode):
    for k in range(-12, 13):
        for x in (k + 0.5, k - 0.25, k + 0.25, float(k), np.nextafter(k + 0.5, np.inf),
                  np.nextafter(k + 0.5, -np.inf)):
            assert prim.round_float(x, CODES[mode]) == ref.round_float(x, mode), (x, mode)


@SETTINGS
@given(x=st.floats(allow_nan=False, allow_infinity=False, min_value=-2.0**62, max_value=2.0**62),
       mode=st.sampled_from(MODES))
def test_round_float_random(x, mode):
    assert prim.round_float(x, CODES[mode]) == ref.round_float(x, mode)


@SETTINGS
@given(x=st.floats(width=32, allow_nan=False, allow_infinity=False), mode=st.sampled_from(MODES))
def test_round_float_f32_inputs_saturate(x, mode):
    x = np.float32(x)
    expected = sat64(ref.round_float(x, mode))
    assert prim.round_float(x, CODES[mode]) == expected


def test_round_float_specials():
    for mode in CODES.values():
        assert prim.round_float(np.nan, mode) == I64_MIN
        assert prim.round_float(np.inf, mode) == I64_MAX
        assert prim.round_float(-np.inf, mode) == I64_MIN
        assert prim.round_float(2.0**63, mode) == I64_MAX
        assert prim.round_float(-(2.0**63), mode) == I64_MIN


# --- integer shifts -------------------------------------------------------------------------------
@SETTINGS
@given(x=st.integers(I64_MIN, I64_MAX), shift=st.integers(-70, 130), mode=st.sampled_from(MODES))
def test_rounding_shift_right_random(x, shift, mode):
    got = prim.rounding_shift_right(x, shift, CODES[mode])
    assert got == sat64(ref.rounding_shift_right(x, shift, mode))


@pytest.mark.parametrize("mode", MODES)
def test_rounding_shift_right_ties(mode):
    for shift in list(range(1, 66)):
        for k in (-3, -2, -1, 0, 1, 2):
            base = (2 * k + 1) * (2 ** (shift - 1)) if shift <= 62 else k
            for x in (base - 1, base, base + 1, I64_MIN, I64_MAX, I64_MIN + 1):
                if I64_MIN <= x <= I64_MAX:
                    got = prim.rounding_shift_right(x, shift, CODES[mode])
                    assert got == ref.rounding_shift_right(x, shift, mode), (x, shift, mode)


@SETTINGS
@given(x=st.integers(-(2**62) + 1, 2**62 - 1), m=st.integers(-(2**32) + 1, 2**32 - 1),
       shift=st.integers(-70, 130), mode=st.sampled_from(MODES))
def test_mul_shift_round_random(x, m, shift, mode):
    got = prim.mul_shift_round(x, m, shift, CODES[mode])
    assert got == sat64(ref.mul_shift_round(x, m, shift, mode))


@pytest.mark.parametrize("mode", MODES)
def test_mul_shift_round_edges_and_ties(mode):
    xs = [0, 1, -1, 3, -3, 2**62 - 1, -(2**62) + 1, 2**31, -(2**31), 2**31 - 1, 12345678901]
    ms = [1, -1, 3, 2**32 - 1, -(2**32) + 1, 2**31, 1518500250]
    for x in xs:
        for m in ms:
            for shift in (-3, 0, 1, 2, 30, 31, 32, 33, 61, 62, 63, 64, 93, 94, 95, 96, 126):
                got = prim.mul_shift_round(x, m, shift, CODES[mode])
                assert got == sat64(ref.mul_shift_round(x, m, shift, mode)), (x, m, shift)
    for shift in range(1, 40):  # exact ties: x*m = (2k+1) * 2**(shift-1)
        for k in (-2, -1, 0, 1):
            x = (2 * k + 1) * 2 ** (shift - 1)
            if abs(x) < 2**62:
                assert prim.mul_shift_round(x, 1, shift, CODES[mode]) == ref.mul_shift_round(
                    x, 1, shift, mode)


@SETTINGS
@given(x=st.integers(-(2**61), 2**61), d=st.integers(1, 2**20), mode=st.sampled_from(MODES))
def test_rounding_divide_random(x, d, mode):
    assert prim.rounding_divide(x, d, CODES[mode]) == ref.rounding_divide(x, d, mode)


@pytest.mark.parametrize("mode", MODES)
def test_rounding_divide_ties(mode):
    for d in (1, 2, 3, 4, 6, 9, 10):
        for x in range(-3 * d, 3 * d + 1):
            assert prim.rounding_divide(x, d, CODES[mode]) == ref.rounding_divide(x, d, mode)


# --- widths ---------------------------------------------------------------------------------------
@SETTINGS
@given(x=st.integers(I64_MIN, I64_MAX), bits=st.integers(1, 64))
def test_wrap_and_saturate_bits(x, bits):
    assert prim.wrap_bits(x, bits) == ref.wrap(x, bits)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    assert prim.saturate_bits(x, bits) == ref.saturate_to(x, lo, hi)


@SETTINGS
@given(x=st.integers(I64_MIN, I64_MAX), n=st.integers(0, 70))
def test_saturating_left_shift(x, n):
    assert prim.saturating_left_shift(x, n) == sat64(x * 2**n)


@SETTINGS
@given(acc=st.integers(-(2**40), 2**40), term=st.integers(-(2**34), 2**34),
       bits=st.sampled_from([16, 20, 24, 32, 40]), saturating=st.booleans())
def test_acc_add(acc, term, bits, saturating):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if saturating:
        acc = ref.saturate_to(acc, lo, hi)
    v, flag = prim.acc_add(acc, term, lo, hi, saturating)
    exact = acc + term
    assert flag == (not lo <= exact <= hi)
    assert v == (ref.saturate_to(exact, lo, hi) if saturating else exact)


def test_acc_add_int64_edges():
    lo, hi = I64_MIN, I64_MAX
    assert prim.acc_add(hi, 1, lo, hi, True) == (hi, True)
    assert prim.acc_add(lo, -1, lo, hi, True) == (lo, True)
    assert prim.acc_add(hi - 5, 5, lo, hi, True) == (hi, False)
    assert prim.acc_add(lo + 5, -5, lo, hi, False) == (lo, False)


# --- gemmlowp / TFLite / ruy ----------------------------------------------------------------------
def test_srdhm_edge_lattice_exhaustive():
    vals = lattice_i32()
    for a in vals:
        for b in vals[::3]:
            assert prim.srdhm_i32(a, b) == ref.srdhm(a, b), (a, b)
    assert prim.srdhm_i32(-(2**31), -(2**31)) == 2**31 - 1


def test_rounding_divide_by_pot_edge_lattice():
    for x in lattice_i32():
        for e in range(32):
            assert prim.rounding_divide_by_pot_i32(x, e) == ref.rounding_divide_by_pot(x, e)


def test_srdhm_random_lcg():
    """gemmlowp's LCG stream (random * 1664525 + 1013904223) as extra int32 operands."""
    r = 1
    vals = []
    for _ in range(600):
        r = (r * 1664525 + 1013904223) % 2**32
        vals.append(r - 2**32 if r >= 2**31 else r)
    for a, b in zip(vals[::2], vals[1::2]):
        assert prim.srdhm_i32(a, b) == ref.srdhm(a, b)
        assert prim.ruy_mul_high_rhu_i32(a, b) == min((a * b + 2**30) >> 31, 2**31 - 1)


@SETTINGS
@given(x=st.integers(-(2**31), 2**31 - 1), m=st.integers(0, 2**31 - 1), shift=st.integers(-31, 30))
def test_mbqm_both_variants(x, m, shift):
    assert prim.multiply_by_quantized_multiplier(x, m, shift, False) == ref.mbqm(x, m, shift)
    assert prim.multiply_by_quantized_multiplier(x, m, shift, True) == ref.mbqm_ruy(x, m, shift)


def test_mbqm_lattice():
    vals = lattice_i32()
    for x in vals[::2]:
        for m in (2**30, 2**31 - 1, 1518500250, 1073741825, 0):
            for shift in (-31, -20, -5, -1, 0, 1, 7, 30):
                assert prim.multiply_by_quantized_multiplier(x, m, shift, False) == ref.mbqm(
                    x, m, shift)
                assert prim.multiply_by_quantized_multiplier(x, m, shift, True) == ref.mbqm_ruy(
                    x, m, shift)


# --- float32 --------------------------------------------------------------------------------------
f32_finite = st.floats(width=32, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(a=f32_finite, b=f32_finite)
def test_f32_ops_match_numpy_float32(a, b):
    a, b = np.float32(a), np.float32(b)
    with np.errstate(all="ignore"):
        assert np.array_equal(prim.f32_mul(a, b), a * b, equal_nan=True)
        assert np.array_equal(prim.f32_add(a, b), a + b, equal_nan=True)
        assert np.array_equal(prim.f32_sub(a, b), a - b, equal_nan=True)
        if b != 0:
            assert np.array_equal(prim.f32_div(a, b), a / b, equal_nan=True)


@SETTINGS
@given(x=st.integers(I64_MIN, I64_MAX))
def test_int_to_f32_random(x):
    assert prim.int_to_f32(x) == ref.int_to_f32(x)


def test_int_to_f32_rounding_boundaries():
    for e in range(23, 63):
        for base in (2**e, 2**e + 2 ** (e - 24), 3 * 2 ** (e - 24) + 2**e):
            for d in (-1, 0, 1):
                for s in (1, -1):
                    x = s * (base + d)
                    if I64_MIN <= x <= I64_MAX:
                        assert prim.int_to_f32(x) == ref.int_to_f32(x), x


fma_operand = st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-(2.0**50),
                        max_value=2.0**50)


@SETTINGS
@given(a=fma_operand, b=fma_operand, c=fma_operand)
def test_fma_f32_random(a, b, c):
    a, b, c = np.float32(a), np.float32(b), np.float32(c)
    assert prim.fma_f32(a, b, c) == ref.fma_f32(a, b, c)


def test_fma_f32_double_rounding_cases():
    """a*b exactly halfway between two float32 values; a tiny c decides the direction. A plain
    float64 sum would land on the midpoint and round to even: wrong for half of these."""
    cases = 0
    for k in range(1, 40):
        a = np.float32(1 + 2.0**-12 * k)
        b = np.float32(1 + 2.0**-12)
        for c in (np.float32(2.0**-60), np.float32(-(2.0**-60)), np.float32(2.0**-40),
                  np.float32(0.0), np.float32(-(2.0**-30))):
            got = prim.fma_f32(a, b, c)
            want = ref.fma_f32(a, b, c)
            assert got == want, (a, b, c)
            exact = Fraction(float(a)) * Fraction(float(b))
            if float(exact) != float(np.float32(float(exact))):
                cases += 1
    assert cases > 0
    # cancellation: a*b + c with c ~ -a*b
    rng = np.random.default_rng(7)
    for _ in range(500):
        a, b = (np.float32(v) for v in rng.uniform(-4, 4, 2))
        c = np.float32(-(a * b)) + np.float32(rng.integers(-3, 4)) * np.float32(2.0**-30)
        assert prim.fma_f32(a, b, c) == ref.fma_f32(a, b, c)
