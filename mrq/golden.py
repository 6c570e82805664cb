"""Golden reference sets for pre-silicon verification (``mrq golden``).

A golden set is a directory with every tensor of one integer execution of a model under a
hardware profile, in formats a testbench and firmware can read directly:

    DIR/manifest.json             layer order, shapes, dtypes, layouts, scales, zero points,
                                  requantization parameters, accumulator analysis, file hashes
    DIR/tensors/<stem>.npy        numpy array (the exact stored dtype)
    DIR/tensors/<stem>.hex        $readmemh text: one element per line, row-major (C order) over
                                  the stored shape, two's complement at ``bits`` (unsigned for
                                  unsigned tensors, IEEE-754 binary32 bit patterns for floats)
    DIR/tensors/<stem>.bin        (--bin) raw little-endian elements of the stored dtype
    DIR/c/<stem>.h, DIR/c/mrq_golden.h   (--c-headers) C arrays and per-layer constants

See docs/verification.md for the manifest schema. Directories are written atomically: the set is
built in a temporary directory next to DIR and renamed into place when complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from mrq import accumulators as accmod
from mrq.errors import InputDataError, MrqError
from mrq.fileio import (_json_default, check_writable, critical, dir_mode, discardable, forget,
                        sweep_stale, tmp_name, write_error)
from mrq.provenance import provenance

FORMAT = "mrq-golden"
# Written last into every golden set: ``--force`` replaces only a folder that holds it (and
# nothing mrq did not write), so it can never delete a folder of the user's own files.
MARKER = ".mrq-golden-set"
VERSION = 1

# Roles of the tensors of a golden set.
ROLE_INPUT = "input"            # a graph input as fed (float32, or integer codes)
ROLE_ACTIVATION = "activation"  # the output buffer of a step
ROLE_OUTPUT = "output"          # a step output that is also a program output
ROLE_ACC = "accumulator"        # conv/gemm accumulator before requantization
PARAM_ROLES = {"weight": "weight", "bias": "bias", "weight_zero_point": "weight_zero_point",
               "rq_multiplier": "rq_multiplier", "rq_shift": "rq_shift", "value": "constant",
               "scale": "scale", "zero_point": "zero_point"}
ACTIVATION_ROLES = (ROLE_INPUT, ROLE_ACTIVATION, ROLE_OUTPUT)


class GoldenError(MrqError):
    """A golden set is missing, incomplete or corrupted."""


class GoldenLimitError(MrqError):
    """The model needs requantization parameters outside the profile's limits: its program
    holds clipped values, so a golden set from it would not be the model's arithmetic."""

    def __init__(self, model: str, profile: str, violations: list):
        self.violations = list(violations)
        lines = [f"refusing to write a golden set: {model} needs parameters outside the limits of "
                 f"profile {profile} ({len(self.violations)} violation(s)); its program would "
                 f"hold clipped values, and golden vectors from it are not the model's results:"]
        lines += [f"  {v}" for v in self.violations]
        lines.append(f"run `mrq requant {model} --profile {profile} -o OUT.onnx` (it chooses grids "
                     f"whose parameters fit the limits) and make the golden set from OUT.onnx")
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------


@dataclass
class GoldenTensor:
    name: str                    # unique key: a buffer name, "<layer>.<param>" or "<layer>.acc"
    role: str
    layer: str                   # the step that produces (or owns) it; "" for graph inputs
    array: np.ndarray            # as stored: already in ``layout``
    bits: int                    # element width of the hex file
    signed: bool
    is_float: bool
    layout: Optional[str] = None         # axis letters of the stored array, e.g. "NHWC"
    model_layout: Optional[str] = None   # axis letters in the model (simulator) order
    perm: Optional[tuple] = None         # stored = model.transpose(perm); None = identity
    scale: Optional[list] = None
    zero_point: Optional[list] = None
    quant_axis: Optional[int] = None     # axis (stored order) of per-channel scale/zero point
    file: str = ""                       # file stem under tensors/
    note: str = ""

    @property
    def hex_digits(self) -> int:
        return (self.bits + 3) // 4

    def model_coords(self, coords: tuple) -> tuple:
        """Coordinates in the model's (simulator's) axis order of a stored-array index."""
        if not self.perm:
            return tuple(coords)
        out = [0] * len(coords)
        for i, p in enumerate(self.perm):
            out[p] = coords[i]
        return tuple(out)

    def meta(self) -> dict:
        a = self.array
        d = {"name": self.name, "role": self.role, "layer": self.layer, "file": self.file,
             "shape": list(a.shape), "dtype": a.dtype.name, "bits": self.bits,
             "signed": self.signed, "encoding": "ieee754-binary32" if self.is_float else
             ("twos-complement" if self.signed else "unsigned"),
             "hex_digits": self.hex_digits, "layout": self.layout,
             "model_layout": self.model_layout, "perm": list(self.perm) if self.perm else None,
             "scale": self.scale, "zero_point": self.zero_point, "quant_axis": self.quant_axis}
        if a.size and not self.is_float:
            d["min"], d["max"] = int(a.min()), int(a.max())
        if self.note:
            d["note"] = self.note
        return d


