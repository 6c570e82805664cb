"""Re-quantize every real TFLite zoo model that simulates to the NNA profiles, check the result
as `mrq check` does, and measure its output SQNR against the input model.

For every ``.tflite`` of ``bench/tflite_zoo_parity.py``'s zoo (its discovery is imported, not
copied): import (up to the first CUSTOM op, as ``mrq sim --stop-before``), simulate under
``tflite-int8`` (bit-exact with LiteRT's reference kernels: the reference here), then per profile
(default ``nna-sym8``, ``nna-sym8-pow2``, ``nna-w4a8``) run ``mrq requant``'s steps with the full
method: ``requantize`` on seeded synthetic calibration codes (Gaussian around the input zero point,
sigma = 1/8 of the code range: 32 codes for int8, as ``bench/tflite_requant_table.py``; float
inputs: N(0, 2)), write the ONNX QDQ file, read it back and check it (``mrq check``'s
``check_model``), then simulate the written model under its profile on held-out inputs (another
seed, plus the zoo's real inputs where it ships them, ``<model>.inputs.npz``) and report the
SQNR of each output vs the input model's dequantized output.

Integer LSTMs and SVDFs are unrolled into per-step ops the profile runs (pass
``unroll_recurrent``); their rows also give the SQNR of the recurrent state after the sequence
(final hidden and cell state, SVDF state buffer) vs the input model's, in memory.

Status per model and profile: ``ok`` (written, 0 violations), ``check`` (written, violations),
``refused`` (one-line user error of the profile, e.g. an op it does not support: not
applicable), ``error`` (anything else: a bug). With ``--extend-ops`` a refused model is re-run
with the profile's ``supported_ops`` extended by the model's ops (``<profile>+ops``): what the
re-quantizer does when the hardware runs those ops too.

Rows are written one file per model under ``--out`` (default ``/tmp/tflite_zoo_requant``), so
an interrupted run resumes (``--force`` recomputes); ``--jobs`` models run in parallel
processes. The table groups the tflite-micro SEANet integration models into one row per family
(min/median/max SQNR) and lists each of them that fails.

    python bench/tflite_zoo_requant.py [--jobs 2] [--models SUBSTR ...] [--limit N]
        [--profiles nna-sym8,nna-sym8-pow2,nna-w4a8] [--extend-ops] [--parity-json parity.json]
        [--markdown table.md]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, ROOT)

from tflite_zoo_parity import ZOO, stop_index, zoo_models

PROFILES = ("nna-sym8", "nna-sym8-pow2", "nna-w4a8")
REFERENCE = "tflite-int8"
SEANET = "tfmicro_seanet/"
# calibration/test samples are capped so that N * (elements of one input) stays below this
ELEMENT_BUDGET = 800_000


def tflite_ops(path: str) -> list:
    """The model's operators by TFLite name (CUSTOM ops by their custom code), in first-use order."""
    import tflite

    from mrq.tflite_import import _builtin_names
    names = _builtin_names()
    with open(path, "rb") as f:
        model = tflite.Model.GetRootAsModel(f.read(), 0)
    sub = model.Subgraphs(0)
    out = {}
    for i in range(sub.OperatorsLength()):
        code = model.OperatorCodes(sub.Operators(i).OpcodeIndex())
        b = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = names.get(b, str(b))
        if name == "CUSTOM":
            name = f"CUSTOM:{code.CustomCode().decode()}"
        out[name] = out.get(name, 0) + 1
    return [f"{k}x{v}" if v > 1 else k for k, v in out.items()]


