"""Reference accumulator: a register of ``bits`` bits receiving additions one at a time."""
from __future__ import annotations

from . import primitives_ref as P


class Accumulator:
    """``acc = 0``, then ``add(term)`` for the bias and every product, in the documented order.

    ``mode``: 'wrap' (exact sum, wrapped when read), 'saturate' (clamp after every addition) or
    'error' (like wrap; the caller raises if ``overflowed``). ``overflowed`` is set when a partial
    sum leaves the range.
    """

    def __init__(self, bits: int, mode: str):
        self.lo, self.hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self.bits, self.mode = bits, mode
        self.value = 0
        self.overflowed = False

    def add(self, term: int) -> None:
        v = self.value + int(term)
        if v < self.lo or v > self.hi:
            self.overflowed = True
            if self.mode == "saturate":
                v = P.saturate_to(v, self.lo, self.hi)
        self.value = v

    def read(self) -> int:
        return P.wrap(self.value, self.bits) if self.mode == "wrap" else self.value
