"""Hardware profiles: the number formats and integer arithmetic of a target.

A profile is a YAML file (``<name>.yaml``, schema in ``hw_profiles/schema.json``, reference in
docs/profiles.md). :func:`load_profile` reads and validates one into a frozen
:class:`HwProfile`. The profile is the truth: every field it states changes what the simulator
computes, or the load fails. A failed load raises :class:`mrq.errors.HwProfileError` carrying
*every* independent problem, one line each, naming the file, the dotted field path, the value
and what is allowed. The lowering reads facts from the dataclasses and uses the helpers
(:meth:`HwProfile.activation_dtypes`, :meth:`HwProfile.qmin_qmax`,
:meth:`HwProfile.check_tensor`, :meth:`HwProfile.runs_on_host`, :attr:`RequantSpec.rq_mode`, ...).

Profiles are found by name along :func:`profile_search_path`: the directories of
``$MRQ_PROFILE_PATH`` (``os.pathsep``-separated, in order), then ``./hw_profiles`` of the
current directory, then the shipped ones (:func:`profile_dirs`); the first match wins.

Vocabulary (see docs/PROGRAM.md for what the simulator does with it):

* rounding modes: the table of :mod:`simulator.rounding` (``half_even``, ``half_away``,
  ``half_up``, ``floor``, ``toward_zero``, ``half_down``);
* ``requant.arithmetic`` -> simulator ``rq_mode``: ``float32`` -> ``fp32`` (zero point after
  rounding) or ``fp32_zp_in`` (zero point before rounding), ``fixed_point`` -> ``fixed``,
  ``double_q31`` -> ``double_q31``, ``shift`` -> ``shift``;
* ``ops.mul``: ``requant`` (the requant block) or ``fp32_zp_in`` (ORT QLinearMul);
  ``ops.global_avgpool``: ``requant`` (sum, then the requant block with 1/N in the multiplier)
  or ``avgpool`` (an average pool over the whole plane with ``ops.avgpool``'s arithmetic).
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import math
import os
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml

from mrq import safe_yaml
from mrq.errors import HwProfileError
from mrq.fileio import FileProblem, read_regular_file
from mrq.pointwise import POINTWISE
from simulator import rounding as _rounding

__all__ = [
    "ScaleFormat", "TensorFormat", "BiasFormat", "AccumulatorFormat", "RequantSpec",
    "QuantizeSpec", "OpModes", "HwProfile", "ProfileEntry", "load_profile", "list_profiles",
    "iter_profiles", "find_profiles", "profile_dirs", "profile_search_path",
    "ROUNDING_MODES", "OVERFLOW_MODES", "SCALE_FORMS", "GRANULARITIES", "REQUANT_ARITHMETIC",
    "ZERO_POINT_PLACEMENTS", "MULTIPLIER_PRECISIONS", "ADD_MODES", "RQ_MODES", "MUL_MODES",
    "AVGPOOL_MODES", "GLOBAL_AVGPOOL_MODES", "QUANTIZE_METHODS", "RESCALE_MODES",
    "SOFTMAX_MODES", "BIAS_ORDERS", "PRODUCT_ORDERS", "PAIR_SUMS", "RUNTIME_ISAS",
    "onnxruntime_profile_for_host", "KNOWN_OPS", "OP_FIELDS", "ROLES",
    "PROFILE_PATH_ENV", "LayerOverride", "LAYER_OPS", "LAYER_POSITIONS", "LAYER_ROLES",
]

# ----------------------------------------------------------------------------------------------
# Vocabulary (hw_profiles/schema.json uses the same lists; a test keeps them in sync)

ROUNDING_MODES = _rounding.NAMES  # the simulator's one table of rounding modes
OVERFLOW_MODES = ("wrap", "saturate", "error")
SCALE_FORMS = ("float", "fixed_point", "pow2")
GRANULARITIES = ("per_tensor", "per_channel")
REQUANT_ARITHMETIC = ("float32", "fixed_point", "double_q31", "shift")
ZERO_POINT_PLACEMENTS = ("after_rounding", "before_rounding")
MULTIPLIER_PRECISIONS = ("float32", "float64")
ADD_MODES = ("ort_fma", "tflite", "fixed", "float")
# The simulator's requantization modes (values of RequantSpec.rq_mode), not profile vocabulary.
RQ_MODES = ("fp32", "fp32_zp_in", "fixed", "double_q31", "shift")
MUL_MODES = ("requant", "fp32_zp_in")
AVGPOOL_MODES = ("ort_float", "tflite_raw", "fixed")
AVGPOOL_DIVIDING = ("ort_float", "tflite_raw")   # they divide the window sum by its count
GLOBAL_AVGPOOL_MODES = ("requant", "avgpool")
QUANTIZE_METHODS = ("divide", "multiply")
SHARED_GRID_OPS = ("Concat", "Add")
RESCALE_MODES = ("float_dq_q", "requant")
SOFTMAX_MODES = ("float",)
BIAS_SCALES = ("input_times_weight",)
# The accumulation order the simulator implements (docs/PROGRAM.md, accumulator block).
BIAS_ORDERS = ("first",)
# row_col_channel (ONNX Runtime's NHWC im2col order) only decides which products form the pairs
# of pair_sums saturate_int16, the one place the simulator implements it.
PRODUCT_ORDERS = ("channel_row_col", "row_col_channel")
# How the products of an unsigned 8-bit activation and a signed 8-bit weight reach the
# accumulator: exact, or two at a time with each pair sum saturated to int16 first (x86
# ``vpmaddubsw``: ONNX Runtime's u8s8 kernels on AVX2 and AVX-512 hosts without VNNI).
PAIR_SUMS = ("exact", "saturate_int16")
# ONNX Runtime's MLAS float kernels: AVX-512F hosts or AVX2/FMA3 hosts (runtime onnxruntime only).
RUNTIME_ISAS = ("avx512f", "fma3")
# What the re-quantizer promises about accumulator overflow (mrq/passes/accumulator_budget.py):
# proof = no partial sum can leave the width for inputs in the calibration range (mrq check
# counts a possible overflow as a violation); measured = a saturating accumulator may clamp where
# the calibration data shows that costs less accuracy than a proof (check lists, not counts, it).
ACC_GUARANTEES = ("proof", "measured")
# a dot product of more than 2**24 terms is beyond any conv/gemm: with this much headroom over
# one product the measured guarantee cannot matter
MEASURED_MAX_HEADROOM_BITS = 24
HOST_FLOAT = "float"
KNOWN_OPS = tuple(dict.fromkeys((
    "Conv", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Concat", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
    "Softmax", "Identity", "Pad", "Mean", "Logistic", "Sub", "ConvTranspose",
    # data movement, selection and table ops of TFLite models (mrq/tflite_import_shape.py)
    "Gather", "Slice", "Split", "Tile", "DepthToSpace", "SpaceToDepth", "Resize", "ArgMax",
    "ReduceMax", "Max", "Min", "Cast", "PRelu",   # HardSwish, Tanh: in POINTWISE
    "LSTM", "SVDF",   # TFLite recurrent ops (mrq/tflite_import_recurrent.py)
    "LayerNormalization",   # ORT float kernel (mrq/onnx_import_islands.py)
    "ReduceL2",   # ORT float kernel in mixed graphs (mrq/onnx_import_float.py)
    # ai.onnx.ml preprocessing of plain numbers in mixed graphs (mrq/onnx_import_ml.py)
    "Imputer", "Scaler", "OneHotEncoder", "ArrayFeatureExtractor",
    # float math of transformers in mixed graphs (mrq/onnx_import_math.py)
    "Sqrt", "Neg", "Abs", "Pow", "ReduceMean",
) + tuple(POINTWISE)))  # table ops of mrq/pointwise.py; some are TFLite ops too
# ops.<field> -> the op type whose arithmetic it sets: required when that op is in
# supported_ops, rejected otherwise.
OP_FIELDS = {"add": "Add", "mul": "Mul", "avgpool": "AveragePool",
             "global_avgpool": "GlobalAveragePool", "softmax": "Softmax"}
# Op types that multiply an accumulator grid by a weight grid (need the requant block).
MAC_OPS = ("Conv", "Gemm", "MatMul")
# Peer runtimes whose quirks go beyond the generic vocabulary (see mrq/lower_extra.py).
RUNTIMES = ("generic", "tflite-reference", "xnnpack", "onnxruntime")
ROLES = ("activations", "weights", "bias")
# layers: selectors and the roles an entry may override (docs/profiles.md, `layers`). A
# DepthwiseConv is a Conv whose group count equals its input channels (> 1).
LAYER_OPS = ("Conv", "DepthwiseConv", "Gemm")
LAYER_POSITIONS = ("first", "last")
LAYER_SELECTORS = ("op", "name", "position")
LAYER_ROLES = ("activations", "weights")

ACT_BITS = (2, 16)        # activations and weights: storage is int8/uint8 or int16/uint16
BIAS_BITS = (8, 64)
ACC_BITS = (16, 64)
MULTIPLIER_BITS = (1, 32)  # simulator 'fixed' mode needs |multiplier| < 2**32
SHIFT_RANGE = (-32, 63)
DOUBLE_Q31_SHIFT_RANGE = (1, 62)  # rq_shift = 31 - tflite_shift, tflite_shift in [-31, 30]
DOUBLE_Q31_ACC_BITS = 32  # the simulator wraps the accumulator to int32 before SRDHM
MANTISSA_BITS = (1, 24)   # float32 has a 24-bit significand
EXPONENT_RANGE = (-149, 127)
DESCRIPTION_MAX = 200
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
PROFILE_PATH_ENV = "MRQ_PROFILE_PATH"
# A profile is a few KB; the bound keeps a mistyped path (a model, /dev/zero) from being parsed.
MAX_PROFILE_BYTES = 256 * 1024

_PACKAGE_DIR = Path(__file__).resolve().parent


def profile_dirs() -> list[Path]:
    """Directories of the shipped profiles, in order: ``mrq/hw_profiles`` (package data of a
    wheel install, if it ships them there) and ``<repo>/hw_profiles``."""
    cands = [_PACKAGE_DIR / "hw_profiles", _PACKAGE_DIR.parent / "hw_profiles"]
    return [d for d in cands if d.is_dir()]


def profile_search_path() -> list[tuple[Path, str]]:
    """Where profile names are looked up, in order, as ``(directory, origin)``: each directory
    of ``$MRQ_PROFILE_PATH`` (origin ``MRQ_PROFILE_PATH``), ``./hw_profiles`` of the current
    directory (``./hw_profiles``), then :func:`profile_dirs` (``shipped``). A directory is
    listed once, at its first position; one that is also a shipped directory is labelled
    ``shipped``. Directories that do not exist are included (``mrq profiles`` reports them)."""
    shipped = profile_dirs()
    shipped_real = {_real(d) for d in shipped}
    cands = [(Path(p), PROFILE_PATH_ENV)
             for p in os.environ.get(PROFILE_PATH_ENV, "").split(os.pathsep) if p]
    try:
        cands.append((Path.cwd() / "hw_profiles", "./hw_profiles"))
    except OSError:   # the current directory was deleted: there is no ./hw_profiles
        pass
    cands += [(d, "shipped") for d in shipped]
    out, seen = [], set()
    for d, origin in cands:
        real = _real(d)
        if real in seen:
            continue
        seen.add(real)
        out.append((d, "shipped" if real in shipped_real else origin))
    return out


def _real(d: Path) -> str:
    try:
        return str(d.resolve())
    except OSError:
        return str(d.absolute())


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
        name = _dtype_name(dtype)
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
    (simulator ``acc_bits`` / ``acc_overflow``).

    ``bias`` and ``product_order`` state the order of the additions, which decides the result
    only under ``overflow: saturate | error`` (a wrapping sum does not depend on it), and
    ``product_order`` also which products form the pairs of ``pair_sums``. The simulator
    implements ``bias: first`` (the accumulator starts at the bias) and ``product_order:
    channel_row_col`` (conv products by input channel, then kernel row, then kernel column;
    gemm products by k), and ``row_col_channel`` (kernel row, kernel column, input channel:
    ONNX Runtime's NHWC im2col) only as the pairing order of ``pair_sums``.

    ``pair_sums``: ``exact``, or ``saturate_int16``: a dot product of unsigned 8-bit
    activations and signed 8-bit weights adds its products to the accumulator two at a time,
    each pair sum of raw codes saturated to int16 first (x86 ``vpmaddubsw``; the zero points
    are applied exactly afterwards): products ``2j`` and ``2j + 1`` in ``product_order``
    ``row_col_channel``, per group, an odd last one alone, padding at the input zero point.
    ONNX Runtime's rules only (runtime onnxruntime): its depthwise, ConvInteger and
    float-kept convs are exact (mrq/lower.py ``pair_sums``). Other operand types are
    exact."""

    bits: int
    overflow: str
    bias: str = "first"
    product_order: str = "channel_row_col"
    guarantee: str = "proof"
    pair_sums: str = "exact"   # see PAIR_SUMS

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
    """Per-op arithmetic. An op's field is None when the op is not in ``supported_ops`` (the
    profile must not state it then); ``quantize`` and ``rescale`` exist in every model and are
    always set.

    ``add`` (Add): ort_fma | tflite | fixed | float (``fixed``/``float`` round with
    ``requant.rounding``; ``fixed`` aligns both inputs with integer multipliers and then uses
    the requant block, so it needs fixed_point or shift arithmetic).
    ``mul`` (Mul): ``requant`` = ``(a-za)*(b-zb)`` exact, then the requant block (its
    arithmetic, rounding and zero-point placement); ``fp32_zp_in`` = ONNX Runtime QLinearMul,
    the output zero point added inside the float rounding (float32 arithmetic only).
    ``avgpool`` (AveragePool): ort_float (dequantize, float average, quantize) | tflite_raw
    (round half away of the raw-code sum / count) | fixed (integer sum of ``x - zp``, then
    ``round_div(sum, count)`` and the requant block; with ``divider: false`` 1/count is folded
    into the requant multiplier instead).
    ``global_avgpool`` (GlobalAveragePool): ``requant`` = integer sum over H*W, then the
    requant block with 1/N folded into the multiplier; ``avgpool`` = an average pool over the
    whole plane with ``avgpool``'s arithmetic.
    ``softmax`` (Softmax): float (dequantize, softmax in float64, quantize).
    ``quantize``: float -> int at the model inputs. ``rescale`` (re-gridding, e.g. Concat
    inputs with different scales): float_dq_q (ORT float region DQ->Q) or requant (integer
    rescale with the requant block).
    ``divider``: the hardware has an integer divider (default true). Without one the avgpool
    modes that divide by the count (ort_float, tflite_raw) are rejected."""

    add: str | None
    mul: str | None
    avgpool: str | None
    global_avgpool: str | None
    quantize: QuantizeSpec
    rescale: str
    softmax: str | None
    # Ops whose activation inputs and output must be on one grid (hardware that concatenates or
    # adds raw codes without rescaling); the re-quantizer ties them, `mrq check` reports them.
    shared_grid: tuple = ()
    divider: bool = True


