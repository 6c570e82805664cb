"""Hardware profiles: the number formats and integer arithmetic of a target.

A profile is a YAML file (``hw_profiles/<name>.yaml``, schema in ``hw_profiles/schema.json``).
:func:`load_profile` reads and validates one into a frozen :class:`HwProfile`; every problem is
reported as :class:`mrq.errors.HwProfileError` naming the file, the dotted field path and what
is allowed. The lowering reads facts from the dataclasses and uses the helpers
(:meth:`HwProfile.activation_dtypes`, :meth:`HwProfile.qmin_qmax`,
:meth:`HwProfile.check_tensor`, :attr:`RequantSpec.rq_mode`, ...).

Vocabulary (see docs/PROGRAM.md for what the simulator does with it):

* rounding modes: ``half_even``, ``half_away``, ``half_up``, ``floor``, ``toward_zero``;
* ``requant.arithmetic`` -> simulator ``rq_mode``: ``float32`` -> ``fp32`` (zero point after
  rounding) or ``fp32_zp_in`` (zero point before rounding), ``fixed_point`` -> ``fixed``,
  ``double_q31`` -> ``double_q31``, ``shift`` -> ``shift``;
* ``ops.mul`` and ``ops.global_avgpool`` are simulator rq_modes directly
  (``global_avgpool: avgpool`` means "lower as an avgpool step over the whole plane").
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import yaml

from mrq.errors import HwProfileError

__all__ = [
    "ScaleFormat", "TensorFormat", "BiasFormat", "AccumulatorFormat", "RequantSpec",
    "QuantizeSpec", "OpModes", "HwProfile", "load_profile", "list_profiles", "profile_dirs",
    "ROUNDING_MODES", "OVERFLOW_MODES", "SCALE_FORMS", "GRANULARITIES", "REQUANT_ARITHMETIC",
    "ZERO_POINT_PLACEMENTS", "MULTIPLIER_PRECISIONS", "ADD_MODES", "RQ_MODES", "MUL_MODES",
    "AVGPOOL_MODES", "GLOBAL_AVGPOOL_MODES", "QUANTIZE_METHODS", "RESCALE_MODES",
    "SOFTMAX_MODES", "KNOWN_OPS", "ROLES",
]

# ----------------------------------------------------------------------------------------------
# Vocabulary (hw_profiles/schema.json uses the same lists; a test keeps them in sync)

ROUNDING_MODES = ("half_even", "half_away", "half_up", "floor", "toward_zero")
OVERFLOW_MODES = ("wrap", "saturate", "error")
SCALE_FORMS = ("float", "fixed_point", "pow2")
GRANULARITIES = ("per_tensor", "per_channel")
REQUANT_ARITHMETIC = ("float32", "fixed_point", "double_q31", "shift")
ZERO_POINT_PLACEMENTS = ("after_rounding", "before_rounding")
MULTIPLIER_PRECISIONS = ("float32", "float64")
ADD_MODES = ("ort_fma", "tflite", "fixed", "float")
RQ_MODES = ("fp32", "fp32_zp_in", "fixed", "double_q31", "shift")
MUL_MODES = RQ_MODES
AVGPOOL_MODES = ("ort_float", "tflite_raw", "fixed")
GLOBAL_AVGPOOL_MODES = RQ_MODES + ("avgpool",)
QUANTIZE_METHODS = ("divide", "multiply")
SHARED_GRID_OPS = ("Concat", "Add")
RESCALE_MODES = ("float_dq_q", "requant")
SOFTMAX_MODES = ("float",)
BIAS_SCALES = ("input_times_weight",)
KNOWN_OPS = (
    "Conv", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Concat", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
    "Softmax", "Identity", "Pad", "Mean", "Logistic",
)
# Peer runtimes whose quirks go beyond the generic vocabulary (see mrq/lower_extra.py).
RUNTIMES = ("generic", "tflite-reference", "xnnpack")
ROLES = ("activations", "weights", "bias")

ACT_BITS = (2, 16)        # activations and weights: storage is int8/uint8 or int16/uint16
BIAS_BITS = (8, 64)
ACC_BITS = (16, 64)
MULTIPLIER_BITS = (2, 32)  # simulator 'fixed' mode needs |multiplier| < 2**32
SHIFT_RANGE = (-32, 63)
DOUBLE_Q31_SHIFT_RANGE = (1, 62)  # rq_shift = 31 - tflite_shift, tflite_shift in [-31, 30]
MANTISSA_BITS = (1, 24)   # float32 has a 24-bit significand
EXPONENT_RANGE = (-149, 127)
DESCRIPTION_MAX = 200
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

_PACKAGE_DIR = Path(__file__).resolve().parent


def profile_dirs() -> list[Path]:
    """Directories searched for shipped profiles, in order: ``mrq/hw_profiles`` (package data
    of a non-editable install, if someone ships it there) and ``<repo>/hw_profiles``."""
    cands = [_PACKAGE_DIR / "hw_profiles", _PACKAGE_DIR.parent / "hw_profiles"]
    return [d for d in cands if d.is_dir()]


# ----------------------------------------------------------------------------------------------
# Dataclasses


@dataclass(frozen=True)
class ScaleFormat:
    """Which scale values a tensor may have.

    ``form``: ``float`` (any positive finite float32), ``pow2`` (exactly ``2**e``), or
    ``fixed_point`` (``m * 2**e`` with an integer ``0 < m < 2**mantissa_bits``).
    ``exponent_min``/``exponent_max`` (``None`` = unbounded) bound ``floor(log2(scale))``,
    i.e. ``e`` for pow2 scales."""

    form: str
    mantissa_bits: int | None = None
    exponent_min: int | None = None
    exponent_max: int | None = None


@dataclass(frozen=True)
class TensorFormat:
    """Format of activations or weights.

    ``signed``: True, False or None (= either; both dtypes allowed). ``symmetric``: the zero
    point is 0 for signed dtypes and ``2**(bits-1)`` for unsigned ones. ``narrow_range``: the
    most negative code (signed) or code 0 (unsigned) is not used. ``granularity``: of the
    scale; ``zero_point_granularity`` is never finer (ORT: per-channel weight scales, but one
    weight zero point)."""

    role: str
    bits: int
    signed: bool | None
    symmetric: bool
    narrow_range: bool
    granularity: str
    zero_point_granularity: str
    scale: ScaleFormat

    def dtypes(self) -> tuple[str, ...]:
        """Allowed numpy storage dtype names (4-bit values are stored in int8/uint8)."""
        width = 8 if self.bits <= 8 else 16
        out = []
        if self.signed in (True, None):
            out.append(f"int{width}")
        if self.signed in (False, None):
            out.append(f"uint{width}")
        return tuple(out)

    def _check_dtype(self, dtype) -> str:
        name = np.dtype(dtype).name
        if name not in self.dtypes():
            raise ValueError(f"{self.role}: dtype {name!r} not allowed by the profile "
                             f"(allowed: {', '.join(self.dtypes())})")
        return name

    def qmin_qmax(self, dtype, narrow: bool | None = None) -> tuple[int, int]:
        """Code range of ``bits``-bit values stored in ``dtype``; ``narrow`` defaults to
        ``narrow_range`` (pass False for the full range, e.g. to check a zero point)."""
        name = self._check_dtype(dtype)
        narrow = self.narrow_range if narrow is None else narrow
        if name.startswith("u"):
            return (1 if narrow else 0), (1 << self.bits) - 1
        lo = -(1 << (self.bits - 1))
        return lo + (1 if narrow else 0), (1 << (self.bits - 1)) - 1

    def symmetric_zero_point(self, dtype) -> int:
        """The zero point a symmetric tensor of ``dtype`` must have."""
        name = self._check_dtype(dtype)
        return (1 << (self.bits - 1)) if name.startswith("u") else 0


@dataclass(frozen=True)
class BiasFormat:
    """Bias: ``bits``-bit signed integers with zero point 0. ``scale`` is always
    ``input_times_weight``: bias scale[c] == input scale * weight scale[c]."""

    bits: int
    scale: str = "input_times_weight"

    @property
    def dtype(self) -> str:
        """Preferred storage dtype: int32 up to 32 bits, else int64."""
        return "int32" if self.bits <= 32 else "int64"

    def dtypes(self) -> tuple[str, ...]:
        return ("int32",) if self.bits <= 32 else ("int32", "int64")

    def qmin_qmax(self) -> tuple[int, int]:
        return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1


@dataclass(frozen=True)
class AccumulatorFormat:
    """Two's-complement accumulator of ``bits`` bits; ``overflow``: wrap | saturate | error
    (simulator ``acc_bits`` / ``acc_overflow``)."""

    bits: int
    overflow: str

    @property
    def dtype(self) -> str:
        return "int32" if self.bits <= 32 else "int64"

    def qmin_qmax(self) -> tuple[int, int]:
        return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1


@dataclass(frozen=True)
class RequantSpec:
    """Accumulator -> output code.

    ``arithmetic``: float32 | fixed_point | double_q31 | shift. ``rounding``: a rounding mode.
    ``zero_point``: after_rounding | before_rounding (before only with float32).
    ``multiplier_bits`` (fixed_point only): the integer multiplier is in
    ``[1, 2**multiplier_bits - 1]``. ``shift_min``/``shift_max`` (not for float32): range of the
    simulator's ``rq_shift`` (right shift; negative = left shift); for double_q31
    ``rq_shift = 31 - tflite_shift``. ``multiplier_precision`` (not for shift): how the real
    multiplier ``s_in*s_w/s_out`` is evaluated before it is encoded: ``float32`` =
    ``f32(f32(s_in*s_w)/s_out)`` (ORT, XNNPACK), ``float64`` = double product and quotient of
    the float32 scales (TFLite ``QuantizeMultiplier``)."""

    arithmetic: str
    rounding: str
    zero_point: str
    multiplier_bits: int | None = None
    shift_min: int | None = None
    shift_max: int | None = None
    multiplier_precision: str | None = None

    @property
    def rq_mode(self) -> str:
        """The simulator requantization mode for conv/gemm (and rescale)."""
        if self.arithmetic == "float32":
            return "fp32_zp_in" if self.zero_point == "before_rounding" else "fp32"
        return {"fixed_point": "fixed", "double_q31": "double_q31",
                "shift": "shift"}[self.arithmetic]

    @property
    def multiplier_max(self) -> int | None:
        """Largest integer multiplier (fixed_point: 2**multiplier_bits - 1; double_q31:
        2**31 - 1); None for float32/shift."""
        if self.arithmetic == "fixed_point":
            return (1 << self.multiplier_bits) - 1
        if self.arithmetic == "double_q31":
            return (1 << 31) - 1
        return None


@dataclass(frozen=True)
class QuantizeSpec:
    """float -> int at the model inputs: ``method`` divide (``f32(x/s)``) or multiply
    (``f32(x*f32(1/s))``), then ``rounding``, zero point after."""

    method: str
    rounding: str


@dataclass(frozen=True)
class OpModes:
    """Per-op arithmetic variants (simulator step ``mode``/``rq_mode`` values).

    ``add``: ort_fma | tflite | fixed | float (``fixed``/``float`` round with
    ``requant.rounding``; ``fixed`` uses the requant block in mode fixed/shift).
    ``mul``: an rq_mode. ``avgpool``: ort_float | tflite_raw | fixed. ``global_avgpool``: an
    rq_mode or ``avgpool``. ``rescale`` (re-gridding, e.g. Concat inputs with different
    scales): float_dq_q (ORT float region DQ->Q) or requant (rescale step with ``requant``).
    ``softmax``: float."""

    add: str
    mul: str
    avgpool: str
    global_avgpool: str
    quantize: QuantizeSpec
    rescale: str
    softmax: str
    # Ops whose activation inputs and output must be on one grid (hardware that concatenates or
    # adds raw codes without rescaling); the re-quantizer ties them, `mrq check` reports them.
    shared_grid: tuple = ()


@dataclass(frozen=True)
class HwProfile:
    name: str
    description: str
    activations: TensorFormat
    weights: TensorFormat
    bias: BiasFormat
    accumulator: AccumulatorFormat
    requant: RequantSpec
    ops: OpModes
    supported_ops: tuple[str, ...]
    source: str = ""    # the file it was loaded from
    runtime: str = "generic"   # peer runtime quirks to reproduce: generic | tflite-reference | xnnpack

    # --- helpers for the lowering ------------------------------------------------------------
    def tensor_format(self, role: str) -> TensorFormat:
        if role == "activations":
            return self.activations
        if role == "weights":
            return self.weights
        raise ValueError(f"role must be 'activations' or 'weights', got {role!r}")

    def activation_dtypes(self) -> tuple[str, ...]:
        return self.activations.dtypes()

    def weight_dtypes(self) -> tuple[str, ...]:
        return self.weights.dtypes()

    def bias_dtype(self) -> str:
        return self.bias.dtype

    def accumulator_dtype(self) -> str:
        return self.accumulator.dtype

    def qmin_qmax(self, role: str, dtype=None) -> tuple[int, int]:
        """Allowed code range of ``role`` ('activations', 'weights', 'bias', 'accumulator')
        stored as ``dtype`` (including narrow range). Raises ValueError on a dtype the profile
        does not allow."""
        if role == "bias":
            return self.bias.qmin_qmax()
        if role == "accumulator":
            return self.accumulator.qmin_qmax()
        return self.tensor_format(role).qmin_qmax(dtype)

    def supports(self, op_type: str) -> bool:
        return op_type in self.supported_ops

    def check_tensor(self, role: str, dtype, scale, zero_point, axis: int | None = None,
                     values=None) -> list[str]:
        """Violations of the profile's format constraints, one line each ([] = conforms).

        ``role``: 'activations', 'weights' or 'bias'. ``scale``/``zero_point``: scalars or 1-D
        arrays (per channel along ``axis``). ``values`` (optional): the integer data, checked
        against the (narrow) code range. Checks dtype, bits, signedness, symmetry, narrow
        range, granularity and the scale form (pow2 exact, fixed_point mantissa bits,
        exponent range)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
        out: list[str] = []
        dname = np.dtype(dtype).name
        scale_arr = np.asarray(scale, dtype=np.float64).reshape(-1)
        zp_raw = np.asarray(zero_point).reshape(-1)
        if zp_raw.size and not np.issubdtype(zp_raw.dtype, np.integer):
            if not np.all(np.isfinite(zp_raw.astype(np.float64))) or \
                    np.any(zp_raw.astype(np.float64) != np.round(zp_raw.astype(np.float64))):
                out.append(f"{role}: zero point must be an integer, got {_fmt_vals(zp_raw)}")
                zp_raw = np.zeros(1, np.int64)
        zp = zp_raw.astype(np.int64)
        if scale_arr.size == 0:
            out.append(f"{role}: empty scale")
        if zp.size == 0:
            out.append(f"{role}: empty zero point")
        if scale_arr.size > 1 and zp.size > 1 and scale_arr.size != zp.size:
            out.append(f"{role}: {scale_arr.size} scales but {zp.size} zero points")

        if role == "bias":
            if dname not in self.bias.dtypes():
                out.append(f"bias: dtype {dname} not allowed (allowed: "
                           f"{', '.join(self.bias.dtypes())})")
            if zp.size and np.any(zp != 0):
                out.append(f"bias: zero point must be 0, got {_fmt_vals(zp)}")
            out += _check_values("bias", values, *self.bias.qmin_qmax(), f"{self.bias.bits}-bit")
            return out

        fmt = self.tensor_format(role)
        dtype_ok = dname in fmt.dtypes()
        if not dtype_ok:
            out.append(f"{role}: dtype {dname} not allowed (profile: {fmt.bits}-bit, "
                       f"{_signed_word(fmt.signed)}; allowed: {', '.join(fmt.dtypes())})")

        # granularity
        n_scale = len(np.unique(scale_arr)) if scale_arr.size else 0
        n_zp = len(np.unique(zp)) if zp.size else 0
        if fmt.granularity == "per_tensor" and n_scale > 1:
            out.append(f"{role}: per-channel scale ({n_scale} distinct values"
                       f"{'' if axis is None else f' on axis {axis}'}) but the profile allows "
                       f"per_tensor only")
        elif scale_arr.size > 1 and axis is None and n_scale > 1:
            out.append(f"{role}: {scale_arr.size} scales given without a channel axis")
        if fmt.zero_point_granularity == "per_tensor" and n_zp > 1:
            out.append(f"{role}: {n_zp} different zero points but the profile allows one zero "
                       f"point per tensor (zero_point_granularity per_tensor)")

        # zero point: dtype range and symmetry
        if dtype_ok and zp.size:
            lo, hi = fmt.qmin_qmax(dname, narrow=False)
            bad = (zp < lo) | (zp > hi)
            if np.any(bad):
                out.append(f"{role}: zero point {_fmt_vals(zp[bad])} outside the {fmt.bits}-bit "
                           f"{dname} range [{lo}, {hi}]{_where(bad)}")
            if fmt.symmetric:
                want = fmt.symmetric_zero_point(dname)
                bad = zp != want
                if np.any(bad):
                    out.append(f"{role}: zero point {_fmt_vals(zp[bad])}{_where(bad)} but the "
                               f"profile is symmetric (zero point must be {want} for {dname})")

        # scale values and form
        out += _check_scales(role, scale_arr, fmt.scale)

        if dtype_ok:
            lo, hi = fmt.qmin_qmax(dname)
            what = f"{fmt.bits}-bit {dname}" + (", narrow range" if fmt.narrow_range else "")
            out += _check_values(role, values, lo, hi, what)
        return out


