"""``cast``: ONNX Cast between float32 and integer tensors that hold plain numbers (not
quantized codes), as ONNX Runtime's CPU kernel converts on x86-64."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.errors import KernelInputError, ProgramError
from simulator.steps.base import Params, register, stats

DTYPES = ("float32", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64",
          "bool")


@dataclass(frozen=True, kw_only=True, eq=False)
class CastParams(Params):
    """``to``: the output dtype. float32 -> signed integer truncates toward zero, and a NaN or
    a value outside the type gives the type's minimum (x86 ``cvttss2si``'s "integer
    indefinite"); float32 -> unsigned integer goes through int64 and wraps; integer ->
    float32 rounds to nearest even; integer -> integer wraps (C ``static_cast``); -> bool is
    ``x != 0``."""

    to: str

    def check(self, where_: str) -> None:
        if self.to not in DTYPES:
            raise ProgramError(f"{where_}: 'to' must be one of {list(DTYPES)}, got {self.to!r}")


def cast(x: np.ndarray, to: str) -> np.ndarray:
    dst = np.dtype(to)
    if x.dtype.name not in DTYPES:
        raise KernelInputError(f"cast input must be one of {list(DTYPES)}, got {x.dtype}")
    if dst == np.bool_:
        return x != 0
    if x.dtype == np.float32 and dst.kind in "iu":
        wide = np.int64 if dst.kind == "u" else dst
        info = np.iinfo(wide)
        # the float32 range that fits: [-2**(b-1), 2**(b-1)) exactly representable bounds
        inside = (x >= np.float32(info.min)) & (x < -np.float32(info.min))
        with np.errstate(invalid="ignore"):
            t = np.where(inside, np.trunc(x), 0).astype(wide)
        t = np.where(inside, t, info.min).astype(wide)
        return t.astype(dst)   # unsigned: the low bits of the int64 (as x86 compilers emit)
    return x.astype(dst)


def execute_cast(step, p, x):
    return (cast(x, p.to),), stats()


KIND = register("cast", CastParams, execute_cast)
