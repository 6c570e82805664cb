"""Compare a hardware/RTL dump with a golden set (``mrq verify``).

A dump directory holds files named like the golden set's (``<stem>.npy``, ``<stem>.hex`` or raw
little-endian ``<stem>.bin`` with the manifest's dtype and shape; a ``tensors/`` subdirectory is
searched too; a file may also be named after the tensor itself). Every dump file is checked
against its golden tensor; tensors without a dump file are listed as not checked.

The report gives the first layer (in execution order) with a differing tensor, the first
differing element in the tensor's coordinates (stored order, and the model's order when the
golden set was written in another layout), a histogram of the differences in LSBs per tensor,
and a diagnosis: a layout mistake (the dump equals the golden tensor transposed), an
off-by-one rounding pattern (all differences +-1 at ties, with the rounding modes the dump is
consistent with), a constant offset, a sign/zero-extension error, unknown (x/z) values, or
arithmetic differences that fit none of these.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import numpy as np

from mrq.errors import InputDataError, MrqError
from mrq.fileio import check_npy_file
from mrq.golden import (
    ROLE_ACC,
    ROLE_ACTIVATION,
    ROLE_OUTPUT,
    GoldenSet,
    GoldenTensor,
    load_golden,
    parse_hex,
    safe_stem,
)
from simulator import rounding

FORMATS = ("npy", "hex", "bin")
ROUNDING_MODES = rounding.NAMES


@dataclass
class ActualTensor:
    values: np.ndarray               # npy: as saved; hex/bin: flat
    unknown: np.ndarray | None    # flat mask of x/z elements (hex only)
    path: str
    fmt: str


@dataclass
class TensorCheck:
    name: str
    layer: str
    layer_index: int
    role: str
    path: str
    fmt: str
    n_elements: int
    status: str = "match"            # match | mismatch | size
    n_diff: int = 0
    max_abs_diff: float = 0.0
    histogram: list = field(default_factory=list)     # [(label, count)]
    first_index: tuple | None = None               # stored (file) coordinates
    first_model_index: tuple | None = None         # model coordinates (differs with a layout)
    axes: str | None = None
    model_axes: str | None = None
    expected: float | None = None
    actual: object | None = None
    diagnosis: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "match"

    def where(self) -> str:
        if self.first_index is None:
            return "-"
        return _fmt_coords(self.first_index, self.axes)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        for k in ("first_index", "first_model_index"):
            if d[k] is not None:
                d[k] = [int(v) for v in d[k]]
        d["histogram"] = [[k, int(v)] for k, v in self.histogram]
        return d


def _fmt_coords(coords, axes: str | None) -> str:
    coords = tuple(int(c) for c in coords)
    if axes and len(axes) == len(coords):
        named = ", ".join(f"{a.lower()}={c}" for a, c in zip(axes, coords))
        return f"{coords} in {axes} ({named})"
    return str(coords)


# --------------------------------------------------------------------------------------------
# Reading a dump
# --------------------------------------------------------------------------------------------


def _index_dump(dump_dir: str) -> dict:
    """(lower-cased stem, ext) -> path of every candidate file in ``dump_dir`` (and tensors/)."""
    found = {}
    for sub in ("", "tensors"):
        d = os.path.join(dump_dir, sub)
        if not os.path.isdir(d):
            continue
        for fn in sorted(os.listdir(d)):
            stem, ext = os.path.splitext(fn)
            ext = ext[1:].lower()
            if ext in FORMATS and os.path.isfile(os.path.join(d, fn)):
                found.setdefault((stem.lower(), ext), os.path.join(d, fn))
    return found


def read_actual(path: str, fmt: str, t: GoldenTensor) -> ActualTensor:
    try:
        if fmt == "npy":
            # the header first: a plain numeric dtype whose declared size the file really holds
            check_npy_file(path, max(t.array.nbytes * 8, 1 << 20))
            arr = np.asarray(np.load(path, allow_pickle=False))
            if not t.is_float and arr.dtype.kind == "f" and arr.size and \
                    not np.all(np.isfinite(arr) & (arr == np.round(arr))):
                raise InputDataError(f"{path}: {t.name!r} holds integer codes, but the dump holds "
                                     f"NaN, infinite or fractional values")
            return ActualTensor(arr, None, path, fmt)
        if fmt == "bin":
            dt = t.array.dtype.newbyteorder("<")
            size = os.path.getsize(path)
            if size % dt.itemsize:
                raise InputDataError(f"{path}: {size} bytes is not a multiple of the {t.array.dtype.name} "
                                     f"element size {dt.itemsize}")
            return ActualTensor(np.fromfile(path, dtype=dt).astype(t.array.dtype), None, path, fmt)
        with open(path, encoding="ascii", errors="replace") as f:
            values, unknown = parse_hex(f.read(), t.bits, t.signed, t.is_float)
        return ActualTensor(values, unknown if unknown.any() else None, path, fmt)
    except InputDataError as exc:
        raise InputDataError(f"{path}: {exc}") if not str(exc).startswith(path) else exc
    except (OSError, ValueError, OverflowError) as exc:
        raise InputDataError(f"{path}: unreadable {fmt} file ({exc})") from None


def find_dump_files(gs: GoldenSet, dump_dir: str):
    """[(golden tensor, format, path)] in golden order, and the unrecognized dump files."""
    if not os.path.isdir(dump_dir):
        raise MrqError(f"{dump_dir}: no such directory")
    index = _index_dump(dump_dir)
    used = set()
    pairs = []
    for t in gs.tensors.values():
        keys = [t.file.lower(), safe_stem(t.name).lower(), t.name.lower()]
        for fmt in FORMATS:
            for k in keys:
                if (k, fmt) in index:
                    pairs.append((t, fmt, index[(k, fmt)]))
                    used.add((k, fmt))
                    break
    unrecognized = sorted(p for key, p in index.items() if key not in used)
    return pairs, unrecognized


# --------------------------------------------------------------------------------------------
# Comparing one tensor
# --------------------------------------------------------------------------------------------


def _histogram(diff: np.ndarray, n_unknown: int = 0) -> list:
    """Counts of differences in LSBs: exact for |d| <= 2, then signed power-of-two bins."""
    d = np.asarray(diff)
    if d.dtype.kind == "f":
        # a NaN or infinite difference (a float dump) counts as the largest one
        d = np.nan_to_num(np.rint(d), nan=2.0 ** 62, posinf=2.0 ** 62, neginf=-2.0 ** 62)
        d = np.clip(d, -2.0 ** 62, 2.0 ** 62)
    d = d.astype(np.int64, copy=False)
    bins = []
    nz = d[d != 0]
    bins.append(("0", int(d.size - nz.size)))
    if nz.size:
        for v in (-2, -1, 1, 2):
            c = int(np.count_nonzero(nz == v))
            if c:
                bins.append((f"{v:+d}", c))
        big = nz[np.abs(nz) > 2]
        if big.size:
            mag = np.abs(big)
            hi_edges = 2 ** np.ceil(np.log2(mag)).astype(np.int64)
            for sign in (-1, 1):
                sel = np.sign(big) == sign
                for edge in sorted(set(hi_edges[sel].tolist())):
                    c = int(np.count_nonzero(sel & (hi_edges == edge)))
                    lo = edge // 2 + 1
                    bins.append((f"-{edge}..-{lo}" if sign < 0 else f"+{lo}..+{edge}", c))
    if n_unknown:
        bins.append(("x/z", int(n_unknown)))
    return bins


def format_histogram(hist: list) -> str:
    return "  ".join(f"{k}: {v}" for k, v in hist)


def _layer_params(gs: GoldenSet, layer: str) -> dict:
    for entry in gs.layers():
        if entry.get("name") == layer:
            return entry
    return {}


def _lsb_of_float(gs: GoldenSet, t: GoldenTensor) -> float:
    """Output LSB of a float tensor produced by a dequantize step (else 1.0: raw units)."""
    entry = _layer_params(gs, t.layer)
    if entry.get("kind") == "dequantize":
        sc = entry.get("params", {}).get("scale")
        vals = sc.get("values") if isinstance(sc, dict) else None
        if vals and len(vals) == 1 and vals[0]:
            return float(vals[0])
    return 1.0


def _to_model(arr: np.ndarray, t: GoldenTensor) -> np.ndarray:
    return arr.transpose(np.argsort(t.perm)) if t.perm else arr


def compare_tensor(gs: GoldenSet, t: GoldenTensor, actual: ActualTensor, layer_index: int) -> TensorCheck:
    g = t.array
    a = np.asarray(actual.values)
    chk = TensorCheck(name=t.name, layer=t.layer, layer_index=layer_index, role=t.role,
                      path=actual.path, fmt=actual.fmt, n_elements=int(g.size), axes=t.layout,
                      model_axes=t.model_layout if t.perm else None)
    unknown = actual.unknown
    if a.size != g.size:
        chk.status = "size"
        shape = f"shape {list(a.shape)}" if actual.fmt == "npy" else f"{a.size} elements"
        chk.diagnosis.append(f"size: the dump has {shape}, the golden tensor has shape {list(g.shape)} "
                             f"({g.size} elements)")
        if g.size and a.size % g.size == 0:
            chk.diagnosis.append(f"the dump holds exactly {a.size // g.size} copies' worth of elements "
                                 f"(a batch or word-size mismatch?)")
        chk.n_diff = int(g.size)
        return chk
    layout_note = None
    if actual.fmt == "npy" and a.shape != g.shape:
        layout_note = f"the .npy has shape {list(a.shape)}, the golden tensor {list(g.shape)}"
    if t.is_float:
        af = a.reshape(g.shape).astype(np.float32)
        gf = g.astype(np.float32)
        differ = af.view(np.uint32) != gf.view(np.uint32)
        differ &= ~(np.isnan(af) & np.isnan(gf))
        diff = (af.astype(np.float64) - gf.astype(np.float64)) / _lsb_of_float(gs, t)
        diff = np.where(differ, diff, 0.0)
        diff = np.nan_to_num(diff, nan=np.inf)
    else:
        ai = a.reshape(g.shape).astype(np.int64)
        diff = ai - g.astype(np.int64)
        differ = diff != 0
    if unknown is not None:
        unknown = unknown.reshape(g.shape)
        differ = differ | unknown
        diff = np.where(unknown, 0, diff)
    n_diff = int(np.count_nonzero(differ))
    if not n_diff:
        if layout_note:
            chk.diagnosis.append(layout_note + " but the elements match in row-major order")
        return chk
    chk.status = "mismatch"
    chk.n_diff = n_diff
    finite = diff[np.isfinite(diff)] if diff.dtype.kind == "f" else diff
    chk.max_abs_diff = float(np.abs(finite).max()) if finite.size else float("inf")
    chk.histogram = _histogram(np.where(differ & np.isfinite(diff), diff, 0) if diff.dtype.kind == "f" else diff,
                               int(unknown.sum()) if unknown is not None else 0)
    flat_first = int(np.flatnonzero(differ.reshape(-1))[0])
    coords = tuple(int(c) for c in np.unravel_index(flat_first, g.shape))
    chk.first_index = coords
    chk.first_model_index = t.model_coords(coords) if t.perm else None
    chk.expected = g.reshape(-1)[flat_first].item()
    if unknown is not None and unknown.reshape(-1)[flat_first]:
        chk.actual = "x"
    else:
        chk.actual = a.reshape(-1)[flat_first].item()
    if layout_note:
        chk.diagnosis.append(layout_note)
    chk.diagnosis.extend(diagnose(gs, t, a, diff, differ, unknown))
    return chk


# --------------------------------------------------------------------------------------------
# Diagnosis
# --------------------------------------------------------------------------------------------


def _layout_match(t: GoldenTensor, a: np.ndarray) -> tuple | None:
    """A non-identity axis permutation p with dump == golden.transpose(p) (row-major)."""
    g = t.array
    if g.ndim < 2 or g.ndim > 5 or a.size != g.size:
        return None
    flat = a.reshape(-1)
    ident = g.reshape(-1)
    for p in itertools.permutations(range(g.ndim)):
        if p == tuple(range(g.ndim)):
            continue
        cand = np.ascontiguousarray(g.transpose(p)).reshape(-1)
        if np.array_equal(cand, ident):
            continue  # only size-1 axes move: not a different layout
        if np.array_equal(cand.astype(np.int64) if not t.is_float else cand,
                          flat.astype(np.int64) if not t.is_float else flat.astype(np.float32)):
            return p
    return None


def _layout_message(t: GoldenTensor, p: tuple) -> str:
    axes = t.layout
    if axes and len(axes) == len(p):
        dumped = "".join(axes[i] for i in p)
        return (f"layout: the dump equals the golden tensor transposed: the golden set is {axes}, the "
                f"dump is in {dumped} order (numpy: golden.transpose({tuple(p)})); fix the writer's or "
                f"the reader's axis order")
    return f"layout: the dump equals the golden tensor transposed with axes {tuple(p)}"


def _exact_prerounding(acc: np.ndarray, entry: dict, gs: GoldenSet, shape_axis: int):
    """For integer requantization: (numerator int/object array, shift array) so that the value
    before rounding is num / 2**shift, broadcast over ``acc``. None if not applicable."""
    p = entry.get("params", {})
    mode = p.get("rq_mode")
    if mode not in ("fixed", "shift", "double_q31"):
        return None

    def arr(key, default):
        v = p.get(key)
        if isinstance(v, dict):
            name = v.get("tensor")
            if name and name in gs.tensors:
                return gs.tensors[name].array.astype(np.int64).reshape(-1)
            if v.get("values") is not None:
                return np.asarray(v["values"], np.int64).reshape(-1)
        if v is None:
            return np.asarray([default], np.int64)
        return np.asarray(v, np.int64).reshape(-1)

    mult = arr("rq_multiplier", 1) if mode != "shift" else np.ones(1, np.int64)
    shift = arr("rq_shift", 0)
    shape = [1] * acc.ndim
    n_ch = max(mult.size, shift.size)
    if n_ch > 1:
        mult = np.broadcast_to(mult, (n_ch,))
        shift = np.broadcast_to(shift, (n_ch,))
        shape[shape_axis] = n_ch
    mult = mult.reshape(shape)
    shift = shift.reshape(shape)
    big = int(np.abs(acc).max(initial=0)) * int(np.abs(mult).max(initial=0)) >= 2 ** 62
    a = acc.astype(object) if big else acc.astype(np.int64)
    num = a * (mult.astype(object) if big else mult)
    return num, np.broadcast_to(shift, acc.shape)


def _round_rational(num, shift, mode: str):
    """round(num / 2**shift) with ``mode``, elementwise; ``shift <= 0`` is an exact left shift.
    Works on int64 arrays and on object arrays of Python ints (products wider than 62 bits)."""
    num = np.asarray(num)
    s = np.asarray(shift).astype(np.int64)
    pos = s > 0
    sp = np.where(pos, s, 1)
    if num.dtype == object:
        sp = sp.astype(object)
    q = num >> sp                       # floor division by 2**s
    r = num - (q << sp)                 # 0 <= r < 2**s
    half = (sp * 0 + 1) << (sp - 1)
    cmp_half = np.asarray(r > half, np.int64) - np.asarray(r < half, np.int64)
    v = q + rounding.round_up(q, cmp_half, r != 0, mode).astype(q.dtype)
    left = num << np.where(pos, 0, -s).astype(num.dtype if num.dtype == object else np.int64)
    return np.where(pos, v, left)


def _is_tie(num, shift) -> np.ndarray:
    num = np.asarray(num)
    s = np.asarray(shift).astype(np.int64)
    pos = s > 0
    sp = np.where(pos, s, 1)
    if num.dtype == object:
        sp = sp.astype(object)
    r = num - ((num >> sp) << sp)
    return np.asarray(pos & (r == ((sp * 0 + 1) << (sp - 1))), bool)


def _rounding_diagnosis(gs: GoldenSet, t: GoldenTensor, a_model: np.ndarray, differ_model: np.ndarray,
                        diff_vals: np.ndarray) -> list:
    """Messages about +-1 differences of a requantized output, using the golden accumulator."""
    entry = _layer_params(gs, t.layer)
    acc_name = entry.get("accumulator")
    p = entry.get("params", {})
    n = int(differ_model.sum())
    if not acc_name or acc_name not in gs.tensors or t.role == ROLE_ACC or t.name not in entry.get("outputs", []):
        return [(f"off-by-one: all {n} differences are ±1 LSB (a rounding-sized error, not arithmetic "
                 f"garbage); the golden set has no accumulator for this step, so ties cannot be checked")]
    acc_t = gs.tensors[acc_name]
    acc = _to_model(acc_t.array, acc_t).astype(np.int64)
    if acc.shape != a_model.shape:
        return [f"off-by-one: all {n} differences are ±1 LSB"]
    axis = int(p.get("channel_axis", -1)) % acc.ndim
    zp = int(p.get("out_zero_point", 0))
    lo, hi = int(p.get("out_min", -(2 ** 63))), int(p.get("out_max", 2 ** 63 - 1))
    golden_mode = p.get("rq_rounding", "?")
    mode = p.get("rq_mode")
    idx = np.nonzero(differ_model)
    actual = a_model.astype(np.int64)
    cands, cands_at_diff = [], []
    if mode in ("fp32", "fp32_zp_in"):
        m = p.get("rq_multiplier")
        mv = gs.tensors[m["tensor"]].array if isinstance(m, dict) and m.get("tensor") in gs.tensors else \
            np.asarray(m["values"] if isinstance(m, dict) else m)
        mv = np.asarray(mv, np.float32).reshape(-1)
        shape = [1] * acc.ndim
        if mv.size > 1:
            shape[axis] = mv.size
        f = (acc.astype(np.float32) * mv.reshape(shape)).astype(np.float32)
        if mode == "fp32_zp_in":
            f = (f + np.float32(zp)).astype(np.float32)
        base = np.floor(f)
        frac = f - base
        ties = frac == np.float32(0.5)
        at_ties = int(np.count_nonzero(ties[idx]))
        for rm in ROUNDING_MODES:
            r = rounding.round_array(f, rm).astype(np.int64)
            q = np.clip(r + (0 if mode == "fp32_zp_in" else zp), lo, hi)
            if np.array_equal(q, actual):
                cands.append(rm)
            elif np.array_equal(q[idx], actual[idx]):
                cands_at_diff.append(rm)
    else:
        exact = _exact_prerounding(acc, entry, gs, axis)
        if exact is None:
            return [f"off-by-one: all {n} differences are ±1 LSB (rq_mode {mode})"]
        num, shift = exact
        at_ties = int(np.count_nonzero(_is_tie(num[idx], shift[idx])))
        if mode != "double_q31":
            for rm in ROUNDING_MODES:
                q = np.clip(_round_rational(num, shift, rm).astype(np.int64) + zp, lo, hi)
                if np.array_equal(q, actual):
                    cands.append(rm)
                elif np.array_equal(q[idx], actual[idx]):
                    cands_at_diff.append(rm)
    ups = int(np.count_nonzero(diff_vals > 0))
    downs = n - ups
    where = f"{ups} are +1 and {downs} are -1"
    if at_ties == n:
        msg = (f"rounding: all {n} differences are ±1 LSB and every one is at a tie (exactly x.5 "
               f"before rounding; {where}); the golden set rounds ties with {golden_mode}")
        if cands:
            msg += f"; the whole dumped tensor equals the requantization with rounding {' or '.join(cands)}"
        elif cands_at_diff:
            msg += f"; at the differing elements the dump rounds like {' or '.join(cands_at_diff)}"
        return [msg + ". This is a rounding-mode mismatch, not an arithmetic error."]
    msg = (f"off-by-one: all {n} differences are ±1 LSB ({where}) but only {at_ties} are at ties: "
           f"not (only) a tie-rounding difference")
    if cands:
        msg += (f"; the whole dumped tensor equals the requantization with rounding "
                f"{' or '.join(cands)} (golden: {golden_mode})")
    elif mode == "double_q31":
        msg += ("; double_q31 rounds twice (SRDHM, then a rounding shift): look for single instead of "
                "double rounding, the half-up (ruy) variant, or a different multiplier/shift")
    else:
        msg += "; check the multiplier/shift precision, double vs single rounding, or truncation"
    return [msg]


def _rounds(gs: GoldenSet, t: GoldenTensor) -> bool:
    """Is ``t`` the output of a step that rounds (requantization, quantize, pooling average)?"""
    entry = _layer_params(gs, t.layer)
    if t.name not in entry.get("outputs", []):
        return False
    p = entry.get("params", {})
    return (p.get("rq_mode") not in (None, "none")) or "rounding" in p or \
        entry.get("kind") in ("avgpool", "softmax", "add", "quantize")


def _word_bits(t: GoldenTensor, values: np.ndarray) -> np.ndarray | None:
    """The raw ``t.bits``-bit words of ``values`` (uint64): IEEE-754 bit patterns for floats,
    two's complement for integers. None when a value does not fit the tensor's width (then
    the words are not comparable bit for bit)."""
    if t.is_float:
        return np.ascontiguousarray(values, np.float32).view(np.uint32).astype(np.uint64)
    v = np.asarray(values).astype(np.int64)
    bits = int(t.bits)
    lo, hi = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if t.signed else (0, (1 << bits) - 1)) \
        if bits < 64 else (np.iinfo(np.int64).min, np.iinfo(np.int64).max)
    if v.size and (v.min() < lo or v.max() > hi):
        return None
    words = v.view(np.uint64)
    return words & np.uint64((1 << bits) - 1) if bits < 64 else words


def bit_flip_diagnosis(t: GoldenTensor, a: np.ndarray, differ: np.ndarray) -> str | None:
    """A message when every differing element differs from the golden one in exactly one bit
    (XOR a power of two): one element (a single-event upset), the same bit in many (a stuck or
    bridged data line), or one bit each. None otherwise."""
    g = t.array
    a = np.asarray(a).reshape(g.shape)
    mask = np.asarray(differ).reshape(g.shape)
    if not mask.any():
        return None
    gw, aw = _word_bits(t, g[mask]), _word_bits(t, a[mask])
    if gw is None or aw is None:
        return None
    x = gw ^ aw
    if np.any(x == 0) or np.any(x & (x - np.uint64(1))):
        return None
    bits = np.log2(x.astype(np.float64)).round().astype(np.int64)
    width = "IEEE-754 binary32" if t.is_float else f"{t.bits}-bit"
    n = int(x.size)
    if n == 1:
        coords = tuple(int(i) for i in np.argwhere(mask)[0])
        return (f"bit flip: element {_fmt_coords(coords, t.layout)} differs from the golden value in "
                f"exactly one bit, bit {int(bits[0])} of the {width} word (expected {g[mask][0].item()}, "
                f"got {a[mask][0].item()}); every other element matches: a single-event upset, or one "
                f"bad memory/bus bit")
    if np.all(bits == bits[0]):
        k = int(bits[0])
        got = (aw >> np.uint64(k)) & np.uint64(1)
        stuck = int(got[0]) if np.all(got == got[0]) else None
        msg = f"bit flip: the same bit {k} of the {width} word is flipped in all {n} differing elements"
        if stuck is not None:
            golden_all = _word_bits(t, g.reshape(-1))
            could = int(np.count_nonzero(((golden_all >> np.uint64(k)) & np.uint64(1)) != stuck)) \
                if golden_all is not None else -1
            msg += (f"; every one reads {stuck} there" + (
                f", and they are all {could} elements whose bit {k} should be {1 - stuck}: bit {k} "
                f"stuck at {stuck} (a data line or memory column)" if could == n else
                f" ({could - n} other element(s) whose bit {k} should be {1 - stuck} read correctly: an "
                f"intermittent or address-dependent fault on bit {k})"))
        return msg
    shown = ", ".join(str(b) for b in sorted(set(bits.tolist()))[:8])
    return (f"bit flips: each of the {n} differing elements differs in exactly one bit (bits {shown}"
            f"{' ...' if len(set(bits.tolist())) > 8 else ''}): scattered single-bit errors "
            f"(upsets or a marginal memory), not arithmetic")


def diagnose(gs: GoldenSet, t: GoldenTensor, a: np.ndarray, diff: np.ndarray, differ: np.ndarray,
             unknown: np.ndarray | None) -> list:
    out = []
    p = _layout_match(t, a)
    if p is not None:
        return [_layout_message(t, p)]
    if unknown is not None and unknown.any():
        out.append(f"unknown: {int(unknown.sum())} element(s) are x/z in the dump (never written, or "
                   f"uninitialized logic)")
    d = diff[differ if unknown is None else (differ & ~unknown)]
    if not d.size:
        return out
    flips = bit_flip_diagnosis(t, a, differ if unknown is None else (differ & ~unknown))
    if flips is not None and not np.all(np.abs(d) == 1):
        # a flip of bit 0 is also a +-1 difference: the rounding checks below then say more
        return out + [flips]
    if t.is_float:
        out.append(f"float values differ in {d.size} element(s), by up to {float(np.abs(d).max()):.3g} "
                   f"output LSB")
        return out
    if flips is not None and d.size == 1:
        out.append(flips)
    d = d.astype(np.int64)
    if np.all(np.abs(d) == 1) and unknown is None and not _rounds(gs, t):
        what = "an accumulator" if t.role == ROLE_ACC else f"a {t.role} tensor"
        out.append(f"off-by-one: all {d.size} differences are ±1 LSB in {what} of a step that does "
                   f"not round here ({_layer_params(gs, t.layer).get('kind', 'input')}): a counting error "
                   f"(bias, zero point, a missing or extra product, an edge/padding tap), not rounding")
        return out
    if np.all(np.abs(d) == 1) and unknown is None:
        a_model = _to_model(a.reshape(t.array.shape), t)
        differ_model = _to_model(differ, t)
        out.extend(_rounding_diagnosis(gs, t, a_model, differ_model, d))
        return out
    if d.size == t.array.size and np.all(d == d[0]):
        out.append(f"offset: every element is off by {int(d[0]):+d} LSB (a zero-point or bias error?)")
        return out
    if t.bits < 64:
        m = 1 << t.bits
        if np.all(d % m == 0):
            out.append(f"extension: every difference is a multiple of 2**{t.bits} = {m}: the dump's words "
                       f"are {t.bits}-bit values sign/zero-extended wrongly (golden is "
                       f"{'signed' if t.signed else 'unsigned'})")
            return out
    frac = d.size / t.array.size
    out.append(f"arithmetic: {d.size} of {t.array.size} element(s) ({100 * frac:.3g}%) differ by up to "
               f"{int(np.abs(d).max())} LSB: not a layout, rounding or offset pattern")
    return out


# --------------------------------------------------------------------------------------------
# The first bad layer: MAC or requantization, and what feeds the first bad element
# --------------------------------------------------------------------------------------------


def _param_array(gs: GoldenSet, params: dict, key: str, dtype=None) -> np.ndarray | None:
    """A step parameter of the manifest as an array: the golden tensor it names (exact dtype),
    else its inline values, else a scalar."""
    v = params.get(key)
    if v is None:
        return None
    if isinstance(v, dict):
        name = v.get("tensor")
        if name and name in gs.tensors:
            return gs.tensors[name].array.reshape(-1)
        if v.get("values") is None:
            return None
        v = v["values"]
    return np.asarray(v, dtype).reshape(-1)


def requantize_accumulator(gs: GoldenSet, entry: dict, acc_model: np.ndarray) -> np.ndarray | None:
    """The step's requantization of ``acc_model`` (model layout), with the golden set's own
    parameters, through the simulator's requantization kernel; None when the manifest does not
    hold what it needs."""
    from simulator.errors import SimulatorError
    from simulator.kernels.quant import requantize
    p = entry.get("params", {})
    mode = p.get("rq_mode")
    if mode in (None, "none") or "channel_axis" not in p or "out_dtype" not in p:
        return None
    mult = _param_array(gs, p, "rq_multiplier")
    if mult is not None and mode not in ("fp32", "fp32_zp_in"):
        mult = mult.astype(np.int64)
    elif mult is not None:
        mult = mult.astype(np.float32)
    shift = _param_array(gs, p, "rq_shift")
    try:
        out, _ = requantize(np.asarray(acc_model).astype(np.int64), rq_mode=mode,
                            rq_multiplier=mult if mult is not None else np.array([1], np.int64),
                            rq_shift=shift.astype(np.int64) if shift is not None else None,
                            rq_rounding=p.get("rq_rounding", "half_even"),
                            out_zero_point=int(p.get("out_zero_point", 0)), out_min=p.get("out_min"),
                            out_max=p.get("out_max"), out_dtype=p["out_dtype"],
                            channel_axis=int(p["channel_axis"]))
    except (SimulatorError, ValueError, TypeError, KeyError):
        return None
    return out


def _model_array(t: GoldenTensor, values: np.ndarray) -> np.ndarray:
    return _to_model(np.asarray(values).reshape(t.array.shape), t)


def mac_or_requant(gs: GoldenSet, layer_checks: list, actual: dict) -> list:
    """For a conv/gemm layer that differs: does the fault lie in the MAC array (the dumped
    accumulator already differs) or after it, in requantization (the accumulator matches, the
    output does not)? ``actual``: golden tensor name -> the dumped values."""
    if not layer_checks:
        return []
    entry = _layer_params(gs, layer_checks[0].layer)
    acc_name = entry.get("accumulator")
    if not acc_name or acc_name not in gs.tensors:
        return []
    outs = [o for o in entry.get("outputs", []) if o in gs.tensors]
    by_name = {c.name: c for c in layer_checks}
    acc_chk = by_name.get(acc_name)
    out_bad = [by_name[o] for o in outs if o in by_name and not by_name[o].ok]
    acc_t = gs.tensors[acc_name]
    if acc_chk is None:
        if out_bad:
            return [(f"MAC or requantization: the dump has no accumulator for {entry.get('name')!r}; dump "
                     f"{acc_t.file}.npy/.hex to tell a MAC fault from a requantization fault")]
        return []
    if acc_chk.ok and out_bad:
        msg = (f"requantization fault: the accumulator {acc_name!r} matches the golden set but the "
               f"output differs, so the MAC array is right and the fault is after it (multiplier, "
               f"shift, rounding, zero point or clamp)")
        return [msg]
    if acc_chk.status == "mismatch":
        msg = (f"MAC fault: the accumulator {acc_name!r} already differs ({acc_chk.n_diff} of "
               f"{acc_chk.n_elements} element(s)): products, bias, zero-point terms or the accumulation "
               f"(width, overflow, order), before requantization")
        out_t = gs.tensors[outs[0]] if outs else None
        if out_t is not None and outs[0] in actual and acc_name in actual:
            try:
                acc_dump = _model_array(acc_t, actual[acc_name]).astype(np.int64)
                out_dump = _model_array(out_t, actual[outs[0]]).astype(np.int64)
            except ValueError:
                return [msg]
            requant = requantize_accumulator(gs, entry, acc_dump)
            if requant is not None and requant.shape == out_dump.shape:
                if np.array_equal(requant.astype(np.int64), out_dump):
                    msg += ("; the dumped output is exactly the requantization of the dumped accumulator: "
                            "the requantization stage works, the output error all comes from the MAC")
                else:
                    k = int(np.count_nonzero(requant.astype(np.int64) != out_dump))
                    msg += (f"; the dumped output is not the requantization of the dumped accumulator either "
                            f"({k} element(s) differ from it): the requantization stage is wrong too")
        return [msg]
    return []


def _axis_coords(coords: tuple, letters: str | None) -> dict | None:
    if not letters or len(letters) != len(coords):
        return None
    return {a: int(c) for a, c in zip(letters, coords)}


def _span(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


def _window(o: int, stride: int, pad: int, dil: int, k: int, size: int) -> tuple[str, int]:
    """Input positions of output position ``o`` along one axis, clipped to ``[0, size)``, and
    how many of its ``k`` taps fall in the padding."""
    taps = [o * stride - pad + j * dil for j in range(k)]
    inside = [x for x in taps if 0 <= x < size]
    text = _span(min(inside), max(inside)) if inside else "(padding only)"
    if dil > 1 and len(inside) > 1:
        text += f" step {dil}"
    return text, len(taps) - len(inside)


def feeding_inputs(gs: GoldenSet, chk: TensorCheck, checks_by_name: dict) -> list:
    """The inputs that feed the first differing element of ``chk``: tensor names and
    coordinates (the receptive-field window of a conv or pooling, the row and column of a gemm,
    the same element of an elementwise op), and whether the dump of each matched."""
    entry = _layer_params(gs, chk.layer)
    if not entry or chk.first_index is None or chk.role not in (ROLE_ACC, ROLE_ACTIVATION, ROLE_OUTPUT):
        return []
    t = gs.tensors.get(chk.name)
    coords = chk.first_model_index if chk.first_model_index is not None else chk.first_index
    kind = entry.get("kind")
    p = entry.get("params", {})
    inputs = [i for i in entry.get("inputs", []) if i in gs.tensors]
    layout = str(p.get("layout", "NCHW"))
    out_ax = _axis_coords(coords, layout if len(coords) == 4 else ("NC" if len(coords) == 2 else None))

    def status(name):
        c = checks_by_name.get(name)
        if c is None:
            return "not in the dump"
        return "matches in the dump" if c.ok else "that tensor differs in the dump too"

    def model_shape(name):
        it = gs.tensors[name]
        return _to_model(it.array, it).shape

    lines = []
    if kind in ("conv", "maxpool", "avgpool") and out_ax is not None and len(coords) == 4 and inputs:
        x = inputs[0]
        shape = dict(zip(layout, model_shape(x)))
        if kind == "conv":
            w_name = f"{entry.get('name')}.weight"
            if w_name not in gs.tensors:
                return []
            o_ch, i_g, kh, kw = _to_model(gs.tensors[w_name].array, gs.tensors[w_name]).shape
            group = int(p.get("group", 1))
            g = out_ax["C"] // max(o_ch // group, 1)
            chans = _span(g * i_g, g * i_g + i_g - 1)
        else:
            kh, kw = (int(k) for k in p.get("kernel", (1, 1)))
            chans = str(out_ax["C"])
        sh, sw = (int(s) for s in p.get("strides", (1, 1)))
        pt, pl = (int(v) for v in list(p.get("pads", (0, 0, 0, 0)))[:2])
        dh, dw = (int(d) for d in p.get("dilations", (1, 1)))
        rows, pad_r = _window(out_ax["H"], sh, pt, dh, kh, shape["H"])
        cols, pad_c = _window(out_ax["W"], sw, pl, dw, kw, shape["W"])
        pad = f"; {kh}x{kw} window, {pad_r} row(s) and {pad_c} column(s) of it in the padding" \
            if pad_r or pad_c else f"; {kh}x{kw} window"
        lines.append(f"input {x!r}: n={out_ax['N']}, c={chans}, h={rows}, w={cols} in {layout}{pad} "
                     f"({status(x)})")
        if kind == "conv":
            oc = out_ax["C"]
            lines.append(f"weights {entry.get('name')}.weight[{oc}, :, :, :] (OIHW) "
                         f"({status(entry.get('name') + '.weight')})")
            if f"{entry.get('name')}.bias" in gs.tensors:
                lines.append(f"bias {entry.get('name')}.bias[{oc}] ({status(entry.get('name') + '.bias')})")
    elif kind == "gemm" and len(coords) == 2 and inputs:
        n, j = coords
        lines.append(f"input {inputs[0]!r}: row n={n}, every k ({status(inputs[0])})")
        lines.append(f"weights {entry.get('name')}.weight[:, {j}] (KN) ({status(entry.get('name') + '.weight')})")
        if f"{entry.get('name')}.bias" in gs.tensors:
            lines.append(f"bias {entry.get('name')}.bias[{j}] ({status(entry.get('name') + '.bias')})")
    elif kind == "global_avgpool" and out_ax is not None and inputs:
        lines.append(f"input {inputs[0]!r}: n={out_ax['N']}, c={out_ax['C']}, every h and w in {layout} "
                     f"({status(inputs[0])})")
    elif t is not None:
        # elementwise and data-movement kinds: the same element of each input of the same rank
        # (broadcast axes of size 1 at 0); other ranks are named without coordinates
        for x in inputs:
            shape = model_shape(x)
            if len(shape) == len(coords):
                at = tuple(int(c) if s > 1 else 0 for c, s in zip(coords, shape))
                lines.append(f"input {x!r}{list(at)} ({status(x)})")
            else:
                lines.append(f"input {x!r} ({status(x)})")
    return lines


# --------------------------------------------------------------------------------------------
# The whole dump
# --------------------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    golden_dir: str
    dump_dir: str
    model: str
    profile: str
    checks: list = field(default_factory=list)       # TensorCheck in layer order
    missing: list = field(default_factory=list)      # golden tensors without a dump file
    unrecognized: list = field(default_factory=list)  # dump files that match no golden tensor
    require_all: bool = False
    n_tensors: int = 0
    layer_diagnosis: list = field(default_factory=list)   # the first bad layer: MAC or requant
    fed_by: list = field(default_factory=list)            # inputs feeding the first bad element

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks) and not (self.require_all and self.missing)

    @property
    def first_mismatch(self) -> TensorCheck | None:
        bad = [c for c in self.checks if not c.ok]
        return min(bad, key=lambda c: c.layer_index) if bad else None

    def layer_rows(self) -> list:
        rows: dict = {}
        for c in self.checks:
            rows.setdefault((c.layer_index, c.layer), []).append(c)
        return [(i, name, cs) for (i, name), cs in sorted(rows.items())]

    def as_dict(self) -> dict:
        fm = self.first_mismatch
        return {"ok": self.ok, "golden_dir": self.golden_dir, "dump_dir": self.dump_dir,
                "model": self.model, "profile": self.profile,
                "first_mismatch": fm.as_dict() if fm else None,
                "layer_diagnosis": self.layer_diagnosis, "fed_by": self.fed_by,
                "checks": [c.as_dict() for c in self.checks],
                "missing": self.missing, "unrecognized": self.unrecognized}

    def format(self) -> str:
        lines = [(f"golden set {self.golden_dir} (model {self.model}, profile {self.profile}); "
                  f"dump {self.dump_dir}")]
        fmts = sorted({c.fmt for c in self.checks})
        checked = len({c.name for c in self.checks})
        lines.append(f"checked {len(self.checks)} file(s) ({', '.join(fmts) or 'none'}) covering "
                     f"{checked} of {self.n_tensors} golden tensors")
        fm = self.first_mismatch
        if fm is None and self.ok:
            lines.append("RESULT: MATCH - every checked tensor equals the golden set bit for bit")
        elif fm is None:
            lines.append("RESULT: FAIL - " + ("missing tensors (--require-all)" if self.missing else "nothing checked"))
        else:
            lines.append(f"RESULT: MISMATCH - first differing layer #{fm.layer_index} {fm.layer or '(inputs)'}"
                         f", tensor {fm.name!r} [{fm.role}] ({fm.path})")
            if fm.first_index is not None:
                lines.append(f"  first differing element: {fm.where()}")
                if fm.first_model_index is not None:
                    lines.append(f"    = {_fmt_coords(fm.first_model_index, fm.model_axes)} in the model's layout")
                lines.append(f"  expected {fm.expected}, got {fm.actual}")
                lines.append(f"  {fm.n_diff} of {fm.n_elements} element(s) differ; max |diff| "
                             f"{fm.max_abs_diff:g} LSB")
                lines.append(f"  histogram (LSB): {format_histogram(fm.histogram)}")
            for d in fm.diagnosis:
                lines.append(f"  diagnosis: {d}")
            for d in self.layer_diagnosis:
                lines.append(f"  diagnosis: {d}")
            if self.fed_by:
                lines.append("  the first differing element is computed from:")
                for d in self.fed_by:
                    lines.append(f"    {d}")
        lines.append("")
        lines.append("per layer (execution order):")
        first_layer = fm.layer_index if fm else None
        for i, name, cs in self.layer_rows():
            bad = [c for c in cs if not c.ok]
            label = f"#{i:<3d} {name or '(inputs)'}"
            if not bad:
                lines.append(f"  {label:<40} ok    ({len(cs)} file(s))")
                continue
            tag = "FIRST" if i == first_layer else ("downstream" if first_layer is not None and i > first_layer else "")
            lines.append(f"  {label:<40} DIFF  {tag}")
            for c in bad:
                what = "size mismatch" if c.status == "size" else f"{c.n_diff}/{c.n_elements} differ"
                lines.append(f"      {c.name} [{c.role}, {c.fmt}]: {what}; first at {c.where()}")
                if c.histogram:
                    lines.append(f"        histogram (LSB): {format_histogram(c.histogram)}")
                if i != first_layer:
                    for d in c.diagnosis[:1]:
                        lines.append(f"        {d}")
        if self.missing:
            shown = ", ".join(self.missing[:6]) + (" ..." if len(self.missing) > 6 else "")
            lines.append(f"not in the dump ({len(self.missing)} tensor(s), not checked): {shown}")
        if self.unrecognized:
            shown = ", ".join(os.path.basename(p) for p in self.unrecognized[:6])
            lines.append(f"dump files matching no golden tensor ({len(self.unrecognized)}): {shown}")
        return "\n".join(lines)


def _layer_index(gs: GoldenSet) -> dict:
    out = {"": 0}
    for entry in gs.layers():
        out[entry.get("name", "")] = int(entry.get("index", 0))
    return out


def verify_arrays(gs: GoldenSet, actual: dict, golden_dir: str = "", dump_dir: str = "",
                  require_all: bool = False) -> VerifyReport:
    """Check ``actual`` (golden tensor name -> ActualTensor or list of them) against ``gs``."""
    li = _layer_index(gs)
    report = VerifyReport(golden_dir=golden_dir, dump_dir=dump_dir, model=str(gs.manifest.get("model")),
                          profile=str(gs.manifest.get("profile")), require_all=require_all,
                          n_tensors=len(gs.tensors))
    for name, t in gs.tensors.items():
        got = actual.get(name)
        if got is None:
            report.missing.append(name)
            continue
        for a in (got if isinstance(got, list) else [got]):
            report.checks.append(compare_tensor(gs, t, a, li.get(t.layer, 0)))
    fm = report.first_mismatch
    if fm is not None and fm.status == "mismatch":
        layer_checks = [c for c in report.checks if c.layer == fm.layer]
        # one dump per tensor for the cross-checks (the first format read)
        values = {}
        for name, got in actual.items():
            first = got[0] if isinstance(got, list) else got
            if first.unknown is None and np.asarray(first.values).size == gs.tensors[name].array.size:
                values[name] = np.asarray(first.values)
        report.layer_diagnosis = mac_or_requant(gs, layer_checks, values)
        checks_by_name: dict = {}
        for c in report.checks:
            prev = checks_by_name.get(c.name)
            checks_by_name[c.name] = c if prev is None or prev.ok else prev
        # the first bad element of the layer's computed tensors (its accumulator or outputs),
        # not of a parameter, whose inputs are then named
        target = next((c for c in layer_checks if c.status == "mismatch"
                       and c.role in (ROLE_ACC, ROLE_ACTIVATION, ROLE_OUTPUT)), None)
        report.fed_by = feeding_inputs(gs, target, checks_by_name) if target is not None else []
    return report


def verify_dirs(golden_dir: str, dump_dir: str, require_all: bool = False) -> VerifyReport:
    gs = load_golden(golden_dir)
    pairs, unrecognized = find_dump_files(gs, dump_dir)
    if not pairs:
        raise MrqError(f"{dump_dir}: no .npy/.hex/.bin file is named after a tensor of the golden set "
                       f"(expected names like {next(iter(gs.tensors.values())).file}.hex)")
    actual: dict = {}
    for t, fmt, path in pairs:
        actual.setdefault(t.name, []).append(read_actual(path, fmt, t))
    report = verify_arrays(gs, actual, golden_dir, dump_dir, require_all)
    report.unrecognized = unrecognized
    return report
