"""Does a lowered :class:`simulator.program.Program` stay within a hardware profile's limits?

:func:`mrq.api.profile_violations` checks the model's *tensors* (grids, codes). The hardware
runs the *program*: requantization multipliers and shifts, accumulator and bias widths, output
dtypes. A tensor-clean model can still need a parameter the hardware cannot hold (a left shift
on right-shift-only hardware), and a golden vector built from such a program is one the RTL
cannot reproduce. :func:`program_violations` checks the program itself; it is a pure function
of the program and the profile.

What is checked, by the parameters a step carries (so a step kind added later is covered by
the blocks it uses):

* a requantization block (``rq_mode`` other than ``none``/``float_dq_q``): ``rq_mode`` and
  ``rq_rounding`` as the profile's arithmetic implies (:func:`implied_rq_mode`); for the integer
  modes (``fixed``, ``double_q31``, ``shift``) every ``rq_shift`` in ``[requant.shift_min,
  requant.shift_max]`` and every ``rq_multiplier`` in the register the arithmetic has:
  ``[0, 2**multiplier_bits - 1]`` (fixed_point; 0 is the flush of a negligible multiplier),
  ``[0, 2**31 - 1]`` (double_q31), exactly 1 (shift);
* an accumulator (``conv``, ``gemm``, or any step with ``acc_bits``): ``acc_bits`` and
  ``acc_overflow`` equal to ``accumulator.bits``/``accumulator.overflow`` (absent = the
  simulator defaults 32/wrap);
* ``bias`` codes of conv/gemm within ``bias.bits``;
* ``add``: ``mode`` equal to ``ops.add``; in mode ``fixed`` the input multipliers fit the
  multiplier register (fixed_point) or are powers of two (shift), and the block's multiplier is 1;
* ``avgpool``: ``mode`` equal to ``ops.avgpool``; ``rescale``: ``float_dq_q`` exactly when
  ``ops.rescale`` is ``float_dq_q``;
* ``out_dtype`` (and a ``constant``'s dtype) among the profile's activation dtypes, and the
  ``out_min``/``out_max`` of a step with an ``out_dtype`` inside the activation code range
  (``activations.bits``, narrow range), each step against its own layer's formats where the
  profile has ``layers``.

Not checked, by rule: steps that carry none of these parameters have nothing the accelerator
must hold: data movement (``reshape``, ``transpose``, including the layout transposes the
simulator inserts, ``concat``, ``maxpool``, ``pad``, ``clamp``: their only hardware facts are
``out_min``/``out_max`` inside the dtype range) and the host side of the graph boundary
(``quantize``/``dequantize``: float conversion, checked only for the code dtype it produces).
Table lookups (``lut``, ``softmax_tflite``) and ``softmax`` mode ``float`` have no shift or
multiplier: only their ``out_dtype`` is checked. Steps the profile's ``host_ops`` place on the
host (``placement``) run the host's arithmetic and are skipped. A step with
``rq_mode='none'`` (ConvInteger/MatMulInteger) hands its raw accumulator on: no requantization,
no activation dtype. Peer-runtime profiles (``runtime`` other than ``generic``) reproduce CPU
kernels whose arithmetic the vocabulary cannot name (:mod:`mrq.lower_extra`); their documented
exceptions are listed in ``RUNTIME_REQUANT`` and ``RUNTIME_ADD_MODES``, and their own
parameter sets (``mean`` modes ``tflite``/``xnnpack``, add mode ``tflite``) carry no ``rq_*``.

:func:`clip_violations` turns the records of :mod:`mrq.multipliers` (a multiplier the lowering
had to clip to the closest legal value) into the same kind of violation, for
:attr:`mrq.lower.LoweredModel.limit_violations`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "RUNTIME_ADD_MODES",
    "RUNTIME_REQUANT",
    "Violation",
    "arithmetic_violations",
    "clip_violations",
    "implied_rq_mode",
    "program_violations",
    "step_violations",
]

# rq_mode values without requantization registers: the raw accumulator, and ORT's float region.
NO_REQUANT = ("none", "float_dq_q")
INTEGER_MODES = ("fixed", "double_q31", "shift")
ACC_KINDS = ("conv", "gemm")

# Peer runtime -> step kind -> (rq_mode, rq_rounding) pairs its kernels use besides the
# profile's own arithmetic (mrq/lower_extra.py documents and tests each one bit for bit).
RUNTIME_REQUANT = {
    "tflite-reference": {"gemm": {("fixed", "half_up")}},       # single-rounding FULLY_CONNECTED
    "xnnpack": {"add": {("shift", "half_up")},                   # XNNPACK qs8 add
                "rescale": {("fixed", "half_up"), ("double_q31", "half_up")}},   # QUANTIZE
}
RUNTIME_ADD_MODES = {"xnnpack": {"fixed"}}


@dataclass(frozen=True)
class Violation:
    """One parameter of one step outside the profile. ``field`` is the profile field (dotted),
    ``value`` the offending (worst) value, ``limit`` what the field allows, ``channel`` the first
    offending channel of a per-channel parameter (None: per tensor)."""

    step: str
    kind: str
    node: str | None
    field: str
    value: Any
    limit: Any
    channel: int | None
    message: str

    def __str__(self) -> str:
        return self.message


def _where(step: str, node: str | None) -> str:
    return f"{step} (node {node})" if node else step


def _at(mask: np.ndarray, values: np.ndarray, name: str, limit: int = 4) -> tuple[str, int | None]:
    """'rq_shift -1 at channel 5' / 'rq_shift [-1, -2] at channels 1, 5 and 2 more' and the
    first offending channel (None for a per-tensor array)."""
    mask = np.asarray(mask).reshape(-1)
    values = np.asarray(values).reshape(-1)
    idx = np.flatnonzero(mask)
    if values.size <= 1:
        return f"{name} {_fmt(values[0])}", None
    shown = idx[:limit]
    more = f" and {idx.size - limit} more" if idx.size > limit else ""
    if idx.size == 1:
        return f"{name} {_fmt(values[idx[0]])} at channel {idx[0]}", int(idx[0])
    vals = ", ".join(_fmt(values[i]) for i in shown)
    return (f"{name} [{vals}{', ...' if more else ''}] at channels "
            f"{', '.join(str(i) for i in shown)}{more}"), int(idx[0])


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v.item() if isinstance(v, np.generic) else v)


def _get(params, key, default=None):
    """Mapping-style read that works for dicts and for typed parameter objects with ``.get``."""
    value = params.get(key)
    return default if value is None else value


def implied_rq_mode(kind: str, profile) -> str:
    """The simulator ``rq_mode`` the profile's arithmetic gives a requantizing step of ``kind``.

    ``add`` (mode fixed) aligns its inputs with integer multipliers and then only shifts;
    ``mul`` on float32 hardware keeps the zero point inside the rounding when ``ops.mul`` says
    so (ORT QLinearMul); every other step uses :attr:`RequantSpec.rq_mode`."""
    rq = profile.requant
    if kind == "add":
        return "shift"
    if kind == "mul" and rq.arithmetic == "float32" and profile.ops.mul == "fp32_zp_in":
        return "fp32_zp_in"
    return rq.rq_mode


def _runtime(profile) -> str:
    return getattr(profile, "runtime", "generic") or "generic"


def step_violations(step, profile, node: str | None = None) -> list:
    """The violations of one step (see the module docstring for the rules); ``profile`` is the
    profile of the step's layer (:meth:`mrq.mixed_precision.LayerFormats.for_node`)."""
    p = step.params
    out: list = []
    where = _where(step.name, node)

    def add(field, value, limit, channel, text):
        out.append(Violation(step.name, step.kind, node, field, value, limit, channel, f"{where}: {text}"))

    rq_mode = _get(p, "rq_mode")
    _check_dtype(step, p, profile, rq_mode, add)
    if step.kind in ACC_KINDS or _get(p, "acc_bits") is not None:
        _check_accumulator(p, profile, add)
    if step.kind in ACC_KINDS and _get(p, "bias") is not None:
        _check_bias(p, profile, add)
    if step.kind == "add":
        _check_add(p, profile, add)
    elif step.kind == "avgpool":
        mode = _get(p, "mode")
        if mode is not None and mode != profile.ops.avgpool:
            add("ops.avgpool", mode, profile.ops.avgpool, None,
                f"avgpool mode {mode!r} but the profile's ops.avgpool is {profile.ops.avgpool!r}")
    elif step.kind == "rescale" and (rq_mode == "float_dq_q") != (profile.ops.rescale == "float_dq_q"):
        add("ops.rescale", rq_mode, profile.ops.rescale, None,
            f"rescale rq_mode {rq_mode!r} but the profile's ops.rescale is {profile.ops.rescale!r}")
        return out   # the requantization registers of the wrong kind of rescale say nothing more
    if rq_mode is not None and rq_mode not in NO_REQUANT:
        _check_requant(step, p, profile, rq_mode, add)
    return out