# ----------------------------------------------------------------------------------------------
# check_tensor helpers


def _signed_word(signed: bool | None) -> str:
    return {True: "signed", False: "unsigned", None: "signed or unsigned"}[signed]


def _fmt_vals(a: np.ndarray, limit: int = 4) -> str:
    a = np.asarray(a).reshape(-1)
    vals = [repr(v.item()) if hasattr(v, "item") else repr(v) for v in a[:limit]]
    if a.size == 1:
        return vals[0]
    more = f", ... ({a.size} values)" if a.size > limit else ""
    return "[" + ", ".join(vals) + more + "]"


def _where(mask: np.ndarray, limit: int = 4) -> str:
    """' at channel 3' / ' at channels 1, 4, 7 and 5 more' for per-channel arrays."""
    mask = np.asarray(mask).reshape(-1)
    if mask.size <= 1:
        return ""
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(i) for i in idx[:limit])
    more = f" and {idx.size - limit} more" if idx.size > limit else ""
    return f" at channel{'s' if idx.size > 1 else ''} {shown}{more}"


def _check_values(role: str, values, lo: int, hi: int, what: str) -> list[str]:
    if values is None:
        return []
    v = np.asarray(values)
    if v.size == 0:
        return []
    vmin, vmax = int(v.min()), int(v.max())
    if vmin < lo or vmax > hi:
        n = int(np.count_nonzero((v < lo) | (v > hi)))
        return [f"{role}: values span [{vmin}, {vmax}], {n} outside the allowed [{lo}, {hi}] "
                f"({what})"]
    return []