def synthetic_inputs(graph, n: int, seed: int) -> dict:
    """``n`` codes per input, Gaussian around the zero point (sigma = code range / 8), clipped."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        shape = (n,) + tuple(int(d) for d in t.shape[1:])
        if t.dtype == "float32":
            grid = _quantize_grid(graph, name)
            if grid is None:
                feeds[name] = (rng.standard_normal(shape) * 2.0).astype(np.float32)
            else:   # uniform over the real range the model's own input quantization covers
                lo, hi = ((q - float(grid.zero_point[0])) * float(grid.scale[0]) for q in (grid.qmin, grid.qmax))
                feeds[name] = rng.uniform(lo, hi, shape).astype(np.float32)
            continue
        info = np.iinfo(np.dtype(t.dtype))
        zp = float(t.qparams.zero_point[0]) if t.qparams is not None else 0.0
        sigma = (float(info.max) - float(info.min) + 1) / 8
        feeds[name] = np.clip(np.rint(rng.normal(zp, sigma, shape)), info.min, info.max).astype(t.dtype)
    return feeds


def _quantize_grid(graph, name: str):
    """The grid of the Quantize that reads float input ``name``, or None."""
    for node in graph.consumers(name):
        if node.op == "Quantize":
            return graph.tensors[node.outputs[0]].qparams
    return None


def sample_count(graph, wanted: int) -> int:
    elements = max(int(np.prod([d for d in graph.tensors[n].shape[1:]])) for n in graph.inputs)
    return int(max(4, min(wanted, ELEMENT_BUDGET // max(elements, 1))))


def real_inputs(path: str, graph):
    """The zoo's real inputs for this model (``<stem>.inputs.npz``), when their names and shapes fit."""
    npz = os.path.splitext(path)[0] + ".inputs.npz"
    if not os.path.exists(npz):
        return None
    with np.load(npz, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if len(graph.inputs) == 1 and len(arrays) == 1:
        arrays = {graph.inputs[0]: next(iter(arrays.values()))}
    for name in graph.inputs:
        t = graph.tensors[name]
        a = arrays.get(name)
        if a is None or a.dtype != np.dtype(t.dtype) or tuple(a.shape[1:]) != tuple(t.shape[1:]):
            return None
    return arrays


def dequantized(graph, outputs: dict) -> dict:
    out = {}
    for name in graph.outputs:
        qp = graph.tensors[name].qparams
        y = outputs[name]
        out[name] = qp.dequantize(y) if qp is not None else np.asarray(y, np.float64)
    return out


def extended_profile(profile_name: str, graph, tmpdir: str) -> tuple:
    """``profile_name`` with the model's unsupported ops added to ``supported_ops``: (path, added)."""
    import yaml

    from mrq.hw_profile import KNOWN_OPS, load_profile
    from mrq.lower import IR_OP_NAMES
    prof = load_profile(profile_name)
    with open(prof.source) as f:
        data = yaml.safe_load(f)
    have = set(data["supported_ops"])
    added = []
    for node in graph.nodes:
        names = IR_OP_NAMES.get(node.op, {node.op})
        if names and not names & have:
            # any one name admits the IR op (a Take: every data movement); Slice reads best
            pick = sorted(names & set(KNOWN_OPS), key=lambda n: (n != "Slice", n))[:1] or [node.op]
            added += [op for op in pick if op not in added]
            have |= set(pick)
    data["supported_ops"] = list(data["supported_ops"]) + added
    data["name"] = f"{profile_name}-plus-ops"
    path = os.path.join(tmpdir, f"{data['name']}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path, added


def recurrent_states(graph) -> list:
    """The recurrent state tensors of the model's LSTM/SVDF nodes (their outputs after the first)."""
    return [n for node in graph.nodes if node.op in ("LSTM", "Svdf") for n in node.outputs[1:]]


def state_sqnr(graph, new, profile, test: dict, ref_states: dict) -> dict:
    """SQNR of each recurrent state after the sequence (LSTM: final h and c; SVDF: its state
    buffer) of the re-quantized model in memory (the ONNX round trip renames an SVDF state, a
    Reshape) vs the input model's: the precision the unrolled state keeps on the profile's grid."""
    from mrq.api import simulate
    from mrq.metrics import sqnr_db
    from mrq.passes.base import feeds_for_new_graph
    trace = simulate(new, profile, feeds_for_new_graph(graph, new, test), fidelity=False, trace=True).trace
    out = {}
    for name, ref in ref_states.items():
        t = new.tensors.get(name)
        if name in trace and t is not None and t.qparams is not None:
            out[name] = float(sqnr_db(ref, t.qparams.dequantize(trace[name]).reshape(ref.shape)))
    return out


def requant_one(graph, ref_out: dict, profile, calib: dict, test: dict, onnx_path: str,
                ref_states: dict | None = None) -> dict:
    """``mrq requant``'s steps on one model: re-quantize, write, read back, check, simulate."""
    import onnx

    from mrq.api import simulate
    from mrq.commands.check import check_model
    from mrq.metrics import sqnr_db
    from mrq.onnx_export import export_onnx
    from mrq.onnx_import import load_model
    from mrq.passes.base import Options, feeds_for_new_graph
    from mrq.requant import requantize

    t0 = time.perf_counter()
    new, _ = requantize(graph, profile, calib, Options())
    onnx.save(export_onnx(new), onnx_path)
    written = load_model(onnx_path)
    violations, _, _ = check_model(written, profile)
    sim = simulate(written, profile, feeds_for_new_graph(graph, written, test), fidelity=False)
    got = dequantized(written, sim.outputs)
    sqnr = {name: float(sqnr_db(ref_out[name], got[name].reshape(ref_out[name].shape)))
            for name in graph.outputs}
    result = {"status": "ok" if not violations else "check", "violations": violations[:5],
              "n_violations": len(violations), "sqnr_db": sqnr,
              "min_sqnr_db": min(sqnr.values()) if sqnr else None}
    if ref_states:
        states = state_sqnr(graph, new, profile, test, ref_states)
        result.update(state_sqnr_db=states, min_state_sqnr_db=min(states.values()) if states else None)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def run_model(path: str, profiles: list, n_calib: int, n_test: int, extend_ops: bool, tmpdir: str) -> dict:
    from mrq.api import simulate
    from mrq.errors import MrqError, UnsupportedOpError
    from mrq.tflite_import import import_tflite

    warnings.simplefilter("ignore")
    row = {"model": os.path.relpath(path, ZOO) if path.startswith(ZOO) else path, "profiles": {}}
    try:
        row["ops"] = tflite_ops(path)
        stop = stop_index(path)
        row["stopped_before"] = stop
        graph = import_tflite(path, stop_before=stop) if stop is not None else import_tflite(path)
        n_c, n_t = sample_count(graph, n_calib), sample_count(graph, n_test)
        calib = synthetic_inputs(graph, n_c, seed=1)
        test = synthetic_inputs(graph, n_t, seed=2)
        real = real_inputs(path, graph)
        if real is not None:
            test = {k: np.concatenate([test[k], real[k]]) for k in graph.inputs}
        row.update(calib=n_c, test=len(next(iter(test.values()))), real_test=real is not None)
        states = recurrent_states(graph)
        ref = simulate(graph, REFERENCE, test, fidelity=False, trace=bool(states))
        ref_out = dequantized(graph, ref.outputs)
        ref_states = {n: graph.tensors[n].qparams.dequantize(ref.trace[n]) for n in states if n in ref.trace}
    except MrqError as err:
        row.update(simulates=False, reason=str(err).splitlines()[0])
        return row
    row["simulates"] = True
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", row["model"])
    for profile in profiles:
        onnx_path = os.path.join(tmpdir, f"{stem}.{profile}.onnx")
        try:
            result = requant_one(graph, ref_out, profile, calib, test, onnx_path, ref_states)
        except UnsupportedOpError as err:
            result = {"status": "refused", "reason": str(err).splitlines()[0]}
            if extend_ops:
                ext, added = extended_profile(profile, graph, tmpdir)
                try:
                    result["plus_ops"] = dict(requant_one(graph, ref_out, ext, calib, test, onnx_path, ref_states),
                                              added=added)
                except MrqError as err2:
                    result["plus_ops"] = {"status": "refused", "reason": str(err2).splitlines()[0],
                                          "added": added}
                except Exception as err2:  # noqa: BLE001 - a crash is a bug to list, not fatal to the table
                    result["plus_ops"] = {"status": "error", "added": added,
                                          "reason": f"{type(err2).__name__}: {err2}"[:300]}
        except MrqError as err:
            result = {"status": "refused", "reason": str(err).splitlines()[0]}
        except Exception as err:  # noqa: BLE001 - a crash is a bug to list, not fatal to the table
            tb = traceback.extract_tb(err.__traceback__)[-1]
            result = {"status": "error", "reason": f"{type(err).__name__}: {err} "
                      f"({os.path.basename(tb.filename)}:{tb.lineno})"[:300]}
        finally:
            if os.path.exists(onnx_path):
                os.remove(onnx_path)
        row["profiles"][profile] = result
    return row


def _row_path(out_dir: str, model: str) -> str:
    return os.path.join(out_dir, "rows", re.sub(r"[^A-Za-z0-9_.-]", "_", model) + ".json")


def _worker(args):
    path, profiles, n_calib, n_test, extend_ops, out_dir = args
    import tempfile
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mrq_zoo_rq_") as tmp:
        row = run_model(path, profiles, n_calib, n_test, extend_ops, tmp)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    from mrq.fileio import save_json
    save_json(_row_path(out_dir, row["model"]), _finite(row))
    return row


def _finite(obj):
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else ("inf" if obj > 0 else "-inf" if obj < 0 else "nan")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------ the table
def _db(v) -> str:
    if isinstance(v, str):
        return v
    return "–" if v is None else f"{v:.1f}"


def refusal(result: dict) -> str:
    """A refusal in a few words: op, node, why."""
    m = re.match(r"unsupported op '([^']+)' at node '([^']+)': (.*)", result.get("reason", ""))
    if not m:
        return result.get("reason", "")[:60]
    why = m.group(3)
    why = ("not in supported_ops" if "does not support it" in why else
           "no ONNX QDQ form" if "ONNX QDQ" in why else why[:60])
    return f"{m.group(1)} at {m.group(2)}: {why}"


def cell(result: dict) -> str:
    if result is None:
        return "–"
    st = result["status"]
    if st == "ok":
        text = f"{_db(result['min_sqnr_db'])} dB"
        if result.get("min_state_sqnr_db") is not None:
            text += f" (recurrent states ≥ {_db(result['min_state_sqnr_db'])} dB)"
    elif st == "check":
        text = f"{_db(result['min_sqnr_db'])} dB, **{result['n_violations']} violation(s)**"
    elif st == "refused":
        text = f"n/a ({refusal(result)})"
        plus = result.get("plus_ops")
        if plus:
            text += f"; +{','.join(plus['added'])}: {cell(plus)}"
    else:
        text = f"**error**: {result.get('reason', '')[:80]}"
    return text


def parity_cell(parity: dict, model: str) -> str:
    row = parity.get(model)
    if row is None:
        return "–"
    if row["status"] == "exact":
        n = "/".join(str(row["profiles"][p]["tensors"]) for p in row["profiles"])
        return f"exact ({n} tensors)"
    if row["status"] == "mismatch":
        return f"{row['mismatches']} mismatches"
    return row["status"]


def _sqnr_of(result):
    if result is None:
        return None
    if result["status"] in ("ok", "check"):
        v = result["min_sqnr_db"]
        return float(v) if not isinstance(v, str) else float(v.replace("inf", "1e9"))
    plus = result.get("plus_ops")
    return _sqnr_of(plus) if plus else None


def seanet_family(model: str) -> str:
    stem = re.sub(r"\d+$", "", os.path.basename(model)[:-len(".tflite")])
    half = stem[:len(stem) // 2]
    return half if stem == f"{half}_{half}" else stem   # the zoo's names: <op>_<op><n>


def markdown(rows: list, profiles: list, parity: dict) -> str:
    head = ("| model | ops | parity vs LiteRT | " + " | ".join(profiles) + " |\n"
            "|---|---|---|" + "---|" * len(profiles))
    lines = [head]
    families: dict = {}
    for row in rows:
        if SEANET in row["model"]:
            families.setdefault(seanet_family(row["model"]), []).append(row)
            continue
        if not row.get("simulates"):
            lines.append(f"| {row['model']} | {', '.join(row.get('ops', []))} | "
                         f"{parity_cell(parity, row['model'])} | does not simulate: "
                         f"{row.get('reason', '')[:100]} |" + " |" * (len(profiles) - 1))
            continue
        stop = f" (up to op {row['stopped_before']})" if row.get("stopped_before") is not None else ""
        lines.append(f"| {row['model']}{stop} | {', '.join(row['ops'])} | {parity_cell(parity, row['model'])} | "
                     + " | ".join(cell(row["profiles"].get(p)) for p in profiles) + " |")
    for fam, members in sorted(families.items()):
        ops = sorted({op for r in members for op in r.get("ops", [])})
        exact = sum(1 for r in members if parity.get(r["model"], {}).get("status") == "exact")
        par = f"{exact}/{len(members)} exact" if parity else "–"
        cells = []
        for p in profiles:
            results = [r["profiles"].get(p) for r in members if r.get("simulates")]
            counts: dict = {}
            for res in results:
                st = res["status"] if res else "missing"
                if st == "refused" and res.get("plus_ops"):
                    st = f"n/a, +ops {res['plus_ops']['status']}"
                counts[st] = counts.get(st, 0) + 1
            vals = sorted(v for v in (_sqnr_of(res) for res in results) if v is not None)
            text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            if vals:
                text += f"; SQNR min/median/max {vals[0]:.1f}/{np.median(vals):.1f}/{vals[-1]:.1f} dB"
            bad = [os.path.basename(r["model"]) for r, res in zip(members, results)
                   if res and (res["status"] in ("error", "check")
                               or (res.get("plus_ops") or {}).get("status") in ("error", "check"))]
            if bad:
                text += f"; failing: {', '.join(bad[:6])}"
            if vals and len(members) > 1:
                worst = min((r for r, res in zip(members, results) if _sqnr_of(res) is not None),
                            key=lambda r: _sqnr_of(r["profiles"].get(p)))
                text += f" (min: {os.path.basename(worst['model'])})"
            refused = sorted({refusal(res) for res in results if res and res["status"] == "refused"})
            refused += sorted({"+ops: " + refusal(res["plus_ops"]) for res in results
                               if res and (res.get("plus_ops") or {}).get("status") == "refused"})
            if refused:
                text += f"; {'; '.join(refused[:3])}"
            cells.append(text)
        lines.append(f"| SEANet int16 `{fam}` ({len(members)} models) | {', '.join(ops)} | {par} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list, profiles: list) -> str:
    sim = [r for r in rows if r.get("simulates")]
    parts = [f"{len(rows)} models, {len(sim)} simulate"]
    for p in profiles:
        counts: dict = {}
        for r in sim:
            res = r["profiles"].get(p) or {"status": "missing"}
            counts[res["status"]] = counts.get(res["status"], 0) + 1
            plus = res.get("plus_ops")
            if plus:
                key = f"+ops {plus['status']}"
                counts[key] = counts.get(key, 0) + 1
        parts.append(f"{p}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--models", nargs="*", default=[], help="only models whose path contains one of these")
    ap.add_argument("--limit", type=int, help="only the first N models (after --models)")
    ap.add_argument("--calib", type=int, default=16, help="calibration samples (capped for large inputs)")
    ap.add_argument("--test", type=int, default=16, help="held-out test samples (capped for large inputs)")
    ap.add_argument("--jobs", type=int, default=1, help="models in parallel processes")
    ap.add_argument("--extend-ops", action="store_true",
                    help="re-run refused models with the profile's supported_ops extended by their ops")
    ap.add_argument("--out", default="/tmp/tflite_zoo_requant", help="row files (resumable) and results")
    ap.add_argument("--force", action="store_true", help="recompute rows that exist")
    ap.add_argument("--parity-json", help="tflite_zoo_parity.py --json output, for the parity column")
    ap.add_argument("--markdown", help="also write the table here")
    args = ap.parse_args(argv)
    profiles = [p for p in args.profiles.split(",") if p]
    paths = [p for p in zoo_models() if not args.models or any(m in p for m in args.models)]
    if args.limit:
        paths = paths[:args.limit]
    if not paths:
        print(f"no .tflite models under {ZOO} match", file=sys.stderr)
        return 2
    os.makedirs(os.path.join(args.out, "rows"), exist_ok=True)
    todo, rows = [], {}
    for p in paths:
        model = os.path.relpath(p, ZOO)
        rp = _row_path(args.out, model)
        if os.path.exists(rp) and not args.force:
            with open(rp) as f:
                row = json.load(f)
            if all(pr in row.get("profiles", {}) for pr in profiles) or not row.get("simulates", True):
                rows[p] = row
                continue
        todo.append(p)
    # the smallest models first: an interrupted run has the most rows (and resumes)
    todo.sort(key=os.path.getsize)
    jobs = [(p, profiles, args.calib, args.test, args.extend_ops, args.out) for p in todo]
    t0 = time.perf_counter()
    print(f"{len(rows)} rows reused, {len(todo)} to run", flush=True)

    def show(row):
        print(f"{row['model'][:64]:64s} {row.get('seconds', 0):6.1f}s " +
              (" | ".join(f"{p}: {cell(row['profiles'].get(p))}" for p in profiles) if row.get("simulates")
               else f"does not simulate: {row.get('reason', '')[:100]}"), flush=True)

    if args.jobs > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_worker, j): j[0] for j in jobs}
            for fut in as_completed(futures):
                row = fut.result()
                rows[futures[fut]] = row
                show(row)
    else:
        for j in jobs:
            row = _worker(j)
            rows[j[0]] = row
            show(row)
    ordered = [rows[p] for p in paths if p in rows]
    parity = {}
    if args.parity_json:
        with open(args.parity_json) as f:
            parity = {r["model"]: r for r in json.load(f)["rows"]}
    table = markdown(ordered, profiles, parity)
    text = summary(ordered, profiles)
    print(f"\n{table}\n\n{text}\n({time.perf_counter() - t0:.0f} s)")
    from mrq.fileio import save_json, save_text
    save_json(os.path.join(args.out, "tflite_zoo_requant.json"), _finite({"summary": text, "rows": ordered}))
    save_text(os.path.join(args.out, "tflite_zoo_requant.md"), table + "\n\n" + text + "\n")
    if args.markdown:
        save_text(args.markdown, table + "\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