def program_violations(program, profile, step_node: dict | None = None,
                       placement: dict | None = None, formats=None) -> list:
    """Every parameter of ``program`` outside the limits of ``profile`` (a
    :class:`mrq.hw_profile.HwProfile`), one :class:`Violation` per step and profile field.
    ``step_node`` maps step names to IR node names for the messages; ``placement`` (step name
    -> ``npu``/``host``, :attr:`mrq.lower.LoweredModel.placement`) skips the steps of the
    profile's ``host_ops``, which run the host's arithmetic, not the accelerator's.
    ``formats`` (a :class:`mrq.mixed_precision.LayerFormats` of the graph ``step_node`` names):
    each step is checked against its own layer's formats, not the profile's base ones."""
    step_node = step_node or {}
    placement = placement or {}
    out = []
    for step in program.steps:
        if placement.get(step.name) == "host":
            continue
        node = step_node.get(step.name)
        layer = profile if formats is None or node is None else formats.for_node(node)
        out.extend(step_violations(step, layer, node))
    return out


# Fields whose violations mean the program's arithmetic is not the profile's (the lowering chose
# those parameters); activations.*/bias.* restate the model's own tensor formats.
ARITHMETIC_FIELDS = ("requant.", "accumulator.", "ops.")


def arithmetic_violations(violations) -> list:
    """The violations of parameters the lowering chose (see ``ARITHMETIC_FIELDS``)."""
    return [v for v in violations if v.field.startswith(ARITHMETIC_FIELDS)]


