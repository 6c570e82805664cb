"""Bit-exactness of `mrq sim` against LiteRT on the zoo of third-party int8/int16 TFLite models.

For every ``.tflite`` under ``/work/shared/models/tflite_zoo/`` (and ``--extra DIR``), and each
TFLite profile (``tflite-int8`` vs LiteRT ``BUILTIN_REF``, ``litert-default`` vs the default
interpreter), the model is imported, lowered and simulated on ``--inputs`` inputs (half uniform
random codes over the input dtype, half codes within +-8 of the input zero point; float inputs get
normal noise), LiteRT runs the same inputs with ``experimental_preserve_all_tensors=True`` (one
invoke per row, variable tensors reset before each: every row is an independent sequence for the
LSTM/SVDF models, whose final recurrent states are compared too; run-time TRANSPOSE_CONV output
shapes are fed their declared values), and every tensor both have (outputs and every
intermediate) is compared element by element.

One row per model: ``exact``, ``N mismatches`` (over both profiles, with the worst tensor), or
``unsupported: reason`` (the one-line error mrq gives). A model with a CUSTOM op is simulated up to
that op (``stop_before``, as ``mrq sim --stop-before``) and marked ``(stopped before op K)``.

Usage: python bench/tflite_zoo_parity.py [--extra DIR] [--inputs 4] [--only SUBSTR] [--json out.json]
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "tflite"))

from tflite_helpers import compare_rows, litert, litert_run

ZOO = "/work/shared/models/tflite_zoo"
PROFILES = ("tflite-int8", "litert-default")


def zoo_models(extra=()) -> list:
    paths = sorted(glob.glob(os.path.join(ZOO, "**", "*.tflite"), recursive=True))
    for d in extra:
        paths += sorted(glob.glob(os.path.join(d, "**", "*.tflite"), recursive=True))
    return paths


def make_inputs(graph, n: int, seed: int = 0) -> dict:
    """``n`` inputs per graph input: the first half uniform over the dtype, the rest near the zero
    point (float inputs: normal noise)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        shape = (n,) + tuple(int(d) for d in t.shape[1:])
        if t.dtype == "float32":
            feeds[name] = (rng.standard_normal(shape) * 2.0).astype(np.float32)
            continue
        info = np.iinfo(np.dtype(t.dtype))
        x = rng.integers(int(info.min), int(info.max) + 1, size=shape)
        zp = int(t.qparams.zero_point[0]) if t.qparams is not None else 0
        half = n // 2
        x[half:] = np.clip(zp + rng.integers(-8, 9, size=(n - half,) + shape[1:]), info.min, info.max)
        feeds[name] = x.astype(t.dtype)
    return feeds


def stop_index(path: str):
    """The operator index of the first CUSTOM op, or None."""
    import tflite

    from mrq.tflite_import_shape import custom_operators
    with open(path, "rb") as f:
        found = custom_operators(tflite.Model.GetRootAsModel(f.read(), 0))
    return found[0][0] if found else None


def truncated_model(path: str, stop: int) -> bytes:
    """The model's flatbuffer with only its first ``stop`` operators, for LiteRT to run up to a
    CUSTOM op it cannot resolve (Coral's PosenetDecoderOp): the length of the subgraph's operator
    vector is rewritten (the later operators stay in the file, unreferenced; their output tensors
    are never computed)."""
    import struct

    import tflite
    with open(path, "rb") as f:
        data = bytearray(f.read())
    sub = tflite.Model.GetRootAsModel(bytes(data), 0).Subgraphs(0)
    field = sub._tab.Offset(10)                 # SubGraph.operators (field 3)
    length_at = sub._tab.Vector(field) - 4
    assert struct.unpack_from("<I", data, length_at)[0] == sub.OperatorsLength()
    struct.pack_into("<I", data, length_at, stop)
    return bytes(data)


def simulate(graph, profile: str, feeds: dict):
    from mrq.api import bind_inputs, resolve_profile
    from mrq.lower import arithmetic_from_profile, lower
    from simulator.run import run

    lowered = lower(graph, arithmetic_from_profile(resolve_profile(profile)))
    program, bound = bind_inputs(lowered, feeds)
    result = run(program, bound, trace=True)
    trace = dict(result.trace)
    trace.update(bound)
    return trace