def _significant_bits(x: float) -> int:
    """Number of bits of the odd integer m with x = m * 2**e (x > 0, finite)."""
    m, _ = math.frexp(x)
    mant = int(m * (1 << 53))
    mant >>= (mant & -mant).bit_length() - 1
    return mant.bit_length()


def _check_scales(role: str, s: np.ndarray, fmt: ScaleFormat) -> list[str]:
    if s.size == 0:
        return []
    out = []
    bad = ~np.isfinite(s) | (s <= 0)
    if np.any(bad):
        out.append(f"{role}: scale must be positive and finite, got "
                   f"{_fmt_vals(s[bad])}{_where(bad)}")
    good = ~bad
    vals = [float(x) for x in s]
    exps = np.array([math.frexp(x)[1] - 1 if g else 0 for x, g in zip(vals, good)])
    if fmt.form == "pow2":
        badp = np.array([g and math.frexp(x)[0] != 0.5 for x, g in zip(vals, good)])
        if np.any(badp):
            out.append(f"{role}: scale {_fmt_vals(s[badp])}{_where(badp)} is not an exact power "
                       f"of two (profile scale form pow2)")
    elif fmt.form == "fixed_point":
        nb = np.array([_significant_bits(x) if g else 0 for x, g in zip(vals, good)])
        badm = nb > fmt.mantissa_bits
        if np.any(badm):
            out.append(f"{role}: scale {_fmt_vals(s[badm])}{_where(badm)} needs "
                       f"{int(nb[badm].max())} mantissa bits; the profile allows "
                       f"{fmt.mantissa_bits} (scale form fixed_point: m * 2**e, "
                       f"m < 2**{fmt.mantissa_bits})")
    lo = fmt.exponent_min if fmt.exponent_min is not None else -10**9
    hi = fmt.exponent_max if fmt.exponent_max is not None else 10**9
    bade = good & ((exps < lo) | (exps > hi))
    if np.any(bade):
        rng = (f"[{'-inf' if fmt.exponent_min is None else fmt.exponent_min}, "
               f"{'inf' if fmt.exponent_max is None else fmt.exponent_max}]")
        out.append(f"{role}: scale {_fmt_vals(s[bade])}{_where(bade)} has exponent "
                   f"floor(log2(scale)) = {_fmt_vals(exps[bade])} outside the profile's {rng}")
    return out


