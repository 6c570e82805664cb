"""Kernel launches: what a step does once the shapes and dtypes of its inputs are known.

A :class:`Launch` is a short list of calls to jitted kernels with fixed arguments, the scratch
buffers those calls write (allocated per run) and the step outputs (buffers, or reshaped views of
buffers or inputs). Nothing in it looks at input *values*: every decision that depends only on
shapes, dtypes and parameters has been taken when it was built.

Two things run launches: :meth:`Launch.execute`, from Python (the interpreter in
:mod:`simulator.run`), and :mod:`simulator.compiled`, which writes the launches of a whole
program into one jitted function so a small batch pays no per-step Python cost. Both run the same
calls with the same arguments, so they compute the same bits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from simulator.kernels.portable_glue import read_only


@dataclass(frozen=True)
class In:
    """The step's ``index``-th input, viewed with ``shape`` (``None``: as it is). Inputs are
    C-contiguous when a launch runs."""

    index: int
    shape: tuple | None = None


@dataclass(frozen=True)
class Tmp:
    """Scratch buffer ``index`` of the launch, viewed with ``shape`` (``None``: as allocated)."""

    index: int
    shape: tuple | None = None


@dataclass(frozen=True)
class Call:
    """``fn(*args)``; ``counted``: the call returns the number of saturated outputs."""

    fn: object
    args: tuple
    counted: bool = False


def _read_only(arg):
    """A read-only view of an array argument (the array itself stays writable)."""
    return read_only(arg) if isinstance(arg, np.ndarray) else arg


@dataclass(frozen=True)
class Launch:
    temps: tuple    # ((shape, dtype name), ...) allocated with np.empty per run
    calls: tuple    # (Call, ...) in order
    outputs: tuple  # (In | Tmp, ...) the step outputs

    def __post_init__(self):
        # Array arguments are the launch's constants (weights, tables, requantization vectors).
        # A compiled program holds them as numba globals, which numba types as read-only
        # arrays; passed writable from here, every kernel would be compiled twice, once per
        # flag (81 s of a cold test suite's compilation). Read-only views give both runners
        # one type, and a kernel that wrote to a constant would fail to compile.
        object.__setattr__(self, "calls", tuple(
            Call(c.fn, tuple(_read_only(a) for a in c.args), c.counted) for c in self.calls))

    def execute(self, inputs):
        """``(outputs, n_saturated)`` for C-contiguous ``inputs``."""
        temps = [np.empty(shape, dtype=dtype) for shape, dtype in self.temps]
        # Kernels read their inputs and never write them: passed read-only, as compiled
        # programs pass them too (simulator.compiled), each kernel has one type per dtype
        # whether its operand is an activation or a constant (an add of either compiled twice or
        # three times: 83 s of a cold test suite's compilation), and a kernel that wrote to an
        # input would fail to compile.
        read = [_read_only(x) for x in inputs]

        def resolve(arg, ins):
            if isinstance(arg, In):
                arr = ins[arg.index]
            elif isinstance(arg, Tmp):
                arr = temps[arg.index]
            else:
                return arg
            return arr if arg.shape is None else arr.reshape(arg.shape)

        n_sat = 0
        for call in self.calls:
            res = call.fn(*[resolve(a, read) for a in call.args])
            if call.counted:
                n_sat += int(res)
        # outputs that are views of an input keep the input's flags
        return tuple(resolve(o, inputs) for o in self.outputs), n_sat

    def then(self, other):
        """This launch followed by ``other``, whose input 0 is this launch's (single) output."""
        if len(self.outputs) != 1:
            raise ValueError("then: the first launch must have one output")
        shift = len(self.temps)
        first = self.outputs[0]

        def moved(arg):
            if isinstance(arg, Tmp):
                return Tmp(arg.index + shift, arg.shape)
            if isinstance(arg, In):
                if arg.index != 0:
                    raise ValueError("then: the second launch may only read input 0")
                return type(first)(first.index, arg.shape if arg.shape is not None
                                   else first.shape)
            return arg

        calls = tuple(Call(c.fn, tuple(moved(a) for a in c.args), c.counted)
                      for c in other.calls)
        return Launch(self.temps + other.temps, self.calls + calls,
                      tuple(moved(o) for o in other.outputs))

    def output_specs(self, in_specs):
        """``((shape, dtype), ...)`` of the outputs for inputs ``in_specs`` (arrays or anything
        with ``shape`` and ``dtype``)."""
        specs = []
        for out in self.outputs:
            if isinstance(out, In):
                shape, dtype = in_specs[out.index].shape, in_specs[out.index].dtype
            else:
                shape, dtype = self.temps[out.index]
            specs.append((tuple(shape if out.shape is None else out.shape), np.dtype(dtype)))
        return tuple(specs)


@njit(cache=True)
def cast_copy(src, dst):
    """``dst[i] = src[i]`` with the destination's dtype (values already in its range)."""
    for i in range(src.shape[0]):
        dst[i] = src[i]


__all__ = ["Call", "In", "Launch", "Tmp", "cast_copy"]
