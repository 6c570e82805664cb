"""The rounding modes: one table, from which every layer takes its rounding.

A mode rounds an exact real value ``v`` to an integer. With ``q = floor(v)`` and ``f = v - q`` in
[0, 1), every mode returns ``q`` or ``q + 1``, and it returns ``q + 1`` iff

    (f > 1/2 and above(q))  or  (f == 1/2 and tie(q))  or  (0 < f < 1/2 and below(q))

where ``above``, ``tie`` and ``below`` are predicates of the sign and parity of ``q`` only
(:class:`Pred`). The rule is data, so the simulator's jitted scalar code, the LLVM IR of the
16-lane epilogue (``simulator.kernels.simd``), the numpy :func:`round_array` of the lowering and
the diagnosis of ``mrq verify``, the profile vocabulary (``mrq.hw_profile.ROUNDING_MODES``, checked
against ``hw_profiles/schema.json`` by a test) all follow :data:`MODES`; adding a mode is one
entry there (and the schema enum, which the test keeps honest). The derived forms recognise the
five named predicates to emit the cheapest code for them, and handle any other truth table too.

A mode's code is its position in :data:`MODES`: jitted code receives codes, never names.

Pure Python and numpy on purpose: ``mrq`` reads the names without loading numba.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Pred", "Mode", "NEVER", "ALWAYS", "Q_NONNEG", "Q_NEG", "Q_ODD", "MODES", "NAMES",
           "CODES", "RULE_TABLE", "get_mode", "round_up", "round_array", "q_class"]


class Pred(NamedTuple):
    """A predicate of ``q``, as its truth table: bit ``q_class(q)`` of ``table``."""

    name: str
    table: int


def q_class(neg, odd):
    """The truth-table bit index of a ``q`` with sign ``neg`` (q < 0) and parity ``odd``."""
    return 2 * neg + odd


#                 q class:  3 = neg odd, 2 = neg even, 1 = nonneg odd, 0 = nonneg even
NEVER = Pred("never", 0b0000)
ALWAYS = Pred("always", 0b1111)
Q_NONNEG = Pred("q_nonneg", 0b0011)
Q_NEG = Pred("q_neg", 0b1100)
Q_ODD = Pred("q_odd", 0b1010)


class Mode(NamedTuple):
    """One rounding mode: ``q + 1`` iff the predicate of ``f``'s region holds (module doc)."""

    name: str
    above: Pred    # 1/2 < f < 1
    tie: Pred      # f == 1/2
    below: Pred    # 0 < f < 1/2
    doc: str

    @property
    def code(self) -> int:
        return CODES[self.name]


MODES: tuple[Mode, ...] = (
    Mode("half_even", ALWAYS, Q_ODD, NEVER, "RNE, ties to even (cvtps2dq, nearbyint)"),
    Mode("half_away", ALWAYS, Q_NONNEG, NEVER, "RHA, ties away from zero (std::round)"),
    Mode("half_up", ALWAYS, ALWAYS, NEVER, "RHU, ties toward +inf: floor(x + 1/2)"),
    Mode("floor", NEVER, NEVER, NEVER, "toward -inf (arithmetic >>)"),
    Mode("toward_zero", Q_NEG, Q_NEG, Q_NEG, "truncation (C casts)"),
    Mode("half_down", ALWAYS, NEVER, NEVER, "ties toward -inf: ceil(x - 1/2)"),
)

NAMES: tuple[str, ...] = tuple(m.name for m in MODES)
CODES: dict[str, int] = {m.name: i for i, m in enumerate(MODES)}

# int64 [n_modes, 3]: the truth tables of (above, tie, below) by code, for jitted code. numba
# freezes a global array into the compiled code, so with a constant code the loads fold away.
RULE_TABLE = np.array([[m.above.table, m.tie.table, m.below.table] for m in MODES],
                      dtype=np.int64)
RULE_TABLE.setflags(write=False)


def get_mode(which) -> Mode:
    """The :class:`Mode` of a name or a code; ``KeyError`` if there is none."""
    if isinstance(which, str):
        return MODES[CODES[which]]
    if isinstance(which, (int, np.integer)) and not isinstance(which, bool) \
            and 0 <= int(which) < len(MODES):
        return MODES[int(which)]
    raise KeyError(which)


def round_up(q, cmp_half, nonzero, which):
    """Elementwise "round up": ``q`` the floor (int64, float or object array of Python ints),
    ``cmp_half`` -1/0/+1 as ``f`` is below/at/above 1/2, ``nonzero`` whether ``f != 0``.
    Returns a bool array."""
    m = get_mode(which)
    q = np.asarray(q)
    cmp_half = np.asarray(cmp_half)
    nonzero = np.asarray(nonzero, dtype=bool)
    cls = q_class(np.asarray(q < 0, dtype=np.int64), np.asarray(q % 2 != 0, dtype=np.int64))

    def holds(p):
        return ((p.table >> cls) & 1).astype(bool)

    return nonzero & (((cmp_half > 0) & holds(m.above)) | ((cmp_half == 0) & holds(m.tie))
                      | ((cmp_half < 0) & holds(m.below)))


def round_array(x, which) -> np.ndarray:
    """``x`` (converted to float64) rounded with a mode, exactly, as float64 (same shape).

    Integers (every float64 of magnitude >= 2**52), +-inf and NaN come back unchanged. For the
    others ``floor(x) + 1/2`` is exact, so comparing with it is the exact tie test.
    """
    x = np.asarray(x, dtype=np.float64)
    q = np.floor(x)
    half = q + 0.5
    cmp_half = (x > half).astype(np.int64) - (x < half).astype(np.int64)
    with np.errstate(invalid="ignore"):
        return q + round_up(q, cmp_half, x != q, which)
