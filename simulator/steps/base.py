"""What every step kind is made of: typed parameters, an executor, optionally a launch.

A step kind is one module of :mod:`simulator.steps` that registers one :class:`StepKind`:

* ``params``: a frozen, keyword-only dataclass derived from :class:`Params`. Its fields, their
  defaults and its :meth:`Params.check` are the kind's whole contract (docs/PROGRAM.md's tables
  are tested against these classes). A default is written once, here, and nowhere else.
* ``execute(step, params, *arrays) -> (outputs, stats)``: runs the step on input arrays.
* ``launch(step, params, *specs) -> Launch | None`` (optional): the kernel calls for fixed input
  shapes and dtypes (see :mod:`simulator.launch`); ``None`` when that needs Python between
  kernels or a look at input values.

Lowering builds typed parameters directly (:func:`make_step`); a hand-written Step may carry a
plain dict, which is converted (and checked: unknown names, missing fields, wrong modes) the
first time the step is run.
"""
from __future__ import annotations

import difflib
import weakref
from dataclasses import MISSING, dataclass, fields
from typing import Any, Callable, ClassVar, Mapping, Optional

import numpy as np

from simulator.errors import ProgramError, SimulatorError
from simulator.kernels import quant as quant_k
from simulator.kernels.pair_sums import PAIR_SUMS
from simulator.program import Step

LAYOUT_CHANNEL_AXIS = {"NCHW": 1, "NHWC": 3}