# ----------------------------------------------------------------------------------------------
# Loading and validation


class _Ctx:
    """Error construction with line numbers from the composed YAML node tree."""

    def __init__(self, path: str, root: yaml.Node | None):
        self.path = path
        self.root = root

    def _node(self, field: str, key_node: bool = False):
        node = self.root
        if node is None or not field or field.startswith("<"):
            return None
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", field)
        last_key = None
        for part in parts:
            if part.startswith("["):
                if not isinstance(node, yaml.SequenceNode):
                    return node
                i = int(part[1:-1])
                if i >= len(node.value):
                    return node
                node, last_key = node.value[i], None
            else:
                if not isinstance(node, yaml.MappingNode):
                    return node
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == part:
                        node, last_key = v, k
                        break
                else:
                    return node   # missing: point at the parent mapping
        return last_key if (key_node and last_key is not None) else node

    def error(self, field: str, problem: str, key_node: bool = False,
              missing: bool = False) -> HwProfileError:
        node = self._node(field, key_node)
        if node is not None and node.start_mark is not None:
            where = "in the mapping at line" if missing else "line"
            problem = f"{problem} ({where} {node.start_mark.line + 1})"
        return HwProfileError(self.path, field, problem)


def _typename(v: Any) -> str:
    if v is None:
        return "null (empty)"
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    if isinstance(v, int):
        return f"the integer {v}"
    if isinstance(v, float):
        return f"the number {v!r}"
    if isinstance(v, str):
        return f"the string {v!r}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return type(v).__name__


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _mapping(ctx: _Ctx, value: Any, field: str, required: Sequence[str],
             optional: Sequence[str] = ()) -> dict:
    """Check ``value`` is a mapping with exactly the allowed keys; return it."""
    allowed = list(required) + list(optional)
    if not isinstance(value, dict):
        raise ctx.error(field or "<document>",
                        f"must be a mapping with fields {', '.join(allowed)}; got "
                        f"{_typename(value)}")
    for k in value:
        if not isinstance(k, str) or k not in allowed:
            ks = str(k)
            hint = difflib.get_close_matches(ks, allowed, n=1)
            hint_s = f"; did you mean '{hint[0]}'?" if hint else ""
            where = f"'{field}'" if field else "the top level"
            raise ctx.error(_join(field, ks),
                            f"unknown field; allowed fields of {where} are "
                            f"{', '.join(allowed)}{hint_s}", key_node=True)
    for k in required:
        if k not in value:
            raise ctx.error(_join(field, k), "missing required field", missing=True)
    return value


