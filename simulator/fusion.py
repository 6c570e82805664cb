"""Rewrites of launches that only a whole compiled program can make (:mod:`simulator.compiled`).

The interpreter runs one step at a time; a compiled program sees every launch before it runs, so
it can swap a kernel for a cheaper one whose preconditions the program's constants prove, or let
one step's kernel finish the next step's work:

- :func:`refine`: a ``vnni_rows`` conv with the ``fp32`` half-to-even epilogue whose products
  are bounded (:func:`simulator.kernels.rows_fused.fp32_bounded`) runs the bounded epilogue,
  narrowed to int8 by a saturating store when it clamps to the whole int8 range;
- :func:`fused_add`: a ``vnni_rows`` conv whose output feeds only a lean fixed-point add
  (:mod:`simulator.kernels.add_i32`) computes the add in its epilogue; the program then never
  stores the conv's output (:func:`holds` says which convs to hold back until their add).

Every rewritten call computes the bits of the calls it replaces (the kernels' docstrings say
why); tests/simulator/test_compiled_fusion.py compares compiled programs with the interpreter.
"""
from __future__ import annotations

import numpy as np

from simulator.kernels import add_i32, rows_fused, vnni_rows
from simulator.kernels import epilogue as ep_k
from simulator.launch import Call, In, Tmp
from simulator.rounding import CODES

# positions in the vnni_rows.rows arguments
_KOFF, _NBG, _M_OUT, _WPK, _BIASP, _MF = 8, 9, 10, 11, 12, 13
_LO, _HI, _OUT = 19, 20, 21


def _bounded(call, kind, rnd):
    if kind != ep_k.EP_FP32 or rnd != CODES["half_even"]:
        return False
    a = call.args
    return rows_fused.fp32_bounded(a[_WPK], a[_BIASP], a[_MF], int(a[_NBG]),
                                   int(a[_KOFF].shape[0]), int(a[_M_OUT]))


def _int8_range_out(launch, call):
    """Whether the rows ``call`` clamps to [-128, 127] and writes an int8 scratch buffer of
    ``launch`` (its codes can be narrowed with saturation: ``rows_fused`` ``store_i8``)."""
    a = call.args
    out = a[_OUT]
    if not isinstance(out, Tmp) or np.dtype(launch.temps[out.index][1]) != np.int8:
        return False
    return int(a[_LO]) == -128 and int(a[_HI]) == 127


def refine(launch):
    """``launch`` with its ``vnni_rows`` call on the bounded epilogue where that applies (with
    the saturating int8 store when it clamps to the whole int8 range)."""
    calls = list(launch.calls)
    changed = False
    for i, call in enumerate(calls):
        spec = vnni_rows.spec_of(call.fn)
        if spec is not None and _bounded(call, *spec):
            rows, _ = rows_fused.kernels(spec[0], spec[1], True, -1,
                                         _int8_range_out(launch, call))
            calls[i] = Call(rows, call.args, call.counted)
            changed = True
    if not changed:
        return launch
    return type(launch)(launch.temps, tuple(calls), launch.outputs)


def holds(launch, n_consumers, consumer_kind, is_program_output):
    """Whether the program should hold back the last call of this step's ``launch`` until its
    only consumer, an ``add`` step, can take it (:func:`fused_add`): a serial ``vnni_rows`` (or
    bounded) conv writing the step's one output, 16-channel blocks only."""
    if n_consumers != 1 or consumer_kind != "add" or is_program_output:
        return False
    if len(launch.outputs) != 1 or not launch.calls:
        return False
    last = launch.calls[-1]
    spec = _conv_spec(last)
    return spec is not None and int(last.args[_M_OUT]) % 16 == 0


def _conv_spec(call):
    """``(kind, rnd, bounded)`` of a serial rows call (plain or bounded), else ``None``."""
    spec = vnni_rows.spec_of(call.fn)
    if spec is not None:
        return spec[0], spec[1], False
    if getattr(getattr(call.fn, "py_func", None), "__name__", "") != "rows":
        return None
    return rows_fused.spec_of(call.fn)