# --------------------------------------------------------------------------------------------
# Typed parameters
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class Params:
    """Base of every kind's parameters.

    Read-only mapping access (``p["weight"]``, ``p.get``, ``"x" in p``, ``dict(p)``) covers the
    fields that are set (not ``None``), for reports and golden manifests that list parameters
    by name."""

    # Fields that apply only in some values of ``mode`` (or ``rq_mode``): mode -> field names.
    # A field outside the current mode's set must be left unset (moded fields default to None);
    # one inside must be set.
    MODE_FIELD: ClassVar[str] = ""
    MODE_FIELDS: ClassVar[Mapping[str, frozenset]] = {}     # required in that mode
    MODE_OPTIONAL: ClassVar[Mapping[str, frozenset]] = {}   # allowed, not required

    @classmethod
    def field_names(cls) -> tuple:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def required_names(cls) -> tuple:
        return tuple(f.name for f in fields(cls)
                     if f.default is MISSING and f.default_factory is MISSING)

    @classmethod
    def from_mapping(cls, params: Mapping, where: str) -> "Params":
        """Build and check parameters from a mapping; errors name ``where`` (the step)."""
        if not isinstance(params, Mapping):
            raise ProgramError(f"{where}: parameters must be a mapping, got "
                               f"{type(params).__name__}")
        names = cls.field_names()
        for key in params:
            if key not in names:
                hint = difflib.get_close_matches(str(key), names, n=1)
                raise ProgramError(
                    f"{where}: unknown parameter {key!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; this kind takes {', '.join(names)}")
        for key in cls.required_names():
            if key not in params:
                raise ProgramError(f"{where}: missing parameter {key!r}")
        obj = cls(**params)
        obj.validate(where)
        return obj

    def validate(self, where: str) -> None:
        """Mode applicability, then the kind's own :meth:`check`."""
        if self.MODE_FIELD:
            mode = getattr(self, self.MODE_FIELD)
            if mode not in self.MODE_FIELDS:
                raise ProgramError(
                    f"{where}: unknown {self.MODE_FIELD} {mode!r}; expected "
                    + ", ".join(repr(m) for m in self.MODE_FIELDS))
            wanted = self.MODE_FIELDS[mode]
            allowed = wanted | self.MODE_OPTIONAL.get(mode, frozenset())
            all_moded = frozenset().union(*self.MODE_FIELDS.values(),
                                          *self.MODE_OPTIONAL.values())
            for f in fields(self):
                value = getattr(self, f.name)
                if f.name in all_moded and f.name not in allowed and value is not None:
                    raise ProgramError(f"{where}: parameter {f.name!r} does not apply to "
                                       f"{self.MODE_FIELD} {mode!r}")
                if f.name in wanted and value is None:
                    raise ProgramError(f"{where}: missing parameter {f.name!r} "
                                       f"({self.MODE_FIELD} {mode!r})")
        self.check(where)

    def check(self, where: str) -> None:
        """Kind-specific consistency checks (override)."""

    def replace(self, where: str = "step", **changes) -> "Params":
        """A checked copy with ``changes``."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        unknown = set(changes) - set(values)
        if unknown:
            raise ProgramError(f"{where}: unknown parameter(s) {sorted(unknown)}")
        values.update(changes)
        obj = type(self)(**values)
        obj.validate(where)
        return obj

    # read-only mapping view over the set fields
    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, name):
        if name in self.field_names():
            value = getattr(self, name)
            if value is not None:
                return value
        raise KeyError(name)

    def get(self, name, default=None):
        value = getattr(self, name, None) if name in self.field_names() else None
        return default if value is None else value

    def __contains__(self, name) -> bool:
        return name in self.field_names() and getattr(self, name) is not None

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]


@dataclass(frozen=True, kw_only=True, eq=False)
class OutBlock(Params):
    """The output codes: ``out_dtype`` and the clamp ``[out_min, out_max]`` (default: the
    dtype's range; it already includes fused Relu/Clip)."""

    out_dtype: str
    out_min: Optional[int] = None
    out_max: Optional[int] = None

    def out_range(self, where: str) -> tuple:
        """``(out_min, out_max, np.dtype)`` with the dtype range as the default clamp."""
        try:
            dt = np.dtype(self.out_dtype)
        except TypeError:
            raise ProgramError(f"{where}: unknown out_dtype {self.out_dtype!r}") from None
        lo, hi = quant_k.dtype_range(dt) if dt.kind in "iu" else (None, None)
        return (lo if self.out_min is None else self.out_min,
                hi if self.out_max is None else self.out_max, dt)


@dataclass(frozen=True, kw_only=True, eq=False)
class RequantBlock(OutBlock):
    """Accumulator -> output code (docs/PROGRAM.md "Requantization block").

    ``rq_multiplier`` defaults to ``[1]`` only for ``rq_mode='shift'``; ``channel_axis``
    defaults to the layout's channel axis (conv, avgpool, global_avgpool) or -1."""

    rq_mode: Optional[str] = None
    rq_multiplier: Any = None
    rq_shift: Any = None
    rq_rounding: str = "half_even"
    out_zero_point: int = 0
    channel_axis: Optional[int] = None

    RQ_MODES: ClassVar[tuple] = ("none", "fp32", "fp32_zp_in", "fixed", "double_q31", "shift")

    def check(self, where: str) -> None:
        if self.rq_mode is None:
            raise ProgramError(f"{where}: missing parameter 'rq_mode'")
        if self.rq_mode not in self.RQ_MODES:
            raise ProgramError(f"{where}: unknown rq_mode {self.rq_mode!r}; expected "
                               + ", ".join(map(repr, self.RQ_MODES)))
        if self.rq_mode not in ("none", "shift") and self.rq_multiplier is None:
            raise ProgramError(f"{where}: missing parameter 'rq_multiplier' "
                               f"(rq_mode {self.rq_mode!r})")

    def default_channel_axis(self) -> int:
        layout = getattr(self, "layout", None)
        return LAYOUT_CHANNEL_AXIS.get(layout, -1) if layout else -1

    def requant_kwargs(self, where: str) -> dict:
        """Keyword arguments of :func:`simulator.kernels.quant.requantize`."""
        out_min, out_max, dt = self.out_range(where)
        if self.rq_mode == "none":
            mult = None
        elif self.rq_multiplier is None:
            mult = np.array([1], dtype=np.int64)
        else:
            mult = self.rq_multiplier
        axis = self.channel_axis if self.channel_axis is not None else self.default_channel_axis()
        return {"rq_mode": self.rq_mode, "rq_multiplier": mult, "rq_shift": self.rq_shift,
                "rq_rounding": self.rq_rounding, "out_zero_point": self.out_zero_point,
                "out_min": out_min, "out_max": out_max, "out_dtype": dt,
                "channel_axis": int(axis)}


@dataclass(frozen=True, kw_only=True, eq=False)
class AccBlock(Params):
    """The accumulator: ``acc_bits`` two's-complement bits, ``acc_overflow`` wrap | saturate
    | error. Order: the bias first, then the products (conv: input channel, kernel row, kernel
    column; gemm: k)."""

    acc_bits: int = 32
    acc_overflow: str = "wrap"

    def acc_kwargs(self) -> dict:
        return {"acc_bits": self.acc_bits, "acc_overflow": self.acc_overflow}


@dataclass(frozen=True, kw_only=True, eq=False)
class PairSumsBlock(Params):
    """``pair_sums``: ``exact``, or ``saturate_int16``: the uint8 input codes times the int8
    weight codes are summed two at a time (K elements 2j and 2j+1; conv K in the order kernel
    row, kernel column, input channel of each group, padding holding ``input_zero_point``),
    each pair sum of the raw codes saturated to int16 before it joins the accumulator (x86
    ``vpmaddubsw``, ONNX Runtime's MLAS without VNNI); the zero points are taken exactly. The
    step then needs a uint8 input, int8 weights and ``acc_overflow`` ``wrap``, and runs the
    plain kernel (simulator/kernels/pair_sums.py), never the fast ones."""

    pair_sums: str = "exact"

    def check_pair_sums(self, where: str) -> None:
        if self.pair_sums not in PAIR_SUMS:
            raise ProgramError(f"{where}: unknown pair_sums {self.pair_sums!r}; expected "
                               + ", ".join(map(repr, PAIR_SUMS)))
        if self.pair_sums != "exact" and getattr(self, "acc_overflow", "wrap") != "wrap":
            raise ProgramError(f"{where}: pair_sums {self.pair_sums!r} needs acc_overflow "
                               f"'wrap' (MLAS's int32 adds wrap)")


def check_layout(layout, where: str) -> str:
    if layout not in LAYOUT_CHANNEL_AXIS:
        raise ProgramError(f"{where}: layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout


# --------------------------------------------------------------------------------------------
# Kinds and the registry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepKind:
    name: str
    params: type
    execute: Callable
    launch: Optional[Callable] = None
    n_inputs: Optional[int] = 1      # None: any number
    doc: str = ""


KINDS: dict = {}


def register(name: str, params: type, execute: Callable, launch: Optional[Callable] = None,
             n_inputs: Optional[int] = 1) -> StepKind:
    if name in KINDS:
        raise ImportError(f"step kind {name!r} registered twice")
    kind = StepKind(name, params, execute, launch, n_inputs, (execute.__doc__ or "").strip())
    KINDS[name] = kind
    return kind


def where(step) -> str:
    return f"step {step.name!r} ({step.kind})"


def params_of(step) -> Params:
    """The step's typed parameters (converted and checked once per step object)."""
    params = step.params
    kind = KINDS.get(step.kind)
    if kind is None:
        raise ProgramError(f"step {step.name!r}: unknown step kind {step.kind!r}; known kinds "
                           f"are {sorted(KINDS)}")
    if isinstance(params, kind.params):
        return params
    cached = step.__dict__.get("_typed_params")
    if cached is not None:
        return cached
    if isinstance(params, Params):
        raise ProgramError(f"{where(step)}: parameters of kind "
                           f"{type(params).__name__} given to a {step.kind} step")
    try:
        typed = kind.params.from_mapping(params or {}, where(step))
    except TypeError as err:
        raise ProgramError(f"{where(step)}: malformed parameters ({err})") from None
    object.__setattr__(step, "_typed_params", typed)
    return typed


def make_step(kind: str, name: str, inputs, outputs, **params) -> Step:
    """A Step with checked, typed parameters (what lowering emits)."""
    entry = KINDS.get(kind)
    if entry is None:
        raise ProgramError(f"step {name!r}: unknown step kind {kind!r}")
    typed = entry.params.from_mapping(params, f"step {name!r} ({kind})")
    return Step(kind, name, tuple(inputs), tuple(outputs), typed)


def stats(acc_overflow=0, out_saturated=0) -> dict:
    return {"acc_overflow": int(acc_overflow), "out_saturated": int(out_saturated)}


def check_n_inputs(step, arrays, n) -> None:
    if n is not None and len(arrays) != n:
        raise ProgramError(f"{where(step)}: expected {n} input(s), got {len(arrays)}")


def execute_step(step, *arrays):
    """``(outputs, stats)`` of one step through its kind's executor."""
    from simulator.capabilities import ensure_started
    ensure_started()
    p = params_of(step)
    kind = KINDS[step.kind]
    check_n_inputs(step, arrays, kind.n_inputs)
    return kind.execute(step, p, *arrays)


def step_launch(step, specs):
    """The step's :class:`simulator.launch.Launch` for inputs like ``specs``, or ``None``."""
    kind = KINDS.get(step.kind)
    if kind is None or kind.launch is None:
        return None
    if kind.n_inputs is not None and len(specs) != kind.n_inputs:
        return None
    return kind.launch(step, params_of(step), *specs)


# --------------------------------------------------------------------------------------------
# Per-step prepared objects (packed weights), by step identity
# --------------------------------------------------------------------------------------------
_PREPARED: dict = {}
_NOT_FAST = object()


def prepared(step, build):
    """The object ``build(step, params)`` made for this step (cached), or ``None``. ``build``
    returns ``None`` (or raises) when the fast path does not apply; the general path then runs
    and reports any parameter error. Steps are frozen; their parameters must not be mutated
    after a first run."""
    key = id(step)
    entry = _PREPARED.get(key)
    if entry is not None and entry[0]() is step:
        obj = entry[1]
    else:
        try:
            obj = build(step, params_of(step))
        except (SimulatorError, TypeError, ValueError, KeyError, IndexError, OverflowError):
            obj = None
        if obj is None:
            obj = _NOT_FAST
        try:
            ref = weakref.ref(step, lambda _r, k=key: _PREPARED.pop(k, None))
        except TypeError:
            return None if obj is _NOT_FAST else obj
        _PREPARED[key] = (ref, obj)
    return None if obj is _NOT_FAST else obj


def spec(shape, dtype):
    """An array with this shape and dtype whose values are never read (``np.empty`` only
    reserves address space)."""
    return np.empty(tuple(int(d) for d in shape), dtype=dtype)


__all__ = ["AccBlock", "KINDS", "LAYOUT_CHANNEL_AXIS", "OutBlock", "PairSumsBlock", "Params",
           "RequantBlock", "StepKind", "check_layout", "execute_step", "make_step", "params_of",
           "prepared", "register", "spec", "stats", "step_launch", "where"]