def _enum(ctx: _Ctx, m: dict, key: str, prefix: str, choices: Sequence[Any],
          required: bool = True, default: Any = None, why: str = "") -> Any:
    field = _join(prefix, key)
    if key not in m:
        if required:
            raise ctx.error(field, f"missing required field (one of {_choices(choices)})",
                            missing=True)
        return default
    v = m[key]
    if not any(_same(v, c) for c in choices):
        what = f"must be {choices[0]}" if len(choices) == 1 else \
            f"must be one of {_choices(choices)}"
        raise ctx.error(field, f"{what}{why}; got {_show(v)}")
    return v


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _choices(choices: Sequence[Any]) -> str:
    return ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)


def _show(v: Any) -> str:
    if isinstance(v, str):
        return repr(v)
    return _typename(v)


def _int(ctx: _Ctx, m: dict, key: str, prefix: str, lo: int, hi: int,
         required: bool = True) -> int | None:
    field = _join(prefix, key)
    if key not in m:
        if required:
            raise ctx.error(field, f"missing required field (an integer in [{lo}, {hi}])",
                            missing=True)
        return None
    v = m[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise ctx.error(field, f"must be an integer in [{lo}, {hi}]; got {_typename(v)}")
    if not lo <= v <= hi:
        raise ctx.error(field, f"must be an integer in [{lo}, {hi}]; got {v}")
    return v


def _bool(ctx: _Ctx, m: dict, key: str, prefix: str) -> bool:
    field = _join(prefix, key)
    if key not in m:
        raise ctx.error(field, "missing required field (true or false)", missing=True)
    v = m[key]
    if not isinstance(v, bool):
        raise ctx.error(field, f"must be true or false; got {_show(v)}")
    return v


def _forbid(ctx: _Ctx, m: dict, key: str, prefix: str, why: str) -> None:
    if key in m:
        raise ctx.error(_join(prefix, key), f"not allowed {why}", key_node=True)


def _parse_scale(ctx: _Ctx, value: Any, field: str) -> ScaleFormat:
    m = _mapping(ctx, value, field, ["form"], ["mantissa_bits", "exponent_min", "exponent_max"])
    form = _enum(ctx, m, "form", field, SCALE_FORMS)
    if form == "fixed_point":
        mb = _int(ctx, m, "mantissa_bits", field, *MANTISSA_BITS)
    else:
        _forbid(ctx, m, "mantissa_bits", field, f"when form is {form} (only with fixed_point)")
        mb = None
    emin = _int(ctx, m, "exponent_min", field, *EXPONENT_RANGE, required=False)
    emax = _int(ctx, m, "exponent_max", field, *EXPONENT_RANGE, required=False)
    if emin is not None and emax is not None and emin > emax:
        raise ctx.error(_join(field, "exponent_max"),
                        f"must be >= exponent_min ({emin}); got {emax}")
    return ScaleFormat(form, mb, emin, emax)


def _parse_tensor(ctx: _Ctx, value: Any, role: str) -> TensorFormat:
    m = _mapping(ctx, value, role,
                 ["bits", "signed", "symmetric", "narrow_range", "granularity", "scale"],
                 ["zero_point_granularity"])
    bits = _int(ctx, m, "bits", role, *ACT_BITS)
    signed = _enum(ctx, m, "signed", role, (True, False, "any"))
    symmetric = _bool(ctx, m, "symmetric", role)
    narrow = _bool(ctx, m, "narrow_range", role)
    if role == "activations":
        gran = _enum(ctx, m, "granularity", role, ("per_tensor",),
                     why=" (the simulator has per-tensor activation quantization only)")
    else:
        gran = _enum(ctx, m, "granularity", role, GRANULARITIES)
    allowed_zpg = GRANULARITIES if gran == "per_channel" else ("per_tensor",)
    zpg = _enum(ctx, m, "zero_point_granularity", role, allowed_zpg, required=False,
                default=gran, why=f" (never finer than granularity {gran})")
    scale = _parse_scale(ctx, m["scale"], _join(role, "scale"))
    return TensorFormat(role, bits, None if signed == "any" else signed, symmetric, narrow,
                        gran, zpg, scale)


def _parse_requant(ctx: _Ctx, value: Any) -> RequantSpec:
    f = "requant"
    m = _mapping(ctx, value, f, ["arithmetic", "rounding", "zero_point"],
                 ["multiplier_bits", "shift_min", "shift_max", "multiplier_precision"])
    arith = _enum(ctx, m, "arithmetic", f, REQUANT_ARITHMETIC)
    if arith == "double_q31":
        rounding = _enum(ctx, m, "rounding", f, ("half_away", "half_up"),
                         why=" for double_q31 (gemmlowp RHA, or the ruy both-steps-RHU variant)")
    else:
        rounding = _enum(ctx, m, "rounding", f, ROUNDING_MODES)
    if arith == "float32":
        zp = _enum(ctx, m, "zero_point", f, ZERO_POINT_PLACEMENTS)
    else:
        zp = _enum(ctx, m, "zero_point", f, ("after_rounding",),
                   why=f" for arithmetic {arith} (before_rounding needs float32)")
    if arith == "fixed_point":
        mbits = _int(ctx, m, "multiplier_bits", f, *MULTIPLIER_BITS)
    else:
        _forbid(ctx, m, "multiplier_bits", f,
                f"when arithmetic is {arith} (only with fixed_point"
                + ("; double_q31 is always a 31-bit multiplier)" if arith == "double_q31" else ")"))
        mbits = None
    if arith == "float32":
        _forbid(ctx, m, "shift_min", f, "when arithmetic is float32 (there is no shift)")
        _forbid(ctx, m, "shift_max", f, "when arithmetic is float32 (there is no shift)")
        smin = smax = None
    else:
        rng = DOUBLE_Q31_SHIFT_RANGE if arith == "double_q31" else SHIFT_RANGE
        smin = _int(ctx, m, "shift_min", f, *rng)
        smax = _int(ctx, m, "shift_max", f, *rng)
        if smin > smax:
            raise ctx.error(_join(f, "shift_max"), f"must be >= shift_min ({smin}); got {smax}")
    if arith == "shift":
        _forbid(ctx, m, "multiplier_precision", f,
                "when arithmetic is shift (the multiplier is an exact power of two)")
        prec = None
    else:
        prec = _enum(ctx, m, "multiplier_precision", f, MULTIPLIER_PRECISIONS)
    return RequantSpec(arith, rounding, zp, mbits, smin, smax, prec)


def _parse_ops(ctx: _Ctx, value: Any, rq: RequantSpec) -> OpModes:
    f = "ops"
    m = _mapping(ctx, value, f, ["add", "mul", "avgpool", "global_avgpool", "quantize",
                                 "rescale", "softmax"], ["shared_grid"])
    add = _enum(ctx, m, "add", f, ADD_MODES)
    mul = _enum(ctx, m, "mul", f, MUL_MODES)
    avg = _enum(ctx, m, "avgpool", f, AVGPOOL_MODES)
    gavg = _enum(ctx, m, "global_avgpool", f, GLOBAL_AVGPOOL_MODES)
    qf = _join(f, "quantize")
    qm = _mapping(ctx, m["quantize"], qf, ["method", "rounding"])
    quant = QuantizeSpec(_enum(ctx, qm, "method", qf, QUANTIZE_METHODS),
                         _enum(ctx, qm, "rounding", qf, ROUNDING_MODES))
    rescale = _enum(ctx, m, "rescale", f, RESCALE_MODES)
    softmax = _enum(ctx, m, "softmax", f, SOFTMAX_MODES)
    # modes that take the requant block's integer arithmetic
    needs = [("add", add == "fixed", ("fixed_point", "shift")),
             ("avgpool", avg == "fixed", ("fixed_point", "shift")),
             ("mul", mul == "fixed", ("fixed_point",)),
             ("global_avgpool", gavg == "fixed", ("fixed_point",))]
    for key, used, ok in needs:
        if used and rq.arithmetic not in ok:
            raise ctx.error(_join(f, key),
                            f"'fixed' needs requant.arithmetic {' or '.join(ok)} (it uses the "
                            f"requant block's multiplier/shift); requant.arithmetic is "
                            f"{rq.arithmetic}")
    shared = m.get("shared_grid", [])
    sf = _join(f, "shared_grid")
    if not isinstance(shared, list):
        raise ctx.error(sf, f"must be a list of op types from {', '.join(SHARED_GRID_OPS)}; "
                            f"got {_typename(shared)}")
    for i, op in enumerate(shared):
        if op not in SHARED_GRID_OPS:
            raise ctx.error(f"{sf}[{i}]", f"must be one of {', '.join(SHARED_GRID_OPS)} (ops whose "
                                          f"inputs and output can share one grid); got {_show(op)}")
        if op in shared[:i]:
            raise ctx.error(f"{sf}[{i}]", f"duplicate op type {op!r}")
    return OpModes(add, mul, avg, gavg, quant, rescale, softmax, tuple(shared))


def _parse_profile(ctx: _Ctx, data: Any) -> HwProfile:
    m = _mapping(ctx, data, "", ["name", "description", "activations", "weights", "bias",
                                 "accumulator", "requant", "ops", "supported_ops"], ["runtime"])
    runtime = _enum(ctx, m, "runtime", "", RUNTIMES, required=False, default="generic",
                    why=" (the peer runtime whose kernel-specific arithmetic this profile reproduces)")
    name = m["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ctx.error("name", "must be a string of lower-case letters, digits, '.', '_' or "
                                f"'-' (starting with a letter or digit); got {_show(name)}")
    desc = m["description"]
    if not isinstance(desc, str):
        raise ctx.error("description", f"must be one line of text; got {_typename(desc)}")
    if not desc.strip() or "\n" in desc.strip() or "\r" in desc or len(desc) > DESCRIPTION_MAX:
        raise ctx.error("description", f"must be one non-empty line of at most "
                                       f"{DESCRIPTION_MAX} characters; got {desc!r:.80}")
    acts = _parse_tensor(ctx, m["activations"], "activations")
    wts = _parse_tensor(ctx, m["weights"], "weights")

    acc_m = _mapping(ctx, m["accumulator"], "accumulator", ["bits", "overflow"])
    acc = AccumulatorFormat(_int(ctx, acc_m, "bits", "accumulator", *ACC_BITS),
                            _enum(ctx, acc_m, "overflow", "accumulator", OVERFLOW_MODES))

    b_m = _mapping(ctx, m["bias"], "bias", ["bits", "scale"])
    bbits = _int(ctx, b_m, "bits", "bias", *BIAS_BITS)
    if bbits > acc.bits:
        raise ctx.error("bias.bits", f"must be <= accumulator.bits ({acc.bits}); got {bbits}")
    bscale = _enum(ctx, b_m, "scale", "bias", BIAS_SCALES,
                   why=" (bias scale must equal input_scale * weight_scale, so that the bias "
                       "adds to the accumulator directly)")
    bias = BiasFormat(bbits, bscale)

    rq = _parse_requant(ctx, m["requant"])
    ops = _parse_ops(ctx, m["ops"], rq)

    so = m["supported_ops"]
    if not isinstance(so, list) or not so:
        raise ctx.error("supported_ops", f"must be a non-empty list of op types from "
                                         f"{', '.join(KNOWN_OPS)}; got {_typename(so)}")
    seen: set[str] = set()
    for i, op in enumerate(so):
        if not isinstance(op, str) or op not in KNOWN_OPS:
            hint = difflib.get_close_matches(str(op), KNOWN_OPS, n=1)
            raise ctx.error(f"supported_ops[{i}]",
                            f"must be one of {', '.join(KNOWN_OPS)}; got {_show(op)}"
                            + (f"; did you mean '{hint[0]}'?" if hint else ""))
        if op in seen:
            raise ctx.error(f"supported_ops[{i}]", f"duplicate op type {op!r}")
        seen.add(op)
    return HwProfile(name, desc.strip(), acts, wts, bias, acc, rq, ops, tuple(so), ctx.path, runtime)


def _check_duplicate_keys(ctx: _Ctx, node: yaml.Node, prefix: str = "") -> None:
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
            field = _join(prefix, key)
            if key in seen:
                raise HwProfileError(ctx.path, field,
                                     f"duplicate key (line {k.start_mark.line + 1})")
            seen.add(key)
            _check_duplicate_keys(ctx, v, field)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _check_duplicate_keys(ctx, v, f"{prefix}[{i}]")


def _resolve(name_or_path: str | os.PathLike) -> Path:
    s = os.fspath(name_or_path)
    p = Path(s)
    is_pathlike = (isinstance(name_or_path, os.PathLike) or "/" in s or os.sep in s
                   or s.endswith((".yaml", ".yml")) or p.is_file())
    if is_pathlike:
        return p
    for d in profile_dirs():
        cand = d / f"{s}.yaml"
        if cand.is_file():
            return cand
    names = [n for n, _ in _list_names()]
    hint = difflib.get_close_matches(s, names, n=1)
    raise HwProfileError(s, "<file>",
                         f"no shipped hardware profile named {s!r}"
                         + (f" (did you mean '{hint[0]}'?)" if hint else "")
                         + f"; available: {', '.join(names) or '(none)'}; "
                           "or give a path to a .yaml file")


def load_profile(name_or_path: str | os.PathLike) -> HwProfile:
    """Load and validate a hardware profile: a shipped name (``nna-sym8`` ->
    ``hw_profiles/nna-sym8.yaml``) or a path to a YAML file. Raises HwProfileError."""
    path = _resolve(name_or_path)
    spath = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HwProfileError(spath, "<file>", "file not found") from None
    except IsADirectoryError:
        raise HwProfileError(spath, "<file>", "is a directory, not a YAML file") from None
    except UnicodeDecodeError as e:
        raise HwProfileError(spath, "<file>", f"not UTF-8 text ({e.reason} at byte "
                                              f"{e.start})") from None
    except OSError as e:
        raise HwProfileError(spath, "<file>", f"cannot read: {e.strerror or e}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        ctxt = getattr(e, "context", None)
        raise HwProfileError(spath, "<document>",
                             f"YAML syntax error{where}: {problem}"
                             + (f" ({ctxt})" if ctxt else "")) from None
    ctx = _Ctx(spath, root)
    if data is None:
        raise HwProfileError(spath, "<document>", "the file is empty; a profile is a YAML "
                                                  "mapping (name: ..., description: ..., ...)")
    if not isinstance(data, dict):
        line = f" (line {root.start_mark.line + 1})" if root is not None else ""
        raise HwProfileError(spath, "<document>",
                             f"the top level must be a mapping (name: ..., description: ..., "
                             f"...); got {_typename(data)}{line}")
    _check_duplicate_keys(ctx, root)
    return _parse_profile(ctx, data)


def _list_names() -> list[tuple[str, Path]]:
    seen: dict[str, Path] = {}
    for d in profile_dirs():
        for p in sorted(d.glob("*.yaml")):
            seen.setdefault(p.stem, p)
    return sorted(seen.items())


def list_profiles() -> list[tuple[str, str]]:
    """``[(name, one-line description)]`` of the shipped profiles, sorted by name. Each file
    is loaded (validated); a malformed shipped profile raises HwProfileError."""
    return [(name, load_profile(p).description) for name, p in _list_names()]


def iter_profiles() -> Iterable[HwProfile]:
    """All shipped profiles, loaded, sorted by name."""
    for _, p in _list_names():
        yield load_profile(p)