def safe_stem(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("._")
    return s or "t"


def c_identifier(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return s if not s[:1].isdigit() else "_" + s


# --------------------------------------------------------------------------------------------
# Hex ($readmemh) and raw binary encoding
# --------------------------------------------------------------------------------------------


def _hex_bits(array: np.ndarray, bits: int, is_float: bool) -> tuple[np.ndarray, int]:
    """Each element's bit pattern as uint64 (two's complement / unsigned at ``bits``, or the
    IEEE-754 binary32 pattern for floats), row-major, and the hex digits one word takes."""
    flat = np.ascontiguousarray(array).reshape(-1)
    if is_float:
        return flat.astype(np.float32).view(np.uint32).astype(np.uint64), 8
    raw = flat.astype(np.int64).view(np.uint64)
    if bits < 64:
        raw = raw & np.uint64((1 << bits) - 1)
    return raw, (bits + 3) // 4


def hex_words(array: np.ndarray, bits: int, is_float: bool = False) -> list[str]:
    """One hex word per element (row-major): two's complement / unsigned at ``bits``, or the
    IEEE-754 binary32 bit pattern for floats."""
    raw, digits = _hex_bits(array, bits, is_float)
    fmt = f"0{digits}x"
    return [format(v, fmt) for v in raw.tolist()]


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


def hex_lines(array: np.ndarray, bits: int, is_float: bool = False) -> bytes:
    """``hex_words`` as ASCII, one word and a newline per element, made with array arithmetic
    (a golden set of a data set has billions of words; formatting each in Python took hours)."""
    raw, digits = _hex_bits(array, bits, is_float)
    text = np.empty((raw.size, digits + 1), np.uint8)
    for i in range(digits):
        text[:, i] = _HEX_DIGITS[((raw >> np.uint64(4 * (digits - 1 - i))) & np.uint64(0xF)).astype(np.intp)]
    text[:, digits] = ord("\n")
    return text.tobytes()


def _hex_header(t: GoldenTensor, shape: tuple) -> str:
    enc = "IEEE-754 binary32 bit patterns" if t.is_float else \
        (f"{t.bits}-bit two's complement" if t.signed else f"{t.bits}-bit unsigned")
    size = int(np.prod(shape, dtype=np.int64))
    return (f"// mrq golden {t.name}: shape {'x'.join(str(d) for d in shape) or 'scalar'}"
            f"{' layout ' + t.layout if t.layout else ''}, {enc}, row-major (last axis fastest), "
            f"one element per line, {size} lines\n")


def parse_hex(text: str, bits: int, signed: bool, is_float: bool = False):
    """Values of a $readmemh file: ``(int64 or float32 array, unknown_mask)``.

    Comments (``//``, ``/* */``), blank lines and ``_`` separators are ignored; several words per
    line are accepted. Words with x/z digits are unknown (mask True, value 0). A word longer than
    ``bits`` is read as two's complement at its own width (4 bits per digit) when ``signed``.

    The words are converted with array arithmetic (a dump of a data set has millions of words;
    one Python ``int()`` each took seconds per million); :func:`parse_hex_words` is the same
    conversion one word at a time, which the tests hold it to."""
    words = hex_file_words(text)
    longest = max(map(len, words), default=0)
    if not words or longest > 16:
        return parse_hex_words(words, bits, signed, is_float)   # reports the too-wide word
    try:
        raw = np.array(words, dtype=f"S{longest}")
    except UnicodeEncodeError:
        return parse_hex_words(words, bits, signed, is_float)   # not ASCII: not hex either
    chars = raw.view(np.uint8).reshape(len(words), longest)
    nibbles = _NIBBLE[chars]
    unknown = (nibbles == _UNKNOWN).any(axis=1)
    digit = nibbles < 16
    n_digits = digit.sum(axis=1)
    bad = ~unknown & ((nibbles == _BAD).any(axis=1) | (n_digits == 0))
    too_wide = ~unknown & ~bad & (n_digits > 8) if is_float else np.zeros(len(words), bool)
    if bad.any() or too_wide.any():
        i = int(np.flatnonzero(bad | too_wide)[0])
        if bad[i]:
            raise InputDataError(f"not a hex word: {words[i].replace('_', '')[:40]!r} (element {i})")
        raise InputDataError(f"a hex word of {int(n_digits[i])} digits is wider than the 32 bits "
                             f"of a float (element {i})")
    value = np.zeros(len(words), np.uint64)
    for col in range(longest):   # digits left to right; separators and padding are skipped
        value = np.where(digit[:, col], (value << np.uint64(4)) | nibbles[:, col], value)
    value[unknown] = 0
    if is_float:
        return value.astype(np.uint32).view(np.float32), unknown
    if signed:
        width = np.maximum(bits, 4 * n_digits).astype(np.uint64)
        negative = (value >> (width - np.uint64(1))) & np.uint64(1)
        # two's complement at the word's width; at 64 bits the int64 view already is
        wrap = np.where(width >= 64, np.uint64(0), np.uint64(1) << np.minimum(width, np.uint64(63)))
        value = value - negative * wrap
    return value.view(np.int64), unknown


# ASCII byte -> hex digit value; the separator '_' and the padding NUL are skipped
_NIBBLE = np.full(256, 255, np.uint8)
_UNKNOWN, _BAD, _SKIP = 254, 255, 16
for _i, _c in enumerate("0123456789abcdef"):
    _NIBBLE[ord(_c)] = _NIBBLE[ord(_c.upper())] = _i
for _c in "xXzZ?":
    _NIBBLE[ord(_c)] = _UNKNOWN
_NIBBLE[ord("_")] = _NIBBLE[0] = _SKIP


def hex_file_words(text: str) -> list[str]:
    """The words of a $readmemh file: comments removed, split on whitespace."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    if re.search(r"^[^\S\n]*@", text, flags=re.M):
        raise InputDataError("hex files with @address lines are not supported")
    return text.split()


def parse_hex_words(words: list, bits: int, signed: bool, is_float: bool = False):
    """:func:`parse_hex` of the file's words (:func:`hex_file_words`), one word at a time."""
    values = np.zeros(len(words), np.float32 if is_float else np.int64)
    unknown = np.zeros(len(words), bool)
    for i, w in enumerate(words):
        w = w.replace("_", "")
        if re.search(r"[xXzZ?]", w):
            unknown[i] = True
            continue
        if len(w) > 16:   # wider than any tensor (64 bits): also keeps int() off huge words
            raise InputDataError(f"a hex word of {len(w)} digits is wider than 64 bits (element {i})")
        if not re.fullmatch(r"[0-9a-fA-F]+", w):
            raise InputDataError(f"not a hex word: {w[:40]!r} (element {i})")
        v = int(w, 16)
        if is_float:
            if len(w) > 8:
                raise InputDataError(f"a hex word of {len(w)} digits is wider than the 32 bits "
                                     f"of a float (element {i})")
            values[i] = np.array([v], np.uint32).view(np.float32)[0]
            continue
        width = max(bits, 4 * len(w))
        if signed and v >= 1 << (width - 1):
            v -= 1 << width
        values[i] = v if v < 1 << 63 else v - (1 << 64)   # unsigned 64-bit words: the int64 bits
    return values, unknown


# --------------------------------------------------------------------------------------------
# Building a golden set
# --------------------------------------------------------------------------------------------


@dataclass
class GoldenSet:
    manifest: dict
    tensors: dict = field(default_factory=dict)   # name -> GoldenTensor, in layer order
    # the accumulator rows behind manifest["accumulators"] (merged when batches are streamed)
    accumulator_rows: list = field(default_factory=list)

    def layers(self) -> list:
        return self.manifest.get("layers", [])

    def tensor_for_file(self, stem: str) -> Optional[GoldenTensor]:
        for t in self.tensors.values():
            if t.file == stem:
                return t
        return None


def _profile_bits(profile, role: str, step_params: Optional[dict]) -> Optional[int]:
    if role in ACTIVATION_ROLES:
        return profile.activations.bits
    if role in ("weight", "weight_zero_point"):
        return profile.weights.bits
    if role == "bias":
        return profile.bias.bits
    if role == ROLE_ACC:
        return int((step_params or {}).get("acc_bits", profile.accumulator.bits))
    return None


def _fits(lo: int, hi: int, bits: int, signed: bool) -> bool:
    if signed:
        return -(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1
    return lo >= 0 and hi <= (1 << bits) - 1


def _width(arr: np.ndarray, role: str, profile, step_params=None) -> tuple[int, bool, bool, str]:
    """(bits, signed, is_float, note) of the hex encoding of ``arr``."""
    if arr.dtype.kind == "f":
        return 32, True, True, ""
    signed = arr.dtype.kind == "i"
    natural = arr.dtype.itemsize * 8
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    want = _profile_bits(profile, role, step_params)
    if want is None:
        need = accmod.signed_bits_for(lo, hi) if signed else max(1, hi.bit_length())
        width = next(b for b in (8, 16, 32, 64) if b >= need)
        return min(natural, width), signed, False, ""
    if want <= natural and _fits(lo, hi, want, signed):
        return want, signed, False, ""
    bits = natural if not _fits(lo, hi, want, signed) else want
    note = (f"values [{lo}, {hi}] do not fit the profile's {want}-bit {role} format; written at "
            f"{bits} bits") if bits != want else ""
    return bits, signed, False, note


def _layout_letters(rank: int, kind_layout: Optional[str]) -> Optional[str]:
    if rank == 4 and kind_layout:
        return kind_layout
    if rank == 2:
        return "NC"
    return None


def _perm(model_layout: Optional[str], want: Optional[str]) -> Optional[tuple]:
    if not model_layout or not want or want == model_layout:
        return None
    if sorted(want) != sorted(model_layout):
        raise MrqError(f"layout {want!r} is not a permutation of the model's layout {model_layout!r}")
    return tuple(model_layout.index(c) for c in want)


def _qp_lists(qp) -> tuple[Optional[list], Optional[list], Optional[int]]:
    if qp is None:
        return None, None, None
    return ([float(s) for s in qp.scale], [int(z) for z in qp.zero_point],
            qp.axis if qp.per_channel else None)


def _jsonable_params(params: dict, tensor_of_param: dict) -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, np.ndarray):
            entry = {"tensor": tensor_of_param.get(k)}
            if v.size <= 64:
                entry["values"] = v.tolist()
            out[k] = entry
        elif isinstance(v, (np.integer,)):
            out[k] = int(v)
        elif isinstance(v, (np.floating,)):
            out[k] = float(v)
        elif isinstance(v, tuple):
            out[k] = [x.item() if isinstance(x, np.generic) else x for x in v]
        else:
            out[k] = v
    return out


def _program_layout(program) -> Optional[str]:
    for s in program.steps:
        if "layout" in s.params:
            return str(s.params["layout"])
    return None


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_traced(model, profile, feeds: dict, pipe=None):
    """Lower and run ``model`` with every buffer traced (``pipe``: the model already lowered
    for ``profile`` in the native layout, reused across batches).

    Returns ``(graph, profile, lowered, program, trace, stats)``; ``program`` is the bound
    program (the input Quantize step is dropped when integer codes are fed)."""
    from mrq.pipeline import Pipeline

    pipe = pipe or Pipeline(model, profile, layout="native")
    graph, prof, lowered = pipe.graph, pipe.profile, pipe.lowered
    _refuse_out_of_limits(model, profile, graph, prof, lowered)
    result = pipe.run(feeds, trace=True)
    trace = result.trace
    for k, v in result.outputs.items():
        trace.setdefault(k, v)
    return graph, prof, lowered, result.program, trace, dict(result.stats)


def _refuse_out_of_limits(model, profile, graph, prof, lowered) -> None:
    """Raise :class:`GoldenLimitError` when the lowering had to clip a parameter, or when the
    program's arithmetic (requantization, accumulator, op modes) is not the profile's. The
    model's own formats (activation dtypes, zero points, bias codes) are only noted in the
    manifest, as before: the golden set then applies the profile's arithmetic to them."""
    from mrq.limits import arithmetic_violations, program_violations
    bad = list(lowered.limit_violations) + arithmetic_violations(
        program_violations(lowered.program, prof, lowered.step_node, lowered.placement))
    if bad:
        name = model if isinstance(model, str) else getattr(graph, "name", "the model")
        # the profile as the user named it (a path for a custom profile), so the hint runs as is
        raise GoldenLimitError(name, profile if isinstance(profile, str) else prof.name,
                               [str(v) for v in bad])


def compute_golden(model: Union[str, "object"], profile, feeds: dict, layout: Optional[str] = None,
                   weight_layout: Optional[str] = None, pipe=None) -> GoldenSet:
    """Run ``model`` under ``profile`` on ``feeds`` and collect every tensor of the execution.

    ``layout``: write 4-D activations and accumulators in this axis order (e.g. ``NHWC``)
    instead of the model's; ``weight_layout``: the same for conv weights (letters of ``OIHW``);
    ``pipe``: the model already lowered (:func:`run_traced`)."""
    from mrq.api import profile_violations
    graph, prof, lowered, program, trace, stats = run_traced(model, profile, feeds, pipe)
    from mrq.mixed_precision import LayerFormats
    formats = LayerFormats.of(graph, prof, check=False)   # each tensor's bits: its layer's
    act_layout = _program_layout(program)
    program_outputs = {s.name for s in program.outputs}
    tensors: dict = {}
    layers: list = []

    def qparams_of(name):
        t = graph.tensors.get(name)
        return None if t is None else t.qparams

    used_stems: set = set()

    def add(name, role, layer, arr, suffix, step_params=None, model_layout=None, want_layout=None,
            qp=None, scale=None, zero_point=None, quant_axis=None):
        arr = np.asarray(arr)
        perm = _perm(model_layout, want_layout)
        stored = np.ascontiguousarray(arr.transpose(perm) if perm else arr)
        own = (formats.for_tensor(name) if name in graph.tensors
               else formats.for_node(lowered.step_node.get(layer, layer)))
        bits, signed, is_float, note = _width(stored, role, own, step_params)
        if qp is not None:
            scale, zero_point, quant_axis = _qp_lists(qp)
        if quant_axis is not None and perm:
            quant_axis = list(perm).index(quant_axis % arr.ndim)
        base = f"{max(len(layers) - 1, 0):02d}_{safe_stem(layer or 'input')}.{safe_stem(suffix)}"
        stem, i = base, 1
        while stem.lower() in used_stems:
            stem, i = f"{base}_{i}", i + 1
        used_stems.add(stem.lower())
        tensors[name] = GoldenTensor(
            name=name, role=role, layer=layer, array=stored, bits=bits, signed=signed,
            is_float=is_float, layout=want_layout or model_layout,
            model_layout=model_layout, perm=perm, scale=scale, zero_point=zero_point,
            quant_axis=quant_axis, file=stem, note=note)
        return name

    # graph inputs as fed
    input_names = []
    for spec in program.inputs:
        arr = np.asarray(trace[spec.name])
        ml = _layout_letters(arr.ndim, act_layout)
        input_names.append(add(spec.name, ROLE_INPUT, "", arr, spec.name, model_layout=ml,
                               want_layout=layout if ml and arr.ndim == 4 else None,
                               qp=qparams_of(spec.name)))
    layers.append({"index": 0, "name": "", "kind": "inputs", "tensors": list(input_names)})

    rows = accmod.static_analysis(program)
    acc_rows = {r.layer: r for r in rows}
    hw_acc: dict = {}
    for idx, step in enumerate(program.steps, start=1):
        node_name = lowered.step_node.get(step.name, step.name)
        node = next((n for n in graph.nodes if n.name == node_name), None)
        entry = {"index": idx, "name": step.name, "kind": step.kind, "node": node_name,
                 "op": node.op if node is not None else None,
                 # host_ops steps are reference values for the host part, not RTL vectors
                 "placement": lowered.placement.get(step.name, "npu"),
                 "inputs": list(step.inputs), "outputs": list(step.outputs), "tensors": []}
        layers.append(entry)
        p = step.params
        tensor_of_param = {}
        w_qp = x_qp = None
        if step.kind in accmod.ACC_KINDS and node is not None:
            w_qp = qparams_of(node.inputs[1])
            x_qp = qparams_of(node.inputs[0])
        for key, value in p.items():
            if not isinstance(value, np.ndarray):
                continue
            role = PARAM_ROLES.get(key, "param")
            tname = f"{step.name}.{key}"
            kw = {}
            if key == "weight":
                ml = "OIHW" if step.kind == "conv" else ("KN" if value.ndim == 2 else None)
                kw = dict(model_layout=ml, want_layout=weight_layout if step.kind == "conv" else None)
                if w_qp is not None:
                    s, z, ax = _qp_lists(w_qp)
                    kw.update(scale=s, zero_point=z,
                              quant_axis=(0 if step.kind == "conv" else 1) if ax is not None else None)
            elif key == "bias" and node is not None and len(node.inputs) > 2:
                kw = dict(qp=qparams_of(node.inputs[2]))
                if kw["qp"] is not None and kw["qp"].per_channel:
                    s, z, _ = _qp_lists(kw.pop("qp"))
                    kw.update(scale=s, zero_point=z, quant_axis=0)
            tensor_of_param[key] = add(tname, role, step.name, value, key, step_params=p, **kw)
            entry["tensors"].append(tname)
        if step.kind in accmod.ACC_KINDS:
            x = np.asarray(trace[step.inputs[0]])
            acc = accmod.compute_accumulator(step, x)
            hw_acc[step.name] = acc
            acc_store = acc.astype(accmod.accumulator_storage_dtype(p.get("acc_bits", 32)))
            ml = act_layout if (step.kind == "conv" and acc.ndim == 4) else _layout_letters(acc.ndim, None)
            scale = None
            if x_qp is not None and w_qp is not None:
                scale = [float(np.float64(x_qp.scale[0]) * np.float64(s)) for s in w_qp.scale]
            tname = add(f"{step.name}.acc", ROLE_ACC, step.name, acc_store, "acc", step_params=p,
                        model_layout=ml, want_layout=layout if acc.ndim == 4 else None,
                        scale=scale, zero_point=[0] * len(scale) if scale else None,
                        quant_axis=(int(p.get("channel_axis", -1)) % acc.ndim) if scale and len(scale) > 1 else None)
            entry["tensors"].append(tname)
            entry["accumulator"] = tname
        for k, out in enumerate(step.outputs):
            arr = np.asarray(trace[out])
            ml = _layout_letters(arr.ndim, act_layout)
            role = ROLE_OUTPUT if out in program_outputs else ROLE_ACTIVATION
            add(out, role, step.name, arr, "out" if len(step.outputs) == 1 else f"out{k}", model_layout=ml,
                want_layout=layout if ml and arr.ndim == 4 else None, qp=qparams_of(out))
            entry["tensors"].append(out)
        entry["params"] = _jsonable_params(dict(p), tensor_of_param)
        entry["stats"] = {k: int(v) for k, v in stats.get(step.name, {}).items()}
        if step.name in acc_rows:
            entry["accumulator_analysis"] = None  # filled below

    exact = {name: a for name, a in hw_acc.items() if not acc_rows[name].can_overflow}
    accmod.observe(rows, program, trace, stats, exact_accumulators=exact)
    for entry in layers:
        if entry["name"] in acc_rows:
            entry["accumulator_analysis"] = acc_rows[entry["name"]].as_dict()

    manifest = {
        "format": FORMAT, "version": VERSION,
        "model": model if isinstance(model, str) else getattr(graph, "name", "graph"),
        "model_sha256": _file_sha256(model) if isinstance(model, str) and os.path.isfile(model) else None,
        "profile": prof.name, "profile_source": str(getattr(prof, "source", "")),
        # mrq version, command line, model and profile-content hashes, date (mrq/provenance.py)
        "provenance": provenance(model, prof),
        "arithmetic": {"requant": prof.requant.arithmetic, "rounding": prof.requant.rounding,
                       "accumulator_bits": prof.accumulator.bits,
                       "accumulator_overflow": prof.accumulator.overflow,
                       "activation_bits": prof.activations.bits, "weight_bits": prof.weights.bits,
                       "bias_bits": prof.bias.bits,
                       # profiles with `layers`: the bits of each conv/gemm layer (and of the
                       # tensors it writes), overriding the two above
                       **({"layers": [{"node": n, "kind": k, "weight_bits": w, "activation_bits": a}
                                      for n, k, w, a in formats.rows()]} if formats.mixed else {})},
        "batch": int(next(iter(trace[s.name] for s in program.inputs)).shape[0]) if program.inputs else 0,
        "layout": {"activations": layout or act_layout, "model_activations": act_layout,
                   "conv_weights": weight_layout or "OIHW"},
        "hex": {"radix": 16, "elements_per_line": 1, "order": "row-major (C order) over 'shape': "
                "the last axis varies fastest", "integers": "two's complement at 'bits' for "
                "signed tensors, plain binary for unsigned ones, 'hex_digits' digits per line",
                "floats": "IEEE-754 binary32 bit patterns, 8 digits", "header": "one '//' comment line"},
        "bin": {"byte_order": "little-endian", "element": "'dtype' of the tensor",
                "order": "row-major (C order) over 'shape'"},
        "inputs": input_names,
        # graph input name (what a user feeds) -> golden tensor holding it
        "feeds": {orig.name: bound.name for orig, bound in zip(lowered.program.inputs, program.inputs)},
        "outputs": [s.name for s in program.outputs],
        "violations": profile_violations(graph, prof),
        "accumulators": [r.as_dict() for r in rows],
        "layers": layers,
        "tensors": [],   # filled on write (with file names and hashes)
    }
    return GoldenSet(manifest=manifest, tensors=tensors, accumulator_rows=rows)


# --------------------------------------------------------------------------------------------
# Writing and reading
# --------------------------------------------------------------------------------------------


def _c_type(t: GoldenTensor) -> str:
    """The narrowest C integer type of the hex width (int4 codes go in int8_t)."""
    if t.is_float:
        return "float"
    width = next(b for b in (8, 16, 32, 64) if b >= t.bits)
    return f"{'' if t.signed else 'u'}int{width}_t"


def _c_literals(t: GoldenTensor, values: np.ndarray) -> list:
    """C literals of ``values`` (elements of ``t``), row-major."""
    flat = values.reshape(-1).tolist()
    if t.is_float:
        return [repr(float(np.float32(v))) + "f" for v in flat]
    if _c_type(t) == "int64_t":
        return [("(-9223372036854775807LL - 1)" if v == -(2 ** 63) else f"{v}LL") for v in flat]
    return [str(v) for v in flat]


# C arrays hold this many values per line
_C_PER_LINE = 16


def _c_prefix(t: GoldenTensor, shape: tuple) -> str:
    """A tensor's C header up to the opening brace of its values."""
    ident = c_identifier("mrq_" + t.file)
    size = int(np.prod(shape, dtype=np.int64))
    dims = "".join(f"#define {ident.upper()}_DIM{i} {d}\n" for i, d in enumerate(shape))
    zp = t.zero_point
    doc = (f"/* mrq golden tensor {t.name!r} (role {t.role}, layer {t.layer!r})\n"
           f" * shape [{', '.join(str(d) for d in shape)}]{', layout ' + t.layout if t.layout else ''}, "
           f"row-major, {t.bits}-bit"
           f"{' float' if t.is_float else (' signed' if t.signed else ' unsigned')}"
           f"{', zero point ' + str(zp[0] if zp and len(zp) == 1 else zp) if zp is not None else ''} */\n")
    return (doc + "#pragma once\n#include <stdint.h>\n"
            f"#define {ident.upper()}_SIZE {size}\n{dims}"
            f"static const {_c_type(t)} {ident}[{max(size, 1)}] = {{\n")


def _c_layer_defines(manifest: dict) -> str:
    lines = []
    for layer in manifest["layers"]:
        if not layer.get("name"):
            continue
        pre = "MRQ_L" + f"{layer['index']:02d}_" + c_identifier(layer["name"]).upper()
        for k, v in layer.get("params", {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            lines.append(f"#define {pre}_{c_identifier(k).upper()} {v!r}")
    return "\n".join(lines)


def _owned_by_mrq(out_dir: str) -> Optional[str]:
    """None if ``out_dir`` is a golden set mrq wrote and holds nothing else; else the reason."""
    if not os.path.isfile(os.path.join(out_dir, MARKER)):
        return "it was not written by mrq golden (no marker file)"
    try:
        with open(os.path.join(out_dir, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        listed = {MARKER, "manifest.json"}
        for meta in manifest["tensors"]:
            listed.update(os.path.normpath(rel) for rel in meta["files"].values())
        if os.path.isdir(os.path.join(out_dir, "c")):
            listed.add(os.path.join("c", "mrq_golden.h"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "its manifest.json is unreadable"
    for root, dirs, files in os.walk(out_dir):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = os.path.relpath(os.path.join(root, name), out_dir)
            if rel not in listed:
                return f"it holds {rel}, which mrq did not write"
    return None


def check_golden_target(out_dir: str, force: bool) -> str:
    """The resolved ``out_dir`` if a golden set may be written there (before any work, and again
    just before the write): new, empty, or with ``force`` a set mrq wrote holding nothing else."""
    out_dir = os.path.realpath(os.path.abspath(out_dir))
    check_writable(out_dir, directory=True)
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise MrqError(f"{out_dir}: exists and is not a directory")
        if os.listdir(out_dir):
            if not force:
                raise MrqError(f"{out_dir}: directory exists and is not empty (use --force to replace it)")
            why = _owned_by_mrq(out_dir)
            if why:
                raise MrqError(f"{out_dir}: --force replaces only a golden set written by mrq, and "
                               f"{why}; remove it yourself or choose another folder")
    return out_dir


# Hex words and C literals are Python strings: made this many elements at a time, so a large
# batch never holds one string per element of a tensor at once.
_TEXT_CHUNK = 1 << 18


class _HashedFile:
    """A file written once, front to back, hashed as it is written (a golden set of a data set
    is gigabytes: reading it all back for the manifest's hashes doubled the time)."""

    def __init__(self, path: str):
        self._file = open(path, "wb")  # noqa: SIM115  (open across batches; closed by close())
        self._hash = hashlib.sha256()

    def write(self, data) -> None:
        if isinstance(data, str):
            data = data.encode("ascii")
        self._hash.update(data)
        self._file.write(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._file.close()


class _TensorFiles:
    """The files of one tensor, written a batch at a time. A tensor of the execution (input,
    activation, accumulator) grows along its leading (batch) axis; a parameter is written from
    the first batch and must be the same in every later one."""

    def __init__(self, tmp: str, t: GoldenTensor, batch: int, total: int, write_bin: bool,
                 c_headers: bool):
        a = t.array
        self.tensor = t
        self.batched = (t.role in ACTIVATION_ROLES + (ROLE_ACC,) and a.ndim >= 1 and batch > 0
                        and a.shape[0] % batch == 0 and not (t.perm and t.perm[0] != 0))
        self.per_sample = a.shape[0] // batch if self.batched else 0
        self.shape = ((self.per_sample * total,) + a.shape[1:]) if self.batched else tuple(a.shape)
        self.rows = 0
        self.lo = self.hi = None
        self.carry: list = []       # C literals not yet on a full line
        self.c_lines = 0
        # a batched tensor's first batch is needed for its dtype and row shape only
        self.first = a[:0] if self.batched else a
        base = os.path.join("tensors", t.file)
        self.rel = {"npy": base + ".npy", "hex": base + ".hex"}
        if write_bin:
            self.rel["bin"] = base + ".bin"
        if c_headers:
            self.rel["c"] = os.path.join("c", t.file + ".h")
        # closed by finish(), or by close() when the writer aborts
        self.handles = {kind: _HashedFile(os.path.join(tmp, rel)) for kind, rel in self.rel.items()}
        # the .npy header np.save writes for the whole array
        header = {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
                  "shape": self.shape}
        try:
            np.lib.format.write_array_header_1_0(self.handles["npy"], header)
        except ValueError:   # a header above 64 KiB (a shape that long) needs format 2.0
            np.lib.format.write_array_header_2_0(self.handles["npy"], header)
        self.handles["hex"].write(_hex_header(t, self.shape))
        if "c" in self.handles:
            self.handles["c"].write(_c_prefix(t, self.shape))
        self._write(a)

    def add(self, t: GoldenTensor, batch: int) -> None:
        a = t.array
        if not self.batched:
            if a.dtype != self.first.dtype or not np.array_equal(a, self.first):
                raise GoldenError(f"tensor {t.name!r} has no batch axis and differs between batches; "
                                  f"write the golden set from one batch (a larger --batch-size)")
            return
        if a.shape[1:] != self.shape[1:] or a.shape[0] != self.per_sample * batch or \
                a.dtype != self.first.dtype:
            raise GoldenError(f"tensor {t.name!r}: a batch of {batch} gave {a.dtype}{list(a.shape)}, "
                              f"the first batch {self.first.dtype}{list(self.first.shape)}")
        self._write(a)

    def _write(self, a: np.ndarray) -> None:
        t = self.tensor
        a = np.ascontiguousarray(a)
        self.rows += a.shape[0] if a.ndim else 1
        self.handles["npy"].write(a.tobytes())
        if "bin" in self.handles:
            self.handles["bin"].write(a.astype(a.dtype.newbyteorder("<")).tobytes())
        if a.size and not t.is_float:
            lo, hi = int(a.min()), int(a.max())
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
        flat = a.reshape(-1)
        for i in range(0, flat.size, _TEXT_CHUNK):
            part = flat[i:i + _TEXT_CHUNK]
            self.handles["hex"].write(hex_lines(part, t.bits, t.is_float))
            if "c" in self.handles:
                self.carry += _c_literals(t, part)
                self._c_flush(final=False)

    def _c_flush(self, final: bool) -> None:
        full = len(self.carry) if final else len(self.carry) - len(self.carry) % _C_PER_LINE
        if not full:
            return
        vals = self.carry[:full]
        self.handles["c"].write("".join("    " + ", ".join(vals[i:i + _C_PER_LINE]) + ",\n"
                                        for i in range(0, full, _C_PER_LINE)))
        self.c_lines += -(-full // _C_PER_LINE)
        del self.carry[:full]

    def close(self) -> None:
        for f in self.handles.values():
            f.close()

    def finish(self) -> dict:
        """Close the files; the tensor's manifest entry (with file names and hashes)."""
        if "c" in self.handles:
            self._c_flush(final=True)
            self.handles["c"].write(("" if self.c_lines else "    0,\n") + "};\n")
        self.close()
        if self.batched and self.rows != self.shape[0]:
            raise GoldenError(f"tensor {self.tensor.name!r}: {self.rows} rows written, "
                              f"{self.shape[0]} expected (fewer samples than announced)")
        meta = self.tensor.meta()
        meta["shape"] = list(self.shape)
        meta.pop("min", None), meta.pop("max", None)
        note = meta.pop("note", None)
        if self.lo is not None:      # over every batch
            meta["min"], meta["max"] = self.lo, self.hi
        if note:
            meta["note"] = note
        meta["files"] = dict(self.rel)
        meta["sha256"] = {k: f.hexdigest() for k, f in self.handles.items()}
        return meta


def _add_counters(total: dict, counters: dict) -> None:
    for key, value in counters.items():
        total[key] = total.get(key, 0) + int(value)


class GoldenWriter:
    """Writes a golden set a batch at a time into a temporary folder next to ``out_dir`` and
    renames it into place in :meth:`finish`, so the folder appears complete or not at all.

    ``total``: the samples every batch together holds (the batched tensors' files are sized
    for it from the first batch). Use as a context manager: leaving it without ``finish``
    (an error, an interrupt) removes the temporary folder."""

    def __init__(self, out_dir: str, total: int, c_headers: bool = False, write_bin: bool = False,
                 force: bool = False):
        self.out_dir = check_golden_target(out_dir, force)
        self.force, self.c_headers, self.write_bin = force, c_headers, write_bin
        self.total = total
        self.parent = os.path.dirname(self.out_dir)
        sweep_stale(self.parent)
        self.tmp = discardable(tmp_name(self.parent, ".golden"))
        self.files: dict = {}        # tensor name -> _TensorFiles, in layer order
        self.gs: GoldenSet | None = None   # the first batch's set: its manifest is the base
        self.samples = 0
        try:
            os.mkdir(self.tmp, dir_mode())
            os.makedirs(os.path.join(self.tmp, "tensors"))
            if c_headers:
                os.makedirs(os.path.join(self.tmp, "c"))
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                raise write_error(self.out_dir, exc) from None
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.tmp is not None:
            self.abort()

    def abort(self) -> None:
        for f in self.files.values():
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        forget(self.tmp)
        self.tmp = None

    def add(self, gs: GoldenSet) -> None:
        """The tensors of the next batch (:func:`compute_golden` on the next samples)."""
        batch = int(gs.manifest["batch"])
        try:
            if self.gs is None:
                self.gs = gs
                for name, t in gs.tensors.items():
                    self.files[name] = _TensorFiles(self.tmp, t, batch, self.total, self.write_bin,
                                                    self.c_headers)
            else:
                if list(gs.tensors) != list(self.files):
                    raise GoldenError("the batches of a golden set gave different tensors")
                for name, t in gs.tensors.items():
                    self.files[name].add(t, batch)
                self._merge(gs)
        except OSError as exc:
            raise write_error(self.out_dir, exc) from None
        self.samples += batch

    def _merge(self, gs: GoldenSet) -> None:
        """Per-step counters add up; observed accumulator extremes widen."""
        for entry, more in zip(self.gs.manifest["layers"], gs.manifest["layers"]):
            if "stats" in more:
                _add_counters(entry.setdefault("stats", {}), more["stats"])
        for row, more in zip(self.gs.accumulator_rows, gs.accumulator_rows):
            accmod.merge_observed(row, more)

    def finish(self) -> str:
        """Complete the files, write the manifest and move the set into place."""
        if self.gs is None:
            raise InputDataError("no samples: a golden set needs at least one input")
        if self.samples != self.total:
            raise GoldenError(f"{self.samples} samples written, {self.total} announced")
        gs, tmp, out_dir = self.gs, self.tmp, self.out_dir
        try:
            manifest = gs.manifest
            manifest["batch"] = self.samples
            acc = {r.layer: r.as_dict() for r in gs.accumulator_rows}
            manifest["accumulators"] = list(acc.values())
            for entry in manifest["layers"]:
                if entry.get("name") in acc:
                    entry["accumulator_analysis"] = acc[entry["name"]]
            manifest["tensors"] = [f.finish() for f in self.files.values()]
            if self.c_headers:
                inc = "".join(f'#include "{t.file}.h"\n' for t in gs.tensors.values())
                with open(os.path.join(tmp, "c", "mrq_golden.h"), "w", encoding="ascii") as f:
                    f.write(f"/* mrq golden set: model {manifest['model']}, profile {manifest['profile']} */\n"
                            f"#pragma once\n{inc}\n{_c_layer_defines(manifest)}\n")
            with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
                json.dump(_finite(manifest), f, indent=1, default=_json_default)
                f.write("\n")
            with open(os.path.join(tmp, MARKER), "w", encoding="ascii") as f:
                f.write(f"{FORMAT} {VERSION}: this folder was written by `mrq golden`; "
                        f"`mrq golden --force` may replace it\n")
            # the target may have changed while the batches ran
            check_golden_target(out_dir, self.force)
            with critical():
                if os.path.exists(out_dir):
                    old = tmp_name(self.parent, ".old")
                    os.rename(out_dir, old)
                    try:
                        os.rename(tmp, out_dir)
                    except BaseException:
                        os.rename(old, out_dir)  # the previous set stays, not under a temp name
                        raise
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.rename(tmp, out_dir)
                forget(tmp)
                self.tmp = None
        except OSError as exc:
            raise write_error(out_dir, exc) from None
        return out_dir


def write_golden(gs: GoldenSet, out_dir: str, c_headers: bool = False, write_bin: bool = False,
                 force: bool = False) -> str:
    """Write ``gs`` to ``out_dir`` atomically. An existing non-empty ``out_dir`` is replaced only
    with ``force``, and only when it is a golden set mrq wrote that holds nothing else."""
    with GoldenWriter(out_dir, int(gs.manifest["batch"]), c_headers=c_headers, write_bin=write_bin,
                      force=force) as writer:
        writer.add(gs)
        return writer.finish()


def stream_golden(model, profile, source, out_dir: str, batch_size: int, layout: str | None = None,
                  weight_layout: str | None = None, c_headers: bool = False, write_bin: bool = False,
                  force: bool = False, progress: bool = False) -> GoldenSet:
    """:func:`compute_golden` over every sample of ``source`` (an
    :class:`mrq.datasets.InputSource`), ``batch_size`` samples in memory at a time, written by a
    :class:`GoldenWriter`: the same files as one :func:`write_golden` of all the samples.
    Returns the set with its manifest (the batched tensors' arrays are not kept)."""
    import sys

    from mrq.pipeline import Pipeline
    pipe = Pipeline(model, profile, layout="native")
    source = source.bound_to(list(pipe.graph.inputs))
    if source.num_samples == 0:
        raise InputDataError(f"{source.path}: holds no samples")
    bar = None
    if progress and source.num_samples > batch_size:
        from tqdm import tqdm
        bar = tqdm(total=source.num_samples, unit="input", file=sys.stderr, delay=2.0,
                   desc="mrq golden")
    try:
        with GoldenWriter(out_dir, source.num_samples, c_headers=c_headers, write_bin=write_bin,
                          force=force) as writer:
            for feeds in source.batches(batch_size):
                writer.add(compute_golden(model, profile, feeds, layout=layout,
                                          weight_layout=weight_layout, pipe=pipe))
                for name, files in writer.files.items():
                    # the first batch's set stays for the manifest: not its batch of every tensor
                    if files.batched:
                        writer.gs.tensors[name].array = files.first
                if bar is not None:
                    bar.update(next(iter(feeds.values())).shape[0])
            writer.finish()
            return writer.gs
    finally:
        if bar is not None:
            bar.close()


def _finite(obj):
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


ENCODINGS = ("ieee754-binary32", "twos-complement", "unsigned")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _confined(golden_dir: str, rel, where: str) -> str:
    """The full path of a manifest entry, which must name a file inside the golden folder (after
    symlinks): a manifest is data, and data must not make verify read files elsewhere."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or "\0" in rel:
        raise GoldenError(f"{where}: expected a relative path inside the golden folder, got {rel!r}")
    root = os.path.realpath(golden_dir)
    full = os.path.realpath(os.path.join(root, rel))
    if not full.startswith(root + os.sep):
        raise GoldenError(f"{where}: {rel!r} lies outside the golden folder {golden_dir}")
    return full


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate_params(params: dict, need, where: str) -> None:
    """The requantization parameters :mod:`mrq.verify` reads to diagnose rounding."""
    for key in ("rq_mode", "rq_rounding"):
        need(params.get(key) is None or isinstance(params.get(key), str), f"{where}: params.{key}",
             f"expected a string, got {params.get(key)!r}")
    for key in ("channel_axis", "out_zero_point", "out_min", "out_max"):
        need(params.get(key) is None or _is_int(params.get(key)), f"{where}: params.{key}",
             f"expected an integer, got {params.get(key)!r}")
    for key in ("rq_multiplier", "rq_shift", "scale"):
        v = params.get(key)
        if isinstance(v, dict):
            ok = (v.get("tensor") is None or isinstance(v.get("tensor"), str)) and \
                (v.get("values") is None or (isinstance(v["values"], list) and all(map(_is_number, v["values"]))))
        else:
            ok = v is None or _is_number(v) or (isinstance(v, list) and all(map(_is_number, v)))
        need(ok, f"{where}: params.{key}", f"expected a number, a list of numbers or a tensor reference, got {v!r}")


def validate_manifest(manifest, path: str) -> None:
    """Check the type and range of every manifest key that :func:`load_golden` and
    :mod:`mrq.verify` read, so a damaged or hand-edited manifest is one error naming the key
    instead of a traceback or, worse, a comparison at a meaningless width."""
    def need(cond, where, what):
        if not cond:
            raise GoldenError(f"{path}: {where}: {what}")

    need(isinstance(manifest, dict), "top level", "expected a JSON object")
    if manifest.get("format") != FORMAT:
        raise GoldenError(f"{path}: not an mrq golden manifest (format {manifest.get('format')!r})")
    version = manifest.get("version", 0)
    need(_is_int(version), "version", f"expected an integer, got {version!r}")
    if version > VERSION:
        raise GoldenError(f"{path}: golden format version {version} is newer than this mrq ({VERSION})")
    tensors = manifest.get("tensors")
    need(isinstance(tensors, list) and tensors, "tensors", "expected a non-empty list")
    names = set()
    for i, meta in enumerate(tensors):
        w = f"tensors[{i}]"
        need(isinstance(meta, dict), w, "expected an object")
        for key in ("name", "role", "layer", "file", "dtype"):
            need(isinstance(meta.get(key), str), f"{w}.{key}", f"expected a string, got {meta.get(key)!r}")
        w = f"tensor {meta['name']!r}"
        need(meta["name"] not in names, w, "appears twice")
        names.add(meta["name"])
        bits = meta.get("bits")
        need(_is_int(bits) and 1 <= bits <= 64, f"{w}: bits", f"expected an integer in 1..64, got {bits!r}")
        need(isinstance(meta.get("signed"), bool), f"{w}: signed", f"expected true/false, got {meta.get('signed')!r}")
        need(meta.get("encoding") in ENCODINGS, f"{w}: encoding",
             f"expected one of {', '.join(ENCODINGS)}, got {meta.get('encoding')!r}")
        shape = meta.get("shape")
        need(isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape), f"{w}: shape",
             f"expected a list of non-negative integers, got {shape!r}")
        perm = meta.get("perm")
        need(perm is None or (isinstance(perm, list) and all(_is_int(p) for p in perm)
                              and sorted(perm) == list(range(len(shape)))),
             f"{w}: perm", f"expected null or a permutation of the {len(shape)} axes, got {perm!r}")
        for key in ("layout", "model_layout", "note"):
            need(meta.get(key) is None or isinstance(meta.get(key), str), f"{w}: {key}",
                 f"expected a string or null, got {meta.get(key)!r}")
        for key in ("scale", "zero_point"):
            need(meta.get(key) is None or isinstance(meta.get(key), list), f"{w}: {key}",
                 f"expected a list or null, got {meta.get(key)!r}")
        qa = meta.get("quant_axis")
        need(qa is None or (_is_int(qa) and 0 <= qa < max(len(shape), 1)), f"{w}: quant_axis",
             f"expected null or an axis of the shape, got {qa!r}")
        files, hashes = meta.get("files"), meta.get("sha256")
        need(isinstance(files, dict) and isinstance(files.get("npy"), str), f"{w}: files",
             "expected an object with an \"npy\" path")
        need(isinstance(hashes, dict) and all(isinstance(hashes.get(k), str) for k in files),
             f"{w}: sha256", "expected a hex digest for every file")
    layers = manifest.get("layers", [])
    need(isinstance(layers, list), "layers", "expected a list")
    for i, entry in enumerate(layers):
        need(isinstance(entry, dict) and isinstance(entry.get("name", ""), str)
             and _is_int(entry.get("index", 0)) and isinstance(entry.get("params", {}), dict),
             f"layers[{i}]", "expected an object with a string name, an integer index and a params object")
        w = f"layers[{i}] ({entry.get('name', '?')})"
        for key in ("kind", "accumulator"):
            need(entry.get(key) is None or isinstance(entry.get(key), str), f"{w}: {key}",
                 f"expected a string or null, got {entry.get(key)!r}")
        outs = entry.get("outputs", [])
        need(isinstance(outs, list) and all(isinstance(o, str) for o in outs), f"{w}: outputs",
             "expected a list of tensor names")
        _validate_params(entry.get("params", {}), need, w)
    inputs = manifest.get("inputs", [])
    need(isinstance(inputs, list) and all(n in names for n in inputs), "inputs",
         "expected a list of tensor names of this manifest")
    feeds = manifest.get("feeds", {})
    need(isinstance(feeds, dict) and all(isinstance(k, str) and v in names for k, v in feeds.items()),
         "feeds", "expected an object mapping feed names to tensor names of this manifest")


def load_golden(golden_dir: str, check_hashes: bool = True) -> GoldenSet:
    """Read a golden set written by :func:`write_golden` (the .npy files), verifying the manifest
    (:func:`validate_manifest`), that every file lies inside ``golden_dir``, and the hashes."""
    path = os.path.join(golden_dir, "manifest.json")
    if not os.path.isfile(path):
        raise GoldenError(f"{golden_dir}: not a golden set (no manifest.json)")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError, RecursionError) as exc:
        raise GoldenError(f"{path}: unreadable manifest ({exc})") from None
    validate_manifest(manifest, path)
    for meta in manifest["tensors"]:
        for kind, rel in meta["files"].items():
            _confined(golden_dir, rel, f"{path}: tensor {meta['name']!r}: files.{kind}")
    tensors = {}
    for meta in manifest["tensors"]:
        rel = meta["files"]["npy"]
        full = _confined(golden_dir, rel, f"{path}: tensor {meta['name']!r}: files.npy")
        if not os.path.isfile(full):
            raise GoldenError(f"{golden_dir}: missing {rel}")
        if check_hashes and _file_sha256(full) != meta["sha256"]["npy"]:
            raise GoldenError(f"{golden_dir}: {rel} does not match its sha256 in the manifest "
                              f"(the golden set was modified)")
        try:
            arr = np.load(full, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise GoldenError(f"{golden_dir}: {rel}: not a readable .npy file ({exc})") from None
        if list(arr.shape) != meta["shape"] or arr.dtype.name != meta["dtype"]:
            raise GoldenError(f"{golden_dir}: {rel} holds {arr.dtype.name}{list(arr.shape)}, the manifest "
                              f"says {meta['dtype']}{meta['shape']}")
        tensors[meta["name"]] = GoldenTensor(
            name=meta["name"], role=meta["role"], layer=meta["layer"], array=arr,
            bits=meta["bits"], signed=meta["signed"],
            is_float=meta["encoding"] == "ieee754-binary32", layout=meta.get("layout"),
            model_layout=meta.get("model_layout"),
            perm=tuple(meta["perm"]) if meta.get("perm") else None,
            scale=meta.get("scale"), zero_point=meta.get("zero_point"),
            quant_axis=meta.get("quant_axis"), file=meta["file"], note=meta.get("note", ""))
    return GoldenSet(manifest=manifest, tensors=tensors)


def golden_feeds(gs: GoldenSet) -> dict:
    """The graph inputs a golden set was made from (in the model's layout)."""
    feeds = {}
    for feed_name, name in gs.manifest.get("feeds", {n: n for n in gs.manifest["inputs"]}).items():
        t = gs.tensors[name]
        arr = t.array
        if t.perm:
            arr = arr.transpose(np.argsort(t.perm))
        feeds[feed_name] = np.ascontiguousarray(arr)
    return feeds


def make_golden(model, profile, feeds: dict, out_dir: str, layout=None, weight_layout=None,
                c_headers=False, write_bin=False, force=False) -> GoldenSet:
    gs = compute_golden(model, profile, feeds, layout=layout, weight_layout=weight_layout)
    write_golden(gs, out_dir, c_headers=c_headers, write_bin=write_bin, force=force)
    return gs