# ---------------------------------------------------------------------------------------------
# the checks


def _check_dtype(step, p, profile, rq_mode, add) -> None:
    if rq_mode == "none":
        return   # the raw accumulator, not an activation
    dtypes = profile.activations.dtypes()
    if step.kind == "constant":
        value = _get(p, "value")
        dtype = None if value is None else np.asarray(value).dtype.name
        what = "constant of dtype"
    else:
        dtype = _get(p, "out_dtype")
        what = "out_dtype"
    if dtype is not None and str(dtype) in dtypes:
        _check_code_range(p, profile, str(dtype), what, add)
        return
    if dtype is None:
        return
    dtype = str(dtype)
    width = dtype.lstrip("u").replace("int", "")
    same_width = any(d.lstrip("u").replace("int", "") == width for d in dtypes)
    field = "activations.signed" if same_width else "activations.bits"
    add(field, dtype, list(dtypes), None,
        f"{what} {dtype} is not among the profile's activation dtypes ({', '.join(dtypes)}; "
        f"activations.bits {profile.activations.bits}, signed {_signed(profile.activations.signed)})")


def _check_code_range(p, profile, dtype: str, what: str, add) -> None:
    """A step's output clamp inside its layer's code range: 8-bit codes written by a step of a
    4-bit layer are a violation even though both are stored in int8."""
    lo, hi = _get(p, "out_min"), _get(p, "out_max")
    if lo is None or hi is None or what != "out_dtype":
        return
    lo, hi = np.min(lo), np.max(hi)
    fmt = profile.activations
    want_lo, want_hi = fmt.qmin_qmax(dtype)
    if int(lo) < want_lo or int(hi) > want_hi:
        add("activations.bits", [int(lo), int(hi)], [want_lo, want_hi], None,
            f"output codes [{int(lo)}, {int(hi)}] outside the profile's {fmt.bits}-bit {dtype} "
            f"range [{want_lo}, {want_hi}] (activations.bits {fmt.bits})")


def _signed(signed) -> str:
    return {True: "true", False: "false", None: "any"}[signed]