def check_model(path: str, n_inputs: int) -> dict:
    from mrq.errors import MrqError
    from mrq.tflite_import import import_tflite
    from simulator.errors import SimulatorError

    row = {"model": os.path.relpath(path, ZOO) if path.startswith(ZOO) else path}
    stop = None
    try:
        stop = stop_index(path)
        graph = import_tflite(path, stop_before=stop) if stop is not None else import_tflite(path)
    except MrqError as err:
        row.update(status="unsupported", reason=str(err).splitlines()[0])
        return row
    feeds = make_inputs(graph, n_inputs)
    row.update(stopped_before=stop, profiles={})
    total_bad = 0
    for profile in PROFILES:
        t0 = time.perf_counter()
        try:
            trace = simulate(graph, profile, feeds)
        except MrqError as err:
            row.update(status="unsupported", reason=f"{profile}: {str(err).splitlines()[0]}")
            return row
        except SimulatorError as err:   # a bug to fix, reported in the table, not fatal to it
            row.update(status="simulator error", reason=f"{profile}: {str(err).splitlines()[0]}")
            return row
        t_sim = time.perf_counter() - t0
        fixed = graph.meta.get("tflite_fixed_inputs")
        try:
            try:
                rows = litert_run(path, feeds, profile, preserve_all=True, fixed=fixed)
            except RuntimeError:
                if stop is None:
                    raise
                # a custom op LiteRT cannot resolve either: run it the operators before that op
                # (the whole model where LiteRT can: its delegate partitions then end at the op)
                rows = litert_run(truncated_model(path, stop), feeds, profile, preserve_all=True,
                                  fixed=fixed)
        except Exception as err:  # noqa: BLE001 - LiteRT refuses the model: nothing to compare with
            row.update(status="litert error", reason=f"{profile}: {type(err).__name__}: {err}"[:200])
            return row
        # constants the program materialises (no batch dimension) are not activations
        batched = {k: v for k, v in trace.items() if np.ndim(v) and len(v) == n_inputs}
        counts = compare_rows(batched, rows)
        missing = [o for o in graph.outputs if o not in counts]
        bad = {k: v for k, v in counts.items() if v[0]}
        n_bad = sum(v[0] for v in counts.values())
        total_bad += n_bad
        row["profiles"][profile] = {
            "mismatches": n_bad, "elements": sum(v[1] for v in counts.values()), "tensors": len(counts),
            "outputs_not_compared": missing, "sim_seconds": round(t_sim, 2),
            "worst": max(bad.items(), key=lambda kv: kv[1][0])[0] if bad else None,
            "per_tensor_bad": {k: v for k, v in bad.items()}}
        if missing:
            row.update(status="not compared", reason=f"{profile}: outputs {missing} not in LiteRT's tensors")
            return row
    row["status"] = "exact" if total_bad == 0 else "mismatch"
    row["mismatches"] = total_bad
    return row


def describe(row) -> str:
    status = row["status"]
    stop = f" (stopped before op {row['stopped_before']})" if row.get("stopped_before") is not None else ""
    if status == "exact":
        tens = "/".join(str(row["profiles"][p]["tensors"]) for p in PROFILES)
        return f"exact ({tens} tensors){stop}"
    if status == "mismatch":
        parts = []
        for p in PROFILES:
            info = row["profiles"][p]
            if info["mismatches"]:
                parts.append(f"{p}: {info['mismatches']}/{info['elements']} worst {info['worst']!r}")
        return f"{row['mismatches']} mismatches{stop}; " + "; ".join(parts)
    return f"{status}: {row.get('reason', '')}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extra", action="append", default=[], help="another directory of .tflite models")
    ap.add_argument("--inputs", type=int, default=4, help="inputs per model (default 4)")
    ap.add_argument("--only", help="only models whose path contains this string")
    ap.add_argument("--json", help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    if litert() is None:
        print("ai_edge_litert is not installed", file=sys.stderr)
        return 2
    if args.inputs < 2:
        print("--inputs must be at least 2 (uniform and near-zero-point codes)", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    paths = [p for p in zoo_models(args.extra) if not args.only or args.only in p]
    if not paths:
        print(f"no .tflite models under {ZOO} {args.extra}", file=sys.stderr)
        return 2
    rows = []
    for path in paths:
        t0 = time.perf_counter()
        row = check_model(path, args.inputs)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"{row['model'][:70]:70s} {describe(row)}", flush=True)
    summary = {}
    for row in rows:
        key = row["status"] if row["status"] != "exact" or row.get("stopped_before") is None else "exact (stopped before a custom op)"
        summary[key] = summary.get(key, 0) + 1
    print(f"\n{len(rows)} models: " + ", ".join(f"{v} {k}" for k, v in sorted(summary.items())))
    if args.json:
        from mrq.fileio import save_json
        save_json(args.json, {"summary": summary, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
