"""The work of a sweep on a worker: re-quantize one cell, then simulate one shard of a dataset
for every cell of a model, returning per-shard *sufficient statistics*.

A cell is (model, profile, method, dataset). Its row is a pure function of the statistics of its
shards, which add up exactly whatever the shard split and the order the shards finish in:
counts are integers, and power sums (for SQNR) are kept as exact integers, each per-sample
float64 sum of squares scaled by 2**1074 (:class:`ExactSum`), so a row computed from 10 shards
on 3 workers equals the row of one shard on one process to the last bit.

Everything here is plain data in, plain data out (the specs are frozen dataclasses, the
statistics JSON-able dicts), so Dask can ship it and the client can store it for resume.
This module does not import Dask."""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np

from mrq.compare import wilson_interval
from mrq.errors import MrqError

# float64 values are dyadic rationals with exponent >= -1074: scaled by 2**1074 they are
# integers, and integers add exactly
EXACT_SHIFT = 1074
_MANTISSA_BITS = 53
_LOW_BITS = 32


@dataclass(frozen=True)
class Method:
    """A re-quantization method: the switches of :class:`mrq.passes.base.Options`."""

    name: str
    weight_correction: bool = True
    error_folding: bool = True
    scale_selection: bool = True
    input_error_target: bool = True
    disabled: tuple = ()

    def options(self):
        from mrq.passes.base import Options
        return Options(**{k: getattr(self, k) for k in SWITCHES}, disabled=frozenset(self.disabled))

    @classmethod
    def from_options(cls, name: str, options) -> "Method":
        return cls(name, **{k: getattr(options, k) for k in SWITCHES}, disabled=tuple(sorted(options.disabled)))

    def as_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in SWITCHES}, "disabled": sorted(self.disabled)}


# the boolean switches of Options a sweep file can set per method
SWITCHES = ("weight_correction", "error_folding", "scale_selection", "input_error_target")


def _naive() -> Method:
    from mrq.requant import naive_options
    return Method.from_options("naive", naive_options())


# the two methods a sweep can name without defining them
BUILTIN_METHODS = {
    "naive": _naive(),
    "full": Method("full"),
}


@dataclass(frozen=True)
class Cell:
    """One row of the results table; ``key`` is the content hash the resume store is keyed by."""

    key: str
    model: str            # the name shown in the table
    model_path: str
    model_hash: str
    profile: str          # name or path as the sweep file gives it
    profile_hash: str
    method: Method
    dataset: str
    inputs: str
    labels: str | None
    calibration: str | None
    calibration_samples: int
    batch_size: int


@dataclass(frozen=True)
class Shard:
    """Samples [start, stop) of a dataset."""

    start: int
    stop: int