def _check_accumulator(p, profile, add) -> None:
    acc = profile.accumulator
    bits = int(_get(p, "acc_bits", 32))
    overflow = str(_get(p, "acc_overflow", "wrap"))
    if bits != acc.bits:
        add("accumulator.bits", bits, acc.bits, None,
            f"acc_bits {bits} but the profile's accumulator.bits is {acc.bits}")
    if overflow != acc.overflow:
        add("accumulator.overflow", overflow, acc.overflow, None,
            f"acc_overflow {overflow!r} but the profile's accumulator.overflow is {acc.overflow!r}")


def _check_bias(p, profile, add) -> None:
    bias = np.asarray(_get(p, "bias")).reshape(-1)
    if bias.size == 0:
        return
    lo, hi = profile.bias.qmin_qmax()
    codes = bias.astype(np.int64) if bias.dtype.kind in "iu" else bias
    bad = (codes < lo) | (codes > hi)
    if np.any(bad):
        text, ch = _at(bad, codes, "bias code")
        worst = int(codes[bad][np.argmax(np.abs(codes[bad]))])
        add("bias.bits", worst, [lo, hi], ch,
            f"{text} outside the profile's {profile.bias.bits}-bit range [{lo}, {hi}] "
            f"(bias.bits {profile.bias.bits})")


def _check_add(p, profile, add) -> None:
    mode = _get(p, "mode")
    allowed = {profile.ops.add} | RUNTIME_ADD_MODES.get(_runtime(profile), set())
    if mode is not None and mode not in allowed:
        add("ops.add", mode, profile.ops.add, None,
            f"add mode {mode!r} but the profile's ops.add is {profile.ops.add!r}")
    if mode != "fixed":
        return
    rq = profile.requant
    for key in ("multiplier_a", "multiplier_b"):
        value = _get(p, key)
        if value is None:
            continue
        m = int(value)
        if key == "multiplier_b" and m < 0 and "Sub" in (profile.supported_ops or ()):
            m = -m   # a Sub: the datapath negates the second product, its multiplier is |m|
        if rq.arithmetic == "fixed_point":
            top = (1 << rq.multiplier_bits) - 1
            if not 0 <= m <= top:
                add("requant.multiplier_bits", m, [0, top], None,
                    f"{key} {m} is outside the profile's {rq.multiplier_bits}-bit unsigned multiplier "
                    f"range [0, {top}] (requant.multiplier_bits {rq.multiplier_bits})")
        elif rq.arithmetic == "shift" and (m < 1 or m & (m - 1)):
            add("requant.arithmetic", m, "a power of two >= 1", None,
                f"{key} {m} is not a power of two >= 1: requant.arithmetic shift aligns the "
                f"inputs by shifts, it has no multiplier")
    block = _get(p, "rq_multiplier")
    if block is not None:
        block = np.asarray(block).reshape(-1)
        if np.any(block != 1):
            add("requant.arithmetic", _fmt(block[block != 1][0]), 1, None,
                f"the requantization after the add has rq_multiplier {_fmt(block[block != 1][0])}; "
                f"add mode fixed scales by its input multipliers and then only shifts (rq_multiplier 1)")