@dataclass(frozen=True)
class LayerOverride:
    """One entry of ``layers:``. It selects the conv/gemm layers for which every stated selector
    holds (``op``: a kind of :data:`LAYER_OPS`, ``Conv`` covering depthwise ones too; ``name``:
    a glob on the node name; ``position``: ``first``/``last`` MAC layer in graph order) and
    gives them complete formats (the profile's own block with the entry's fields on top; None
    for a role the entry does not state). ``index`` is its place in the list."""

    index: int
    op: str | None
    name: str | None
    position: str | None
    activations: TensorFormat | None
    weights: TensorFormat | None

    def matches(self, kind: str, name: str, positions: Iterable[str] = ()) -> bool:
        if self.op is not None and self.op != kind and not (self.op == "Conv"
                                                            and kind == "DepthwiseConv"):
            return False
        if self.name is not None and not fnmatch.fnmatchcase(name, self.name):
            return False
        return self.position is None or self.position in positions

    def selector(self) -> str:
        """``op=Conv, name='block*'`` (for messages)."""
        parts = [f"op={self.op}" if self.op else "", f"name={self.name!r}" if self.name else "",
                 f"position={self.position}" if self.position else ""]
        return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class HwProfile:
    """A validated hardware profile.

    ``supported_ops``: op types the NPU runs. ``host_ops``: op types that run on the host
    instead, op -> arithmetic: ``float`` (dequantize, float op, quantize) or the name of
    another profile whose arithmetic lowers that op; ``host_profiles[op]`` is that profile,
    loaded when this one was. ``source``: the file it was loaded from. ``runtime``: peer
    runtime quirks to reproduce (generic | tflite-reference | xnnpack | onnxruntime;
    mrq/lower_extra.py, mrq/pointwise.py)."""

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
    runtime: str = "generic"   # peer runtime quirks to reproduce: see RUNTIMES
    # hash=False: a dict would make the frozen dataclass unhashable.
    host_ops: dict = field(default_factory=dict, hash=False)
    # compare=False: two profiles are equal when they name the same host arithmetic.
    host_profiles: dict = field(default_factory=dict, hash=False, compare=False, repr=False)
    # Per-layer formats (``layers:``) in file order; resolved by :meth:`for_layer` only.
    layers: tuple = ()
    # runtime onnxruntime: the MLAS float kernels it reproduces (RUNTIME_ISAS); "" otherwise
    runtime_isa: str = ""

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

    def runs_on_host(self, op_type: str) -> bool:
        """True when ``op_type`` is in ``host_ops`` (runs on the host, not the NPU)."""
        return op_type in self.host_ops

    def host_profile(self, op_type: str) -> "HwProfile | None":
        """The profile whose arithmetic lowers host op ``op_type``; None for ``float`` host ops
        and ops that are not host ops."""
        return self.host_profiles.get(op_type)

    def for_layer(self, kind: str, name: str, positions: Iterable[str] = ()) -> HwProfile:
        """The profile a conv/gemm layer runs under: for each role, the format of the last
        ``layers`` entry that matches the layer and states that role, else the profile's own.
        ``kind``: a :data:`LAYER_OPS` value; ``positions``: which of ``first``/``last`` the
        layer is. The result has no ``layers`` of its own (it is one layer's profile)."""
        if not self.layers:
            return self
        acts, wts = self.activations, self.weights
        for entry in self.layers:
            if entry.matches(kind, name, positions):
                acts = entry.activations or acts
                wts = entry.weights or wts
        return replace(self, activations=acts, weights=wts, layers=())

    def to_dict(self) -> dict:
        """The profile in its YAML vocabulary with every default filled in (``mrq profiles
        show``); loading it again gives an equal profile."""
        def scale(s: ScaleFormat) -> dict:
            out = {"form": s.form}
            for k in ("mantissa_bits", "exponent_min", "exponent_max"):
                if getattr(s, k) is not None:
                    out[k] = getattr(s, k)
            return out

        def tensor(t: TensorFormat) -> dict:
            return {"bits": t.bits, "signed": "any" if t.signed is None else t.signed,
                    "symmetric": t.symmetric, "narrow_range": t.narrow_range,
                    "granularity": t.granularity,
                    "zero_point_granularity": t.zero_point_granularity, "scale": scale(t.scale)}

        rq = self.requant
        requant = {"arithmetic": rq.arithmetic, "rounding": rq.rounding,
                   "zero_point": rq.zero_point}
        for k in ("multiplier_bits", "shift_min", "shift_max", "multiplier_precision"):
            if getattr(rq, k) is not None:
                requant[k] = getattr(rq, k)
        o = self.ops
        ops = {k: getattr(o, k) for k in ("add", "mul", "avgpool", "global_avgpool")
               if getattr(o, k) is not None}
        ops["quantize"] = {"method": o.quantize.method, "rounding": o.quantize.rounding}
        ops["rescale"] = o.rescale
        if o.softmax is not None:
            ops["softmax"] = o.softmax
        ops["divider"] = o.divider
        ops["shared_grid"] = list(o.shared_grid)
        acc = self.accumulator
        return {
            "name": self.name, "description": self.description, "runtime": self.runtime,
            **({"runtime_isa": self.runtime_isa} if self.runtime_isa else {}),
            "activations": tensor(self.activations), "weights": tensor(self.weights),
            "bias": {"bits": self.bias.bits, "scale": self.bias.scale},
            "accumulator": {"bits": acc.bits, "overflow": acc.overflow, "bias": acc.bias,
                            "product_order": acc.product_order, "guarantee": acc.guarantee,
                            "pair_sums": acc.pair_sums},
            "requant": requant, "ops": ops, "supported_ops": list(self.supported_ops),
            "host_ops": dict(self.host_ops),
            **({"layers": [_layer_dict(e, tensor) for e in self.layers]} if self.layers else {}),
        }

    def check_tensor(self, role: str, dtype, scale, zero_point, axis: int | None = None,
                     values=None, code_range: tuple | None = None) -> list[str]:
        """Violations of the profile's format constraints, one line each ([] = conforms).

        ``role``: 'activations', 'weights' or 'bias'. ``scale``/``zero_point``: scalars or 1-D
        arrays (per channel along ``axis``). ``values`` (optional): the integer data, checked
        against the (narrow) code range. ``code_range`` (optional): the ``(qmin, qmax)`` the
        tensor's grid lets codes take (4-bit codes in int8 have [-8, 7]), which must lie inside
        the profile's. Checks dtype, bits, signedness, symmetry, narrow range, granularity and
        the scale form (pow2 exact, fixed_point mantissa bits, exponent range)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
        out: list[str] = []
        dname = _dtype_name(dtype)
        scale_arr = np.asarray(scale, dtype=np.float64).reshape(-1)
        zp_raw = np.asarray(zero_point).reshape(-1)
        # dtype kinds i/u: exactly the subtypes of np.integer
        if zp_raw.size and zp_raw.dtype.kind not in "iu":
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
            if zp.size and (zp != 0).any():
                out.append(f"bias: zero point must be 0, got {_fmt_vals(zp)}")
            out += _check_values("bias", values, *self.bias.qmin_qmax(), f"{self.bias.bits}-bit")
            return out

        fmt = self.tensor_format(role)
        allowed = fmt.dtypes()
        dtype_ok = dname in allowed
        if not dtype_ok:
            out.append(f"{role}: dtype {dname} not allowed (profile: {fmt.bits}-bit, "
                       f"{_signed_word(fmt.signed)}; allowed: {', '.join(allowed)})")

        # granularity (one value is one distinct value, whatever it is)
        n_scale = scale_arr.size if scale_arr.size <= 1 else len(np.unique(scale_arr))
        n_zp = zp.size if zp.size <= 1 else len(np.unique(zp))
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
            if bad.any():
                out.append(f"{role}: zero point {_fmt_vals(zp[bad])} outside the {fmt.bits}-bit "
                           f"{dname} range [{lo}, {hi}]{_where(bad)}")
            if fmt.symmetric:
                want = fmt.symmetric_zero_point(dname)
                bad = zp != want
                if bad.any():
                    out.append(f"{role}: zero point {_fmt_vals(zp[bad])}{_where(bad)} but the "
                               f"profile is symmetric (zero point must be {want} for {dname})")

        # scale values and form
        out += _check_scales(role, scale_arr, fmt.scale)

        if dtype_ok:
            lo, hi = fmt.qmin_qmax(dname)
            what = f"{fmt.bits}-bit {dname}" + (", narrow range" if fmt.narrow_range else "")
            out += _check_values(role, values, lo, hi, what)
            # the grid's own code range: an 8-bit grid in int8 is not a 4-bit one
            if code_range is not None and (code_range[0] < lo or code_range[1] > hi):
                out.append(f"{role}: the grid's codes span [{code_range[0]}, {code_range[1]}], "
                           f"outside the profile's [{lo}, {hi}] ({what})")
        return out


def _layer_dict(entry: LayerOverride, tensor) -> dict:
    out = {k: getattr(entry, k) for k in LAYER_SELECTORS if getattr(entry, k) is not None}
    out.update({role: tensor(getattr(entry, role)) for role in LAYER_ROLES
                if getattr(entry, role) is not None})
    return out


# ----------------------------------------------------------------------------------------------
# check_tensor helpers


_DTYPE_NAMES: dict = {}


def _dtype_name(dtype) -> str:
    """``np.dtype(dtype).name``, memoised for hashable specs (a few microseconds each, and
    check_tensor runs per tensor). Equal specs are equal dtypes, which have one name."""
    try:
        return _DTYPE_NAMES[dtype]
    except (KeyError, TypeError):
        pass
    name = np.dtype(dtype).name
    try:
        if len(_DTYPE_NAMES) < 256:
            _DTYPE_NAMES[dtype] = name
    except TypeError:
        pass
    return name


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
    if bad.any():
        out.append(f"{role}: scale must be positive and finite, got "
                   f"{_fmt_vals(s[bad])}{_where(bad)}")
    good = ~bad
    vals = s.tolist()
    flags = good.tolist()
    exps = np.array([math.frexp(x)[1] - 1 if g else 0 for x, g in zip(vals, flags)])
    if fmt.form == "pow2":
        badp = np.array([g and math.frexp(x)[0] != 0.5 for x, g in zip(vals, flags)])
        if badp.any():
            out.append(f"{role}: scale {_fmt_vals(s[badp])}{_where(badp)} is not an exact power "
                       f"of two (profile scale form pow2)")
    elif fmt.form == "fixed_point":
        nb = np.array([_significant_bits(x) if g else 0 for x, g in zip(vals, flags)])
        badm = nb > fmt.mantissa_bits
        if badm.any():
            out.append(f"{role}: scale {_fmt_vals(s[badm])}{_where(badm)} needs "
                       f"{int(nb[badm].max())} mantissa bits; the profile allows "
                       f"{fmt.mantissa_bits} (scale form fixed_point: m * 2**e, "
                       f"m < 2**{fmt.mantissa_bits})")
    lo = fmt.exponent_min if fmt.exponent_min is not None else -10**9
    hi = fmt.exponent_max if fmt.exponent_max is not None else 10**9
    bade = good & ((exps < lo) | (exps > hi))
    if bade.any():
        rng = (f"[{'-inf' if fmt.exponent_min is None else fmt.exponent_min}, "
               f"{'inf' if fmt.exponent_max is None else fmt.exponent_max}]")
        out.append(f"{role}: scale {_fmt_vals(s[bade])}{_where(bade)} has exponent "
                   f"floor(log2(scale)) = {_fmt_vals(exps[bade])} outside the profile's {rng}")
    return out


# ----------------------------------------------------------------------------------------------
# Loading and validation
#
# A load collects every independent problem. Leaf parsers raise ``_Invalid`` after recording
# theirs; ``ctx.check`` turns that into the ``_BAD`` marker so the enclosing parser goes on with
# the next field, and checks that relate a field to a ``_BAD`` one are skipped (they would only
# repeat the first problem).


class _Invalid(Exception):
    """A field could not be parsed; its problem is already recorded."""


_BAD = object()


def _ok(*values: Any) -> bool:
    return all(v is not _BAD for v in values)


class _Ctx:
    """Problem collection with line numbers from the composed YAML node tree."""

    def __init__(self, path: str, root: yaml.Node | None):
        self.path = path
        self.root = root
        self.problems: list[tuple[int, str, str]] = []   # (line or 0, field, problem)

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

    def report(self, field: str, problem: str, key_node: bool = False,
               missing: bool = False) -> None:
        node = self._node(field, key_node)
        line = 0
        if node is not None and node.start_mark is not None:
            line = node.start_mark.line + 1
            where = "in the mapping at line" if missing else "line"
            problem = f"{problem} ({where} {line})"
        self.problems.append((line, field, problem))

    def fail(self, field: str, problem: str, key_node: bool = False,
             missing: bool = False) -> _Invalid:
        self.report(field, problem, key_node, missing)
        return _Invalid()

    def check(self, fn, *args, **kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except _Invalid:
            return _BAD

    def raise_problems(self) -> None:
        if not self.problems:
            return
        # in file order; sorted() is stable, so one line keeps the order the checks found
        (_, field, problem), *rest = sorted(self.problems, key=lambda p: p[0])
        raise HwProfileError(self.path, field, problem,
                             more=[(self.path, f, p) for _, f, p in rest])


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
        return f"the string {_show(v)}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return type(v).__name__


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _key(k: Any) -> str:
    """A YAML key as a field-path component: one short line whatever the file holds."""
    s = str(k) if isinstance(k, (str, int, float, bool)) or k is None else type(k).__name__
    return s if re.fullmatch(r"[^\s.\[\]]{1,60}", s) else repr(s[:60])


def _mapping(ctx: _Ctx, value: Any, field: str, allowed: Sequence[str]) -> dict:
    """``value`` must be a mapping; keys outside ``allowed`` are reported (each once), the
    known ones are returned for checking. Required keys are checked by the field parsers, which
    know what the field may hold."""
    if not isinstance(value, dict):
        raise ctx.fail(field or "<document>",
                       f"must be a mapping with fields {', '.join(allowed)}; got "
                       f"{_typename(value)}")
    for k in value:
        if not isinstance(k, str) or k not in allowed:
            hint = difflib.get_close_matches(k, allowed, n=1) if isinstance(k, str) else []
            hint_s = f"; did you mean '{hint[0]}'?" if hint else ""
            where = f"'{field}'" if field else "the top level"
            ctx.report(_join(field, _key(k)), f"unknown field; allowed fields of {where} are "
                                              f"{', '.join(allowed)}{hint_s}", key_node=True)
    return value


def _get(ctx: _Ctx, m: dict, key: str, prefix: str) -> Any:
    if key not in m:
        raise ctx.fail(_join(prefix, key), "missing required field", missing=True)
    return m[key]


def _enum(ctx: _Ctx, m: dict, key: str, prefix: str, choices: Sequence[Any],
          required: bool = True, default: Any = None, why: str = "",
          why_required: str = "") -> Any:
    field = _join(prefix, key)
    if key not in m:
        if required:
            raise ctx.fail(field, f"missing required field{why_required} (one of "
                                  f"{_choices(choices)})", missing=True)
        return default
    v = m[key]
    if not any(_same(v, c) for c in choices):
        what = f"must be {_choices(choices)}" if len(choices) == 1 else \
            f"must be one of {_choices(choices)}"
        raise ctx.fail(field, f"{what}{why}; got {_show(v)}")
    return v


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _choices(choices: Sequence[Any]) -> str:
    return ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)


def _show(v: Any) -> str:
    if isinstance(v, str):
        return repr(v) if len(v) <= 60 else repr(v[:60]) + "..."
    return _typename(v)


def _int(ctx: _Ctx, m: dict, key: str, prefix: str, lo: int, hi: int,
         required: bool = True) -> int | None:
    field = _join(prefix, key)
    if key not in m:
        if required:
            raise ctx.fail(field, f"missing required field (an integer in [{lo}, {hi}])",
                           missing=True)
        return None
    v = m[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise ctx.fail(field, f"must be an integer in [{lo}, {hi}]; got {_typename(v)}")
    if not lo <= v <= hi:
        raise ctx.fail(field, f"must be an integer in [{lo}, {hi}]; got {v}")
    return v


def _bool(ctx: _Ctx, m: dict, key: str, prefix: str, required: bool = True,
          default: bool | None = None) -> bool | None:
    field = _join(prefix, key)
    if key not in m:
        if required:
            raise ctx.fail(field, "missing required field (true or false)", missing=True)
        return default
    v = m[key]
    if not isinstance(v, bool):
        raise ctx.fail(field, f"must be true or false; got {_show(v)}")
    return v


def _forbid(ctx: _Ctx, m: dict, key: str, prefix: str, why: str) -> None:
    if key in m:
        ctx.report(_join(prefix, key), f"not allowed {why}", key_node=True)


def _op_name(ctx: _Ctx, op: Any, field: str, key_node: bool = False) -> str:
    if not isinstance(op, str) or op not in KNOWN_OPS:
        hint = difflib.get_close_matches(op, KNOWN_OPS, n=1) if isinstance(op, str) else []
        raise ctx.fail(field, f"must be one of {', '.join(KNOWN_OPS)}; got {_show(op)}"
                              + (f"; did you mean '{hint[0]}'?" if hint else ""),
                       key_node=key_node)
    return op


def _parse_scale(ctx: _Ctx, value: Any, field: str) -> ScaleFormat:
    m = _mapping(ctx, value, field, ("form", "mantissa_bits", "exponent_min", "exponent_max"))
    form = ctx.check(_enum, ctx, m, "form", field, SCALE_FORMS)
    mb = None
    if form == "fixed_point":
        mb = ctx.check(_int, ctx, m, "mantissa_bits", field, *MANTISSA_BITS)
    elif form is not _BAD:
        _forbid(ctx, m, "mantissa_bits", field, f"when form is {form} (only with fixed_point)")
    emin = ctx.check(_int, ctx, m, "exponent_min", field, *EXPONENT_RANGE, required=False)
    emax = ctx.check(_int, ctx, m, "exponent_max", field, *EXPONENT_RANGE, required=False)
    if _ok(emin, emax) and emin is not None and emax is not None and emin > emax:
        ctx.report(_join(field, "exponent_max"), f"must be >= exponent_min ({emin}); got {emax}")
    if not _ok(form, mb, emin, emax):
        raise _Invalid()
    return ScaleFormat(form, mb, emin, emax)


TENSOR_FIELDS = ("bits", "signed", "symmetric", "narrow_range", "granularity",
                 "zero_point_granularity", "scale")


def _parse_tensor(ctx: _Ctx, value: Any, role: str, prefix: str | None = None) -> TensorFormat:
    f = prefix or role    # the field path (a layers entry's block has its own)
    m = _mapping(ctx, value, f, TENSOR_FIELDS)
    bits = ctx.check(_int, ctx, m, "bits", f, *ACT_BITS)
    signed = ctx.check(_enum, ctx, m, "signed", f, (True, False, "any"))
    symmetric = ctx.check(_bool, ctx, m, "symmetric", f)
    narrow = ctx.check(_bool, ctx, m, "narrow_range", f)
    if role == "activations":
        gran = ctx.check(_enum, ctx, m, "granularity", f, ("per_tensor",),
                         why=" (the simulator has per-tensor activation quantization only)")
    else:
        gran = ctx.check(_enum, ctx, m, "granularity", f, GRANULARITIES)
    zpg = _BAD
    if gran is not _BAD:
        allowed_zpg = GRANULARITIES if gran == "per_channel" else ("per_tensor",)
        zpg = ctx.check(_enum, ctx, m, "zero_point_granularity", f, allowed_zpg,
                        required=False, default=gran, why=f" (never finer than granularity {gran})")
    sf = _join(f, "scale")
    scale = ctx.check(lambda: _parse_scale(ctx, _get(ctx, m, "scale", f), sf))
    if not _ok(bits, signed, symmetric, narrow, gran, zpg, scale):
        raise _Invalid()
    return TensorFormat(role, bits, None if signed == "any" else signed, symmetric, narrow,
                        gran, zpg, scale)


def _parse_layers(ctx: _Ctx, value: Any, raw: dict, acts: Any, wts: Any) -> tuple:
    """``layers``: per-layer overrides. Each entry's blocks are validated as complete formats
    (the profile's own block with the entry's fields on top), so an entry is checked like the
    profile itself; whether it names a layer is checked against a model
    (:mod:`mrq.mixed_precision`)."""
    if not isinstance(value, list) or not value:
        raise ctx.fail("layers", f"must be a non-empty list of overrides (each with a selector "
                                 f"{', '.join(LAYER_SELECTORS)} and the blocks "
                                 f"{', '.join(LAYER_ROLES)} it overrides); got {_typename(value)}")
    base = {"activations": acts, "weights": wts}
    out = [ctx.check(_parse_layer, ctx, entry, i, raw, base) for i, entry in enumerate(value)]
    if not _ok(*out):
        raise _Invalid()
    return tuple(out)


def _parse_layer(ctx: _Ctx, entry: Any, index: int, raw: dict, base: dict) -> LayerOverride:
    f = f"layers[{index}]"
    m = _mapping(ctx, entry, f, LAYER_SELECTORS + LAYER_ROLES)
    op = ctx.check(_enum, ctx, m, "op", f, LAYER_OPS, required=False,
                   why=" (the layer kinds with weights; Conv covers depthwise ones too)")
    position = ctx.check(_enum, ctx, m, "position", f, LAYER_POSITIONS, required=False,
                         why=" (the first or last conv/gemm layer in graph order)")
    name = m.get("name")
    if "name" in m and (not isinstance(name, str) or not name.strip()):
        ctx.report(_join(f, "name"), f"must be a non-empty glob pattern on node names (e.g. "
                                     f"'block1.*'); got {_show(name)}")
        name = _BAD
    if not any(k in m for k in LAYER_SELECTORS):
        ctx.report(f, f"selects nothing: give at least one of {', '.join(LAYER_SELECTORS)}")
    if not any(k in m for k in LAYER_ROLES):
        ctx.report(f, f"overrides nothing: give {' and/or '.join(LAYER_ROLES)} (the fields "
                      f"that differ for these layers)")
    formats = {}
    for role in LAYER_ROLES:
        if role not in m:
            formats[role] = None
            continue
        over = m[role]
        if not isinstance(over, dict) or not over:
            ctx.report(_join(f, role), f"must be a mapping of the {role} fields to override "
                                       f"({', '.join(TENSOR_FIELDS)}); got {_typename(over)}")
            formats[role] = _BAD
            continue
        if base[role] is _BAD or not isinstance(raw.get(role), dict):
            formats[role] = _BAD   # the profile's own block is wrong: reported there
            continue
        merged = dict(raw[role])
        if "granularity" in over and "zero_point_granularity" not in over:
            merged.pop("zero_point_granularity", None)   # it defaults to the new granularity
        merged.update(over)
        formats[role] = ctx.check(_parse_tensor, ctx, merged, role, _join(f, role))
    if not _ok(op, position, name, *formats.values()) or not any(k in m for k in LAYER_SELECTORS) \
            or not any(k in m for k in LAYER_ROLES):
        raise _Invalid()
    return LayerOverride(index, op, name, position, formats["activations"], formats["weights"])


def _parse_accumulator(ctx: _Ctx, value: Any) -> AccumulatorFormat:
    f = "accumulator"
    m = _mapping(ctx, value, f, ("bits", "overflow", "bias", "product_order", "guarantee",
                                 "pair_sums"))
    bits = ctx.check(_int, ctx, m, "bits", f, *ACC_BITS)
    overflow = ctx.check(_enum, ctx, m, "overflow", f, OVERFLOW_MODES)
    order = ctx.check(_enum, ctx, m, "bias", f, BIAS_ORDERS, required=False,
                      default=BIAS_ORDERS[0],
                      why=" (the simulator implements only this order: the accumulator starts "
                          "at the bias, then adds the products)")
    products = ctx.check(_enum, ctx, m, "product_order", f, PRODUCT_ORDERS, required=False,
                         default=PRODUCT_ORDERS[0],
                         why=" (conv products by input channel, kernel row, kernel column, or by "
                             "kernel row, kernel column, input channel; gemm products by k)")
    guarantee = ctx.check(_enum, ctx, m, "guarantee", f, ACC_GUARANTEES, required=False,
                          default=ACC_GUARANTEES[0])
    if _ok(overflow, guarantee) and guarantee == "measured" and overflow != "saturate":
        ctx.report(_join(f, "guarantee"), f"'measured' trades a rare clamped partial sum for accuracy, "
                   f"which needs overflow: saturate (a {overflow} overflow is not a small error); "
                   f"got 'measured'")
    pairs = ctx.check(_enum, ctx, m, "pair_sums", f, PAIR_SUMS, required=False,
                      default=PAIR_SUMS[0])
    if _ok(pairs, products, overflow):
        saturating = pairs == "saturate_int16"
        if saturating and products != "row_col_channel":
            ctx.report(_join(f, "product_order"), "must be row_col_channel with pair_sums "
                       "saturate_int16: the pairs are adjacent products in ONNX Runtime's NHWC "
                       f"im2col order, the one order the simulator pairs in; got {products!r}")
        elif not saturating and products == "row_col_channel":
            ctx.report(_join(f, "product_order"), "row_col_channel decides only which products "
                       "form the pairs of pair_sums saturate_int16 (the simulator saturates "
                       "and checks partial sums in channel_row_col order); got "
                       "'row_col_channel' with pair_sums exact")
        if saturating and overflow != "wrap":
            ctx.report(_join(f, "pair_sums"), "'saturate_int16' is simulated on a wrapping "
                       f"accumulator (ONNX Runtime's int32 adds wrap); got overflow {overflow!r}")
    if not _ok(bits, overflow, order, products, guarantee, pairs):
        raise _Invalid()
    return AccumulatorFormat(bits, overflow, order, products, guarantee, pairs)


def _parse_bias(ctx: _Ctx, value: Any, acc: Any) -> BiasFormat:
    m = _mapping(ctx, value, "bias", ("bits", "scale"))
    bits = ctx.check(_int, ctx, m, "bits", "bias", *BIAS_BITS)
    if _ok(bits, acc) and bits > acc.bits:
        ctx.report("bias.bits", f"must be <= accumulator.bits ({acc.bits}); got {bits}")
    bscale = ctx.check(_enum, ctx, m, "scale", "bias", BIAS_SCALES,
                       why=" (bias scale must equal input_scale * weight_scale, so that the bias "
                           "adds to the accumulator directly)")
    if not _ok(bits, bscale):
        raise _Invalid()
    return BiasFormat(bits, bscale)


def _parse_requant(ctx: _Ctx, value: Any) -> RequantSpec:
    f = "requant"
    m = _mapping(ctx, value, f, ("arithmetic", "rounding", "zero_point", "multiplier_bits",
                                 "shift_min", "shift_max", "multiplier_precision"))
    arith = ctx.check(_enum, ctx, m, "arithmetic", f, REQUANT_ARITHMETIC)
    if arith is _BAD:
        # what the other fields may hold depends on the arithmetic; check the plain enums only
        ctx.check(_enum, ctx, m, "rounding", f, ROUNDING_MODES)
        ctx.check(_enum, ctx, m, "zero_point", f, ZERO_POINT_PLACEMENTS)
        raise _Invalid()
    if arith == "double_q31":
        rounding = ctx.check(_enum, ctx, m, "rounding", f, ("half_away", "half_up"),
                             why=" for double_q31 (gemmlowp RHA, or the ruy both-steps-RHU "
                                 "variant)")
    else:
        rounding = ctx.check(_enum, ctx, m, "rounding", f, ROUNDING_MODES)
    if arith == "float32":
        zp = ctx.check(_enum, ctx, m, "zero_point", f, ZERO_POINT_PLACEMENTS)
    else:
        zp = ctx.check(_enum, ctx, m, "zero_point", f, ("after_rounding",),
                       why=f" for arithmetic {arith} (before_rounding needs float32)")
    mbits = None
    if arith == "fixed_point":
        mbits = ctx.check(_int, ctx, m, "multiplier_bits", f, *MULTIPLIER_BITS)
    else:
        _forbid(ctx, m, "multiplier_bits", f,
                f"when arithmetic is {arith} (only with fixed_point"
                + ("; double_q31 is always a 31-bit multiplier)" if arith == "double_q31" else ")"))
    smin = smax = None
    if arith == "float32":
        _forbid(ctx, m, "shift_min", f, "when arithmetic is float32 (there is no shift)")
        _forbid(ctx, m, "shift_max", f, "when arithmetic is float32 (there is no shift)")
    else:
        rng = DOUBLE_Q31_SHIFT_RANGE if arith == "double_q31" else SHIFT_RANGE
        smin = ctx.check(_int, ctx, m, "shift_min", f, *rng)
        smax = ctx.check(_int, ctx, m, "shift_max", f, *rng)
        if _ok(smin, smax) and smin > smax:
            ctx.report(_join(f, "shift_max"), f"must be >= shift_min ({smin}); got {smax}")
        elif smax is not _BAD and smax < 1 and arith in ("fixed_point", "shift"):
            # real = m / 2**shift with an integer m >= 1: below 1 only with a right shift
            ctx.report(_join(f, "shift_max"),
                       f"must be >= 1 for arithmetic {arith}: with shift_max {smax} no "
                       f"multiplier below 1 is representable, and every conv whose output grid "
                       f"is coarser than its accumulator grid needs one; got {smax}")
    prec = None
    if arith == "shift":
        _forbid(ctx, m, "multiplier_precision", f,
                "when arithmetic is shift (the multiplier is an exact power of two)")
    else:
        prec = ctx.check(_enum, ctx, m, "multiplier_precision", f, MULTIPLIER_PRECISIONS)
    if not _ok(rounding, zp, mbits, smin, smax, prec):
        raise _Invalid()
    return RequantSpec(arith, rounding, zp, mbits, smin, smax, prec)


def _parse_supported_ops(ctx: _Ctx, value: Any) -> tuple[str, ...]:
    f = "supported_ops"
    if not isinstance(value, list) or not value:
        raise ctx.fail(f, f"must be a non-empty list of op types from {', '.join(KNOWN_OPS)}; "
                          f"got {_typename(value)}")
    seen: list[str] = []
    bad = False
    for i, op in enumerate(value):
        op = ctx.check(_op_name, ctx, op, f"{f}[{i}]")
        if op is _BAD:
            bad = True
        elif op in seen:
            ctx.report(f"{f}[{i}]", f"duplicate op type {op!r}")
        else:
            seen.append(op)
    if bad:
        # a misspelt entry would make every check "is X supported?" report a second problem
        raise _Invalid()
    return tuple(value)


def _parse_host_ops(ctx: _Ctx, value: Any, supported: Any, resolve_refs: bool
                    ) -> tuple[dict, dict]:
    """``host_ops``: a list of op types (host arithmetic float) or a mapping op type ->
    ``float`` | profile name. Returns (op -> arithmetic, op -> loaded profile)."""
    f = "host_ops"
    if isinstance(value, list):
        items = [(f"{f}[{i}]", op, HOST_FLOAT, False) for i, op in enumerate(value)]
    elif isinstance(value, dict):
        items = [(_join(f, _key(op)), op, arith, True) for op, arith in value.items()]
    else:
        raise ctx.fail(f, f"must be a list of op types (run in float on the host) or a mapping "
                          f"op type -> float | profile name; got {_typename(value)}")
    host: dict[str, str] = {}
    profiles: dict[str, HwProfile] = {}
    bad = False
    for field, op, arith, is_key in items:
        op = ctx.check(_op_name, ctx, op, field, key_node=is_key)
        if op is _BAD:
            bad = True
            continue
        if op in host:
            ctx.report(field, f"duplicate op type {op!r}")
            continue
        if supported is not _BAD and op in supported:
            ctx.report(field, f"{op} is also in supported_ops; an op runs either on the NPU "
                              f"(supported_ops) or on the host (host_ops), not both",
                       key_node=is_key)
        if arith == HOST_FLOAT:
            host[op] = arith
            continue
        if not isinstance(arith, str) or not NAME_RE.match(arith):
            ctx.report(field, f"must be float or the name of a profile on the search path; "
                              f"got {_show(arith)}")
            bad = True
            continue
        host[op] = arith
        if resolve_refs:
            ref = ctx.check(_host_profile, ctx, field, op, arith)
            if ref is _BAD:
                bad = True
            else:
                profiles[op] = ref
    if bad:
        raise _Invalid()
    return host, profiles


def _host_profile(ctx: _Ctx, field: str, op: str, name: str) -> HwProfile:
    path = _find(name)
    if path is None:
        hint = difflib.get_close_matches(name, [n for n, _ in _list_names()], n=1)
        raise ctx.fail(field, f"no profile named {name!r} on the search path"
                              + (f" (did you mean '{hint[0]}'?)" if hint else "")
                              + f"; give float or a profile name ({_search_path_text()})")
    try:
        # resolve_refs=False: a host profile may not name further profiles, so nothing
        # beyond it is loaded (and a cycle cannot recurse)
        ref = _load(path, resolve_refs=False)
    except HwProfileError as e:
        n = len(e.errors)
        raise ctx.fail(field, f"profile {name!r} ({path}) does not load: {e.field}: "
                              f"{e.problem}" + (f" (and {n - 1} more problems)" if n > 1 else ""))
    if ref.host_ops:
        raise ctx.fail(field, f"profile {name!r} ({path}) has host_ops itself; a host profile "
                              f"must run its ops itself (no chains)")
    if op not in ref.supported_ops:
        raise ctx.fail(field, f"profile {name!r} ({path}) does not support {op} (not in its "
                              f"supported_ops), so it cannot give {op} its arithmetic")
    return ref


def _parse_ops(ctx: _Ctx, value: Any, rq: Any, supported: Any, host: Any) -> OpModes:
    f = "ops"
    m = _mapping(ctx, value, f, ("add", "mul", "avgpool", "global_avgpool", "quantize",
                                 "rescale", "softmax", "divider", "shared_grid"))
    choices = {"add": ADD_MODES, "mul": MUL_MODES, "avgpool": AVGPOOL_MODES,
               "global_avgpool": GLOBAL_AVGPOOL_MODES, "softmax": SOFTMAX_MODES}
    modes: dict[str, Any] = {}
    for key, op in OP_FIELDS.items():
        if supported is _BAD:
            # whether the field belongs here is unknown; still check a value that is given
            modes[key] = ctx.check(_enum, ctx, m, key, f, choices[key], required=False)
        elif op in supported:
            modes[key] = ctx.check(_enum, ctx, m, key, f, choices[key],
                                   why_required=f": {op} is in supported_ops")
        else:
            modes[key] = None
            if key in m:
                if host is not _BAD and op in host:
                    why = (f"{op} runs on the host (host_ops: {host[op]}), which sets its "
                           f"arithmetic; remove this field")
                else:
                    why = f"{op} is not in supported_ops; remove this field or add {op}"
                ctx.report(_join(f, key), f"{why} (got {_show(m[key])})")
    divider = ctx.check(_bool, ctx, m, "divider", f, required=False, default=True)
    qf = _join(f, "quantize")

    def quantize() -> QuantizeSpec:
        qm = _mapping(ctx, _get(ctx, m, "quantize", f), qf, ("method", "rounding"))
        method = ctx.check(_enum, ctx, qm, "method", qf, QUANTIZE_METHODS)
        rounding = ctx.check(_enum, ctx, qm, "rounding", qf, ROUNDING_MODES)
        if not _ok(method, rounding):
            raise _Invalid()
        return QuantizeSpec(method, rounding)

    quant = ctx.check(quantize)
    rescale = ctx.check(_enum, ctx, m, "rescale", f, RESCALE_MODES)
    shared = ctx.check(_parse_shared_grid, ctx, m, supported)

    arith = rq.arithmetic if rq is not _BAD else _BAD
    add, mul, avg, gavg = (modes[k] for k in ("add", "mul", "avgpool", "global_avgpool"))
    if arith is not _BAD:
        # modes that align or divide with the requant block's integer multiplier and shift
        for key, mode in (("add", add), ("avgpool", avg)):
            if mode == "fixed" and arith not in ("fixed_point", "shift"):
                ctx.report(_join(f, key),
                           f"'fixed' needs requant.arithmetic fixed_point or shift (it uses the "
                           f"requant block's multiplier/shift); requant.arithmetic is {arith}")
        if mul == "fp32_zp_in" and arith != "float32":
            ctx.report(_join(f, "mul"),
                       f"'fp32_zp_in' (ONNX Runtime QLinearMul: the zero point is added inside "
                       f"the float rounding) needs requant.arithmetic float32; requant.arithmetic "
                       f"is {arith} (use requant)")
    if gavg == "avgpool" and avg is None and supported is not _BAD:
        ctx.report(_join(f, "global_avgpool"),
                   "'avgpool' runs the global pool as an average pool with ops.avgpool's "
                   "arithmetic, but AveragePool is not in supported_ops (so there is no "
                   "ops.avgpool); add AveragePool and ops.avgpool, or use requant")
    if divider is False and avg in AVGPOOL_DIVIDING:
        ctx.report(_join(f, "avgpool"),
                   f"{avg!r} divides the window sum by its count, but ops.divider is false (no "
                   f"integer divider); use fixed (1/count folded into the requant multiplier)")
    if not _ok(divider, quant, rescale, shared, *modes.values()):
        raise _Invalid()
    return OpModes(add, mul, avg, gavg, quant, rescale, modes["softmax"], shared, divider)


def _parse_shared_grid(ctx: _Ctx, m: dict, supported: Any) -> tuple:
    sf = "ops.shared_grid"
    shared = m.get("shared_grid", [])
    if not isinstance(shared, list):
        raise ctx.fail(sf, f"must be a list of op types from {', '.join(SHARED_GRID_OPS)}; "
                           f"got {_typename(shared)}")
    bad = False
    for i, op in enumerate(shared):
        if not isinstance(op, str) or op not in SHARED_GRID_OPS:
            ctx.report(f"{sf}[{i}]", f"must be one of {', '.join(SHARED_GRID_OPS)} (ops whose "
                                     f"inputs and output can share one grid); got {_show(op)}")
            bad = True
        elif op in shared[:i]:
            ctx.report(f"{sf}[{i}]", f"duplicate op type {op!r}")
            bad = True
        elif supported is not _BAD and op not in supported:
            ctx.report(f"{sf}[{i}]", f"{op} is not in supported_ops; remove it or add {op}")
            bad = True
    if bad:
        raise _Invalid()
    return tuple(shared)


def _check_reachable_shifts(ctx: _Ctx, acts: Any, wts: Any, rq: Any, supported: Any) -> None:
    """Power-of-two scales with a shift-only requant: a conv needs the right shift
    ``e_out - e_in - e_w``; if the exponent bounds put every such shift outside
    [shift_min, shift_max], no conv of any model can be requantized."""
    if not _ok(acts, wts, rq, supported) or rq.arithmetic != "shift" \
            or not any(op in supported for op in MAC_OPS):
        return
    a, w = acts.scale, wts.scale
    if a.form != "pow2" or w.form != "pow2" or None in (a.exponent_min, a.exponent_max,
                                                        w.exponent_min, w.exponent_max):
        return
    lo = a.exponent_min - a.exponent_max - w.exponent_max
    hi = a.exponent_max - a.exponent_min - w.exponent_min
    if hi < rq.shift_min or lo > rq.shift_max:
        ctx.report("requant.shift_max" if lo > rq.shift_max else "requant.shift_min",
                   f"no conv can be requantized: with the scale exponent bounds of "
                   f"activations and weights a conv needs a shift e_out - e_in - e_w in "
                   f"[{lo}, {hi}], outside [shift_min, shift_max] = "
                   f"[{rq.shift_min}, {rq.shift_max}]")


TOP_REQUIRED = ("name", "description", "activations", "weights", "bias", "accumulator",
                "requant", "ops", "supported_ops")
TOP_OPTIONAL = ("runtime", "runtime_isa", "host_ops", "layers")


def _parse_profile(ctx: _Ctx, data: Any, resolve_refs: bool = True) -> HwProfile:
    m = _mapping(ctx, data, "", TOP_REQUIRED + TOP_OPTIONAL)
    for k in TOP_REQUIRED:
        if k not in m:
            ctx.report(k, "missing required field", missing=True)
    runtime = ctx.check(
        _enum, ctx, m, "runtime", "", RUNTIMES, required=False, default="generic",
        why=" (the peer runtime whose kernel-specific arithmetic this profile reproduces)")
    runtime_isa = ctx.check(
        _enum, ctx, m, "runtime_isa", "", RUNTIME_ISAS, required=False, default="",
        why=" (the x86 float kernels ONNX Runtime's MLAS runs: AVX-512F or AVX2/FMA3 hosts)")
    if runtime_isa and runtime != "onnxruntime":
        if "runtime_isa" in m:
            ctx.report("runtime_isa", f"selects ONNX Runtime's float kernels and needs runtime: "
                                      f"onnxruntime; got runtime {runtime!r}")
        runtime_isa = _BAD
    elif runtime == "onnxruntime" and _ok(runtime_isa) and not runtime_isa:
        runtime_isa = RUNTIME_ISAS[0]

    name = m.get("name", _BAD)
    if name is not _BAD and (not isinstance(name, str) or not NAME_RE.match(name)):
        ctx.report("name", "must be a string of lower-case letters, digits, '.', '_' or '-' "
                           f"(starting with a letter or digit); got {_show(name)}")
        name = _BAD
    desc = m.get("description", _BAD)
    if desc is _BAD:
        pass
    elif not isinstance(desc, str):
        ctx.report("description", f"must be one line of text; got {_typename(desc)}")
        desc = _BAD
    elif not desc.strip() or "\n" in desc.strip() or "\r" in desc or len(desc) > DESCRIPTION_MAX:
        ctx.report("description", f"must be one non-empty line of at most {DESCRIPTION_MAX} "
                                  f"characters; got {desc!r:.80}")
        desc = _BAD

    def block(key, parse, *args):
        return ctx.check(parse, ctx, m[key], *args) if key in m else _BAD

    acts = block("activations", _parse_tensor, "activations")
    wts = block("weights", _parse_tensor, "weights")
    acc = block("accumulator", _parse_accumulator)
    bias = block("bias", _parse_bias, acc)
    rq = block("requant", _parse_requant)
    if _ok(acts, wts, acc):
        from mrq.accumulators import product_bits
        need = product_bits(acts, wts)
        if need > acc.bits:
            ctx.report("accumulator.bits", f"must hold one product of an activation and a weight "
                       f"({acts.bits}-bit x {wts.bits}-bit codes need {need} bits); got {acc.bits}")
        elif acc.guarantee == "measured" and acc.bits - need >= MEASURED_MAX_HEADROOM_BITS:
            ctx.report("accumulator.guarantee", f"'measured' would change nothing: a sum of "
                       f"{need}-bit products leaves {acc.bits} bits only after 2**{acc.bits - need} "
                       f"of them, more than any conv or gemm has; use proof (the default)")
        if acc.pair_sums == "saturate_int16" and _ok(runtime) and runtime != "onnxruntime":
            ctx.report("accumulator.pair_sums", "'saturate_int16' reproduces ONNX Runtime's "
                       "u8s8 kernels (which ops pair, in which order) and needs runtime: "
                       f"onnxruntime; got runtime {runtime!r}")
        elif acc.pair_sums == "saturate_int16" and not (
                acts.bits == 8 and acts.signed in (False, None)
                and wts.bits == 8 and wts.signed in (True, None)):
            ctx.report("accumulator.pair_sums", "'saturate_int16' changes only dot products of "
                       "unsigned 8-bit activations and signed 8-bit weights, which this profile "
                       f"does not allow (activations {acts.bits}-bit "
                       f"{_signed_word(acts.signed)}, weights {wts.bits}-bit "
                       f"{_signed_word(wts.signed)}); use exact (the default)")
    if _ok(rq, acc) and rq.arithmetic == "double_q31" and acc.bits > DOUBLE_Q31_ACC_BITS:
        ctx.report("requant.arithmetic",
                   f"double_q31 requantizes a {DOUBLE_Q31_ACC_BITS}-bit accumulator (the "
                   f"simulator wraps it to int32 first), but accumulator.bits is {acc.bits}; "
                   f"use fixed_point with multiplier_bits 31")
    # a runtime's quirks refine that runtime's own requantization; on another arithmetic they
    # would change nothing, which a profile must not state
    runtime_arith = {"tflite-reference": "double_q31", "xnnpack": "float32"}.get(runtime)
    if runtime_arith and _ok(rq) and rq.arithmetic != runtime_arith:
        ctx.report("runtime", f"{runtime!r} reproduces a runtime whose requantization is "
                              f"{runtime_arith}, but requant.arithmetic is {rq.arithmetic}; got "
                              f"{runtime!r}")
    supported = block("supported_ops", _parse_supported_ops)
    host, host_profiles = {}, {}
    if "host_ops" in m:
        parsed = ctx.check(_parse_host_ops, ctx, m["host_ops"], supported, resolve_refs)
        host, host_profiles = (_BAD, _BAD) if parsed is _BAD else parsed
    ops = block("ops", _parse_ops, rq, supported, host)
    _check_reachable_shifts(ctx, acts, wts, rq, supported)
    layers = block("layers", _parse_layers, m, acts, wts) if "layers" in m else ()
    if ctx.problems:
        raise _Invalid()
    return HwProfile(name, desc.strip(), acts, wts, bias, acc, rq, ops, supported, ctx.path,
                     runtime, host, host_profiles, layers, runtime_isa)


def _check_duplicate_keys(ctx: _Ctx, node: yaml.Node, prefix: str = "",
                          seen_nodes: set | None = None) -> None:
    # aliases make the node graph a DAG; visiting each node once keeps this linear in the file
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else type(k).__name__
            field = _join(prefix, _key(key))
            if key in seen:
                ctx.problems.append((k.start_mark.line + 1, field,
                                     f"duplicate key (line {k.start_mark.line + 1})"))
            seen.add(key)
            _check_duplicate_keys(ctx, v, field, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _check_duplicate_keys(ctx, v, f"{prefix}[{i}]", seen_nodes)


def _find(name: str) -> Path | None:
    """The first ``<name>.yaml`` along the search path."""
    for d, _ in profile_search_path():
        cand = d / f"{name}.yaml"
        if cand.is_file():
            return cand
    return None


def _search_path_text() -> str:
    return "searched: " + ", ".join(str(d) for d, _ in profile_search_path())


def _resolve(name_or_path: str | os.PathLike) -> Path:
    s = os.fspath(name_or_path)
    p = Path(s)
    is_pathlike = (isinstance(name_or_path, os.PathLike) or "/" in s or os.sep in s
                   or s.endswith((".yaml", ".yml")) or p.is_file())
    if is_pathlike:
        return p
    found = _find(s)
    if found is not None:
        return found
    names = [n for n, _ in _list_names()]
    hint = difflib.get_close_matches(s, names, n=1)
    raise HwProfileError(s, "<file>",
                         f"no hardware profile named {s!r}"
                         + (f" (did you mean '{hint[0]}'?)" if hint else "")
                         + f"; available: {', '.join(names) or '(none)'}; "
                           f"or give a path to a .yaml file ({_search_path_text()})")


def load_profile(name_or_path: str | os.PathLike) -> HwProfile:
    """Load and validate a hardware profile: a name looked up along
    :func:`profile_search_path` (``nna-sym8`` -> the first ``nna-sym8.yaml``) or a path to a
    YAML file. Raises HwProfileError carrying every problem found."""
    return _load(_resolve(name_or_path))


# text -> (root node, document) of the profile texts that parsed: the parse (PyYAML's
# pure-Python composer, for the line numbers of problems) is most of a load, and a process loads
# the same few profiles again and again (every prepare, simulate and command by name)
_PARSED: dict = {}
_PARSED_MAX = 64
_PARSED_MAX_CHARS = 1 << 16
_PARSED_LOCK = threading.Lock()


def _parse_yaml(text: str):
    """``safe_yaml.load_with_node(text)``, remembered for the texts that parse (a text that
    fails is parsed again, with the same error). The node tree is only read (line numbers); the
    document is handed out as a deep copy, so no load sees another load's objects."""
    with _PARSED_LOCK:
        hit = _PARSED.get(text)
    if hit is None:
        hit = safe_yaml.load_with_node(text)
        if len(text) <= _PARSED_MAX_CHARS:
            with _PARSED_LOCK:
                if len(_PARSED) >= _PARSED_MAX:
                    del _PARSED[next(iter(_PARSED))]
                _PARSED[text] = hit
    root, data = hit
    return root, copy.deepcopy(data)