def shard_key(cell: Cell, shard: Shard) -> str:
    import hashlib
    return hashlib.sha256(f"{cell.key}:{shard.start}:{shard.stop}".encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Exact sums and the row's statistics
# --------------------------------------------------------------------------------------------


class ExactSum:
    """Adds finite non-negative float64 values exactly, as an integer in units of 2**-1074."""

    @staticmethod
    def of(values: np.ndarray) -> int:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size == 0:
            return 0
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ValueError("ExactSum takes finite non-negative values")
        frac, exp = np.frexp(v)
        mant = np.ldexp(frac, _MANTISSA_BITS).astype(np.int64)     # exact: 53-bit integers
        shift = exp.astype(np.int64) - _MANTISSA_BITS + EXACT_SHIFT
        # subnormals have frexp exponents below -1021; their mantissas then carry the rest
        low = shift < 0
        if np.any(low):
            mant[low] >>= -shift[low]
            shift[low] = 0
        hi, lo = mant >> _LOW_BITS, mant & ((1 << _LOW_BITS) - 1)
        total = 0
        # int64 sums of < 2**21 and < 2**32 values cannot overflow for fewer than 2**31 values
        for s in np.unique(shift):
            sel = shift == s
            total += (int(hi[sel].sum()) << int(s + _LOW_BITS)) + (int(lo[sel].sum()) << int(s))
        return total

    @staticmethod
    def ratio_db(signal: int, noise: int) -> float:
        """10 log10(signal / noise), from exact sums (Python's int division rounds correctly)."""
        if noise == 0:
            return math.inf
        if signal == 0:
            return -math.inf
        return 10.0 * math.log10(signal / noise)


def per_sample_power(x: np.ndarray) -> np.ndarray:
    """Sum of squares of each sample (leading axis) in float64."""
    x = np.asarray(x, dtype=np.float64)
    return np.square(x.reshape(x.shape[0], -1)).sum(axis=1)


def empty_stats() -> dict:
    return {"n": 0, "ranked": 0, "correct": 0, "agree": 0, "ref_correct": 0, "out_signal": 0, "out_noise": 0,
            "layers": {}, "acc_overflow": 0, "out_saturated": 0, "seconds": 0.0}


def merge(total: dict, part: dict) -> dict:
    """Add shard statistics ``part`` into ``total`` (in place; integer fields exactly)."""
    for k in ("n", "ranked", "correct", "agree", "ref_correct", "out_signal", "out_noise",
              "acc_overflow", "out_saturated"):
        total[k] += int(part[k])
    total["seconds"] += float(part["seconds"])
    for layer, (sig, noise) in part["layers"].items():
        s, n = total["layers"].get(layer, (0, 0))
        total["layers"][layer] = (s + int(sig), n + int(noise))
    return total


def to_json(stats: dict) -> dict:
    """Exact sums as decimal strings: JSON readers other than Python's lose big integers."""
    out = dict(stats)
    out["out_signal"], out["out_noise"] = str(stats["out_signal"]), str(stats["out_noise"])
    out["layers"] = {k: [str(s), str(n)] for k, (s, n) in stats["layers"].items()}
    return out


def from_json(data: dict) -> dict:
    out = dict(data)
    out["out_signal"], out["out_noise"] = int(data["out_signal"]), int(data["out_noise"])
    out["layers"] = {k: (int(s), int(n)) for k, (s, n) in data["layers"].items()}
    return out


def row_metrics(stats: dict, has_labels: bool) -> dict:
    """The numbers of a results row from a cell's reduced statistics. Agreement and accuracy
    need class scores (an output of two or more values per sample): else they are None."""
    n = stats["n"]
    ranked = stats["ranked"]
    has_classes = ranked > 0
    agree = stats["agree"] if has_classes else None
    low, high = wilson_interval(stats["agree"], ranked) if has_classes else (None, None)
    worst, worst_db = "", None
    for layer, (sig, noise) in stats["layers"].items():
        db = ExactSum.ratio_db(sig, noise)
        if worst_db is None or db < worst_db:
            worst, worst_db = layer, db
    return {
        "n_samples": n,
        "accuracy": stats["correct"] / ranked if has_labels and has_classes else None,
        "input_model_accuracy": stats["ref_correct"] / ranked if has_labels and has_classes else None,
        "agreement": agree / ranked if has_classes else None,
        "agreement_ci_low": low, "agreement_ci_high": high,
        "output_sqnr_db": ExactSum.ratio_db(stats["out_signal"], stats["out_noise"]) if n else None,
        "worst_layer": worst, "worst_layer_sqnr_db": worst_db,
        "acc_overflows": stats["acc_overflow"], "out_saturated": stats["out_saturated"],
        "simulate_seconds": stats["seconds"],
    }


# --------------------------------------------------------------------------------------------
# Worker-side caches: a worker runs many tasks of the same few models
# --------------------------------------------------------------------------------------------


class _Lru(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


_MODELS = _Lru(4)
_PIPELINES = _Lru(16)
_LABELS = _Lru(4)


def _model(path: str, digest: str):
    from mrq.onnx_import import load_model
    return _MODELS.get_or((path, digest), lambda: load_model(path))


def _labels(path: str, num_samples: int):
    from mrq.datasets import open_labels
    return _LABELS.get_or((path, num_samples), lambda: np.asarray(open_labels(path, num_samples)).reshape(-1))


@contextmanager
def _one_thread():
    """Numba's parallel kernels (the float reference, the simulator) on one thread for this
    task: the workers are the parallelism, and a worker per core each spawning a thread per
    core would oversubscribe the machine."""
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# --------------------------------------------------------------------------------------------
# The tasks
# --------------------------------------------------------------------------------------------


@dataclass
class Requantized:
    """A cell's re-quantized model, or why there is none (``error``)."""

    cell_key: str
    graph: object = None
    meta: dict | None = None
    error: str | None = None
    # the error is the input's (an MrqError: an unsupported op, a pass that cannot satisfy the
    # profile): the same content fails the same way, so the failure is stored like a result
    final: bool = False


def read_calibration(cell: Cell, graph) -> dict | None:
    """The first ``calibration_samples`` of the cell's calibration set (read lazily)."""
    if not cell.calibration:
        return None
    from mrq.datasets import read_calibration as first_samples
    return first_samples(cell.calibration, graph.inputs, cell.calibration_samples).arrays


def files_digest(paths) -> str:
    """The content hash of files (with their names, so a renamed shard is another data set)."""
    import hashlib
    import os
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.basename(p).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def profile_digest(profile) -> str:
    """The content hash of a validated profile with every default filled in (comments and
    spelling do not change it)."""
    import hashlib
    import json
    return hashlib.sha256(json.dumps(profile.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


class WorkerMismatch(RuntimeError):
    """The worker's copy of an input is not the client's. Not stored as the cell's result: a
    run with consistent workers computes the cell."""


def _check_same_files(cell: Cell, profile) -> None:
    """A worker on another machine may see another file under the same path, or another
    profile under the same name (its own MRQ_PROFILE_PATH): its rows would carry the client's
    hashes for different content."""
    if profile_digest(profile) != cell.profile_hash:
        raise WorkerMismatch(f"profile {cell.profile!r} on this worker differs from the client's "
                       f"(another MRQ_PROFILE_PATH or profile directory?)")
    if files_digest([cell.model_path]) != cell.model_hash:
        raise WorkerMismatch(f"{cell.model_path} on this worker differs from the client's file")


def requantize_cell(cell: Cell) -> Requantized:
    """Re-quantize the cell's model to its profile with its method. A failure (unsupported op,
    a pass error, anything) is returned, not raised, so the sweep records it and goes on and
    Dask does not retry a deterministic error."""
    from mrq.compare import weight_bytes
    from mrq.pipeline import profile_violations, resolve_profile
    from mrq.requant import requantize
    try:
        profile = resolve_profile(cell.profile)
        _check_same_files(cell, profile)
        graph = _model(cell.model_path, cell.model_hash)
        t0 = time.perf_counter()
        with _one_thread():
            new, report = requantize(graph, profile, read_calibration(cell, graph), cell.method.options())
        seconds = time.perf_counter() - t0
        violations = profile_violations(new, profile)
        meta = {"requant_seconds": seconds,
                "bias_saturations": int(sum(report.bias_saturated.values())),
                "weight_bytes": int(weight_bytes(new, None if violations else profile)),
                "violations": len(violations)}
        return Requantized(cell.key, new, meta)
    except MrqError as exc:
        return Requantized(cell.key, error=_one_line(exc), final=True)
    except Exception as exc:   # noqa: BLE001  (recorded in the cell's row; the sweep goes on)
        return Requantized(cell.key, error=_one_line(exc))


def requant_meta(result: Requantized) -> Requantized:
    """The result without its graph: what the client stores (the graph stays on the workers)."""
    return Requantized(result.cell_key, None, result.meta, result.error, result.final)


def _top1(x: np.ndarray) -> np.ndarray | None:
    x = np.asarray(x)
    if x.ndim < 2 or x[0].size < 2:
        return None
    return np.argmax(x.reshape(x.shape[0], -1), axis=1)


def _real(graph, name: str, values: np.ndarray) -> np.ndarray:
    t = graph.tensors.get(name)
    values = np.asarray(values)
    if values.dtype.kind in "iu" and t is not None and t.qparams is not None:
        return t.qparams.dequantize(values)
    return values.astype(np.float64)


def run_shard(cells: list, requantized: list, shard: Shard) -> dict:
    """Simulate samples [start, stop) for every cell of one model and dataset.

    The float reference of the input model is computed once per batch and shared by the cells.
    Returns ``{cell key: stats dict}`` (JSON-able with :func:`to_json`) or ``{cell key:
    {"error": line}}`` for a cell whose re-quantization or simulation failed."""
    from mrq.datasets import open_inputs

    first = cells[0]
    graph = _model(first.model_path, first.model_hash)
    with open_inputs(first.inputs) as source, _one_thread():
        return _run_shard(cells, requantized, shard, graph, source.bound_to(graph.inputs))


def _run_shard(cells, requantized, shard, graph, source) -> dict:
    from mrq.float_ref import FloatReference
    from mrq.pipeline import Pipeline

    first = cells[0]
    labels = _labels(first.labels, source.num_samples) if first.labels else None
    out: dict = {}
    live = []
    for cell, rq in zip(cells, requantized):
        if rq.error is not None:
            out[cell.key] = {"error": rq.error}
            continue
        try:
            pipe = _PIPELINES.get_or(cell.key, partial(Pipeline, rq.graph, cell.profile, layout="native"))
            live.append((cell, rq.graph, pipe, empty_stats()))
        except Exception as exc:   # noqa: BLE001  (the cell's error; the other cells go on)
            out[cell.key] = {"error": _one_line(exc)}
    out0 = graph.outputs[0]
    reference = FloatReference(graph)
    start = shard.start
    for feeds in source.batches(first.batch_size, shard.start, shard.stop):
        arrays = {k: np.asarray(v) for k, v in feeds.items()}
        count = int(next(iter(arrays.values())).shape[0])
        ref = reference.run(arrays)
        ref_out = np.asarray(ref[out0], dtype=np.float64)
        ref_top = _top1(ref_out)
        lab = labels[start:start + count] if labels is not None else None
        for cell, g, pipe, stats in live:
            if cell.key in out:      # failed on an earlier batch
                continue
            try:
                _add_batch(stats, g, pipe, arrays, ref, ref_out, ref_top, lab, count)
            except Exception as exc:   # noqa: BLE001  (the cell's error; the other cells go on)
                out[cell.key] = {"error": _one_line(exc)}
        start += count
    for cell, _, _, stats in live:
        out.setdefault(cell.key, stats)
    return out


def _add_batch(stats, g, pipe, arrays, ref, ref_out, ref_top, labels, count) -> None:
    t0 = time.perf_counter()
    result = pipe.run(arrays, trace=True, threads=1)
    sim_out = _real(g, g.outputs[0], result.outputs[g.outputs[0]])
    if sim_out.shape != ref_out.shape:
        raise ValueError(f"output shape {sim_out.shape} differs from the input model's {ref_out.shape}")
    stats["n"] += count
    stats["out_signal"] += ExactSum.of(per_sample_power(ref_out))
    stats["out_noise"] += ExactSum.of(per_sample_power(ref_out - sim_out))
    sim_top = _top1(sim_out)
    if sim_top is not None and ref_top is not None:
        stats["ranked"] += count
        stats["agree"] += int(np.count_nonzero(sim_top == ref_top))
        if labels is not None:
            stats["correct"] += int(np.count_nonzero(sim_top == labels))
            stats["ref_correct"] += int(np.count_nonzero(ref_top == labels))
    for st in result.stats.values():
        stats["acc_overflow"] += int(st.get("acc_overflow", 0))
        stats["out_saturated"] += int(st.get("out_saturated", 0))
    own_ref = None
    for node in g.nodes:
        name = node.outputs[0]
        t = g.tensors.get(name)
        if t is None or t.qparams is None or name not in result.trace:
            continue
        codes = np.asarray(result.trace[name])
        r = ref.get(name)
        if r is None or np.shape(r) != codes.shape:
            # a tensor the re-quantizer added or reshaped: its own model's reference
            if own_ref is None:
                from mrq.float_ref import FloatReference
                own_ref = FloatReference(g).run(arrays)
            r = own_ref.get(name)
            if r is None or np.shape(r) != codes.shape:
                continue
        r = np.asarray(r, dtype=np.float64)
        sig, noise = stats["layers"].get(node.name, (0, 0))
        stats["layers"][node.name] = (
            sig + ExactSum.of(per_sample_power(r)),
            noise + ExactSum.of(per_sample_power(r - t.qparams.dequantize(codes))))
    stats["seconds"] += time.perf_counter() - t0