def _check_requant(step, p, profile, rq_mode, add) -> None:
    rq = profile.requant
    implied = implied_rq_mode(step.kind, profile)
    rounding = str(_get(p, "rq_rounding", "half_even"))
    allowed = {(implied, rq.rounding)} | RUNTIME_REQUANT.get(_runtime(profile), {}).get(step.kind, set())
    if (rq_mode, rounding) not in allowed:
        modes = {m for m, _ in allowed}
        if rq_mode not in modes:
            add("requant.arithmetic", rq_mode, implied, None,
                f"rq_mode {rq_mode!r} but the profile's requant.arithmetic {rq.arithmetic} implies "
                f"{implied!r}")
        else:
            want = sorted(r for m, r in allowed if m == rq_mode)
            add("requant.rounding", rounding, want[0] if len(want) == 1 else want, None,
                f"rq_rounding {rounding!r} but the profile's requant.rounding is "
                f"{' or '.join(repr(w) for w in want)}")
    if rq_mode not in INTEGER_MODES or rq.arithmetic == "float32":
        return   # no shift or multiplier register to check (float32 hardware has neither)
    shifts = np.asarray(_get(p, "rq_shift", np.zeros(1, np.int64))).reshape(-1)
    mults = np.asarray(_get(p, "rq_multiplier", np.ones(1, np.int64))).reshape(-1)
    if rq.shift_min is not None:
        low = shifts < rq.shift_min
        if np.any(low):
            text, ch = _at(low, shifts, "rq_shift")
            i = int(np.flatnonzero(low)[0])
            enc = _encoded(mults, shifts, i)
            add("requant.shift_min", int(shifts[low].min()), rq.shift_min, ch,
                f"{text} is below requant.shift_min {rq.shift_min} (a left shift the hardware "
                f"cannot do; the multiplier it encodes, {enc}, needs one)")
        high = shifts > rq.shift_max
        if np.any(high):
            text, ch = _at(high, shifts, "rq_shift")
            add("requant.shift_max", int(shifts[high].max()), rq.shift_max, ch,
                f"{text} is above requant.shift_max {rq.shift_max} (a right shift wider than the "
                f"hardware's)")
    # float multipliers in mode shift: only exact 1.0 is acceptable, checked below
    if mults.dtype.kind not in "iu" and rq.arithmetic in ("fixed_point", "double_q31"):
        add("requant.arithmetic", str(mults.dtype), "integer", None,
            f"rq_multiplier is {mults.dtype}; requant.arithmetic {rq.arithmetic} multiplies by "
            f"integers")
        return
    top = rq.multiplier_max
    if top is not None:   # fixed_point or double_q31: an unsigned integer register
        bad = (mults < 0) | (mults > top)
        if np.any(bad):
            text, ch = _at(bad, mults, "rq_multiplier")
            if rq.arithmetic == "fixed_point":
                add("requant.multiplier_bits", int(mults[bad].max()), [0, top], ch,
                    f"{text} is outside the profile's {rq.multiplier_bits}-bit unsigned "
                    f"multiplier range [0, {top}] (requant.multiplier_bits {rq.multiplier_bits})")
            else:
                add("requant.arithmetic", int(mults[bad].max()), [0, top], ch,
                    f"{text} is outside the Q31 multiplier range [0, {top}] (requant.arithmetic "
                    f"double_q31)")
    elif rq.arithmetic == "shift":
        bad = mults != 1
        if np.any(bad):
            text, ch = _at(bad, mults, "rq_multiplier")
            add("requant.arithmetic", _fmt(mults[bad][0]), 1, ch,
                f"{text} is not 1: requant.arithmetic shift has no multiplier")


def _encoded(mults: np.ndarray, shifts: np.ndarray, i: int) -> str:
    m = mults[i] if mults.size > 1 else mults[0]
    return _fmt(math.ldexp(float(m), -int(shifts[i])))


# ---------------------------------------------------------------------------------------------
# multipliers the lowering had to clip


def clip_violations(step: str, kind: str, node: str | None, clips: list) -> list:
    """:class:`Violation` s for the :class:`mrq.multipliers.Clip` records of one step: one per
    profile field and parameter, naming the channels, the real multiplier that was needed and
    the legal value the program holds instead."""
    groups: dict = {}
    for c in clips:
        groups.setdefault((c.field, c.what), []).append(c)
    out = []
    where = _where(step, node)
    for (field, what), group in groups.items():
        first = group[0]
        if first.channel is None:
            at = ""
        elif len(group) == 1:
            at = f" at channel {first.channel}"
        else:
            chans = ", ".join(str(c.channel) for c in group[:4])
            at = f" at channels {chans}" + (f" and {len(group) - 4} more" if len(group) > 4 else "")
        subject = "the real multiplier" if what == "rq_shift" else f"{what}: the real input ratio"
        if field == "requant.shift_min":
            why = "below requant.shift_min {lim} (a left shift the hardware cannot do)"
        else:
            why = "above requant.shift_max {lim} (a right shift wider than the hardware's)"
        worst = min(group, key=lambda c: c.wanted) if field == "requant.shift_min" else \
            max(group, key=lambda c: c.wanted)
        text = (f"{where}: {subject} {_fmt(first.real)}{at} needs shift {first.wanted}, "
                + why.format(lim=first.limit)
                + f"; the program holds the closest legal value {_fmt(first.encoded)} "
                  f"(multiplier {first.multiplier}, shift {first.shift})"
                + (f" ({len(group)} channels, worst shift {worst.wanted})" if len(group) > 1 else ""))
        out.append(Violation(step, kind, node, field, worst.wanted, first.limit, first.channel, text))
    return out