def _load(path: Path, resolve_refs: bool = True) -> HwProfile:
    spath = str(path)
    try:
        # a regular file only (a FIFO would block, /dev/zero never end), never more than the cap
        raw = read_regular_file(spath, MAX_PROFILE_BYTES)
    except FileProblem as e:
        problem = {"no such file": "file not found",
                   "is a directory, not a regular file": "is a directory, not a YAML file"}.get(e.problem, e.problem)
        if str(MAX_PROFILE_BYTES) in problem:
            problem = (f"larger than {MAX_PROFILE_BYTES // 1024} KiB; a profile is a few KB of YAML "
                       f"(is this the right file?)")
        raise HwProfileError(spath, "<file>", problem) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HwProfileError(spath, "<file>", f"not UTF-8 text ({e.reason} at byte "
                                              f"{e.start})") from None
    try:
        root, data = _parse_yaml(text)
    except safe_yaml.YamlLimitError as e:
        raise HwProfileError(spath, "<document>", str(e)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        ctxt = getattr(e, "context", None)
        raise HwProfileError(spath, "<document>",
                             f"YAML syntax error{where}: {problem}"
                             + (f" ({ctxt})" if ctxt else "")) from None
    except RecursionError:
        raise HwProfileError(spath, "<document>", "nested too deeply to be a profile") from None
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
    profile = ctx.check(_parse_profile, ctx, data, resolve_refs)
    ctx.raise_problems()
    return profile


@dataclass(frozen=True)
class ProfileEntry:
    """One ``<name>.yaml`` on the search path. ``shadowed_by`` is the file that wins for
    ``name`` when this one does not (an earlier directory has the same name)."""

    name: str
    path: Path
    directory: Path
    origin: str                 # MRQ_PROFILE_PATH | ./hw_profiles | shipped
    shadowed_by: Path | None = None


def find_profiles() -> list[ProfileEntry]:
    """Every profile file on the search path, by name, then in search order (the first of a
    name wins, later ones are marked ``shadowed_by`` it)."""
    winner: dict[str, Path] = {}
    out = []
    for d, origin in profile_search_path():
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.yaml")):
            first = winner.setdefault(p.stem, p)
            out.append(ProfileEntry(p.stem, p, d, origin, None if first is p else first))
    order = {id(e): i for i, e in enumerate(out)}
    return sorted(out, key=lambda e: (e.name, order[id(e)]))


def _list_names() -> list[tuple[str, Path]]:
    return [(e.name, e.path) for e in find_profiles() if e.shadowed_by is None]


def list_profiles() -> list[tuple[str, str]]:
    """``[(name, one-line description)]`` of the profiles found by name (the first of each
    name on the search path), sorted by name. Each file is loaded (validated); a malformed one
    raises HwProfileError."""
    return [(name, load_profile(p).description) for name, p in _list_names()]


def iter_profiles() -> Iterable[HwProfile]:
    """All profiles found by name, loaded, sorted by name."""
    for _, p in _list_names():
        yield load_profile(p)


# ORT's shipped profiles by what MLAS dispatches to (onnxruntime/core/mlas/lib/platform.cpp):
# u8s8 products are exact on VNNI (AVX-512 VNNI, AVX-VNNI) and AMX hosts and pair-saturated
# on the other x86-64 hosts; the float kernels are AVX-512F ones where the host has AVX-512F.
_ORT_HOST_PROFILES = {(True, "avx512f"): "onnxruntime-cpu",
                      (False, "avx512f"): "onnxruntime-cpu-avx512",
                      (True, "fma3"): "onnxruntime-cpu-avxvnni",
                      (False, "fma3"): "onnxruntime-cpu-avx2"}


def onnxruntime_profile_for_host(features: Mapping[str, bool] | None = None) -> str:
    """The name of the shipped profile that reproduces ONNX Runtime's x86-64 CPU kernels on
    this host (or on a host with ``features``, LLVM's CPU feature names): which u8s8 dot
    products MLAS saturates and which float kernels it runs differ between host classes."""
    if features is None:
        from simulator.capabilities import target_features
        features = target_features()
    exact = any(features.get(f) for f in ("avx512vnni", "avxvnni", "amx-int8"))
    isa = "avx512f" if features.get("avx512f") else "fma3"
    return _ORT_HOST_PROFILES[exact, isa]