def fused_add(conv_call, add_launch, conv_input):
    """``(kernel, extra)`` of the one call computing ``conv_call`` and then the add of
    ``add_launch`` (whose input ``conv_input``, 0 or 1, is the conv's output) into the add's
    output, or ``None``. The call's arguments are ``conv_call.args[:21] + extra +
    conv_call.args[22:]``, ``extra`` in the add's terms (``In(k)``: the add's inputs); it returns
    ``conv count + add count * 2**32``."""
    if len(add_launch.calls) != 1:
        return None
    add_call = add_launch.calls[0]
    add_rnd = add_i32.rounding_of(add_call.fn)
    spec = _conv_spec(conv_call)
    if add_rnd is None or spec is None:
        return None
    a = add_call.args
    # (In(0, (n,)), In(1, (n,)), ka, kb, kc, shift, zp, lo, hi, out, i0, i1): the whole array
    n = int(a[11])
    if int(a[10]) != 0 or int(conv_call.args[22]) != 0 or int(conv_call.args[23]) * int(
            conv_call.args[_M_OUT]) != n:
        return None
    k_conv, k_res = (a[2], a[3]) if conv_input == 0 else (a[3], a[2])
    res = a[1 - conv_input]
    if not isinstance(res, In):
        return None
    _, rows_add = rows_fused.kernels(spec[0], spec[1], spec[2], add_rnd)
    return rows_add, (res, k_res, k_conv, a[4], a[5], a[6], a[7], a[8], a[9])


class Held:
    """The bookkeeping of :mod:`simulator.compiled` for :func:`holds` / :func:`fused_add`: which
    step reads which buffer, and the conv calls held back (rendered already) until their add."""

    def __init__(self, program):
        self.consumers = {}
        for k, step in enumerate(program.steps):
            for name in step.inputs:
                self.consumers.setdefault(name, []).append(k)
        self.kinds = [step.kind for step in program.steps]
        self.outputs = {o.name for o in program.outputs}
        self.pending = {}  # buffer -> (conv step index, call, (kernel name, argument texts))

    def calls(self, k, step, launch, render, body):
        """The calls of step ``k`` its caller still emits; held calls this step reads are
        appended to ``body`` here, fused with this step when it is their add. ``render(call)``:
        ``(kernel name, argument texts)`` in this step's terms."""
        held = {idx: self.pending.pop(name) for idx, name in enumerate(step.inputs)
                if name in self.pending}
        fused = None
        if step.kind == "add":
            for idx, (_j, call, _text) in held.items():
                got = fused_add(call, launch, idx)
                if got is not None:
                    fused = idx, got
                    break
        # every other held input is computed first: the fused call reads it
        for idx, (j, _call, (fn, args)) in held.items():
            if fused is None or idx != fused[0]:
                body.append(f"    sat[{j}] += {fn}({', '.join(args)})")
        if fused is not None:
            idx, (kernel, extra) = fused
            j, _call, (_fn, args) = held[idx]
            name_k, extra_txt = render(Call(kernel, extra))
            text = ", ".join(args[:_OUT] + extra_txt + args[_OUT + 1:])
            body.append(f"    f{k} = {name_k}({text})")
            body.append(f"    sat[{j}] += f{k} & 0xFFFFFFFF")
            body.append(f"    sat[{k}] += f{k} >> 32")
            return []
        if len(step.outputs) == 1:
            out = step.outputs[0]
            users = self.consumers.get(out, [])
            kind = self.kinds[users[0]] if users else None
            if holds(launch, len(users), kind, out in self.outputs) and launch.calls[-1].counted:
                last = launch.calls[-1]
                self.pending[out] = (k, last, render(last))
                return list(launch.calls[:-1])
        return list(launch.calls)


__all__ = ["Held", "fused_add", "holds", "refine"]
