"""`mrq requant` on the real-architecture quantized ONNX models (bench/torch_models.py): for each
model and target profile, re-quantize with the full method and calibration data, check the written
file as `mrq check` does, load and run it in ONNX Runtime, and measure the output SQNR of the
re-quantized model against the input model on held-out inputs.

    python bench/torch_models.py /tmp/real && python bench/onnx_real_requant.py /tmp/real
    python bench/onnx_real_requant.py tests/data/onnx_real --profiles nna-sym8,nna-sym8-pow2 --host

Inputs: standard-normal float32 tensors (the distribution bench/torch_models.py calibrated the
models on), calibration seed --seed, held-out seed --seed + 1. A model that bakes its export-time
batch of 1 into a Reshape target (ORT's quantizer does, for MatMul over tokens; ONNX Runtime
refuses a larger batch on it too) is calibrated on its first calibration sample only and run one
sample at a time.

SQNR: the input model simulated under `onnxruntime-cpu` (bit-exact with ORT, see
bench/onnx_real_parity.py) is the reference; the re-quantized model is simulated under its
profile; both outputs dequantized; the row shows the lowest SQNR over the model's real-valued
outputs (ArgMax outputs: agreement of the indices, in the JSON). "ORT" is the same SQNR for ONNX
Runtime running the written file (not bit-exact under an NNA profile: ORT runs its own arithmetic).

``--host``: also the profile with every op of the model it does not support moved to the host
(``host_ops: {op: onnxruntime-cpu}``), written next to the JSON as ``<profile>-host.yaml``.
Columns: ops, parity vs ORT (mismatching output elements, the first --parity inputs), then per
profile the SQNR of the written file (as mrq reads it back) or the one-line refusal (the op and
node that the profile cannot run); "re-read differs" counts the output values where the model
`mrq requant` simulated before writing and the file read back disagree (none means the ONNX
export is exact for that model).
Writes --json and --md (a markdown table, one row per model).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from onnx_real_parity import compare_model

from tests.parity.compare import op_key
from tests.parity.ort_runner import make_session

# ops of the generated models an NNA profile may lack; the host variant moves those it lacks
HOST_CANDIDATES = ("ConvTranspose", "Mean", "Resize", "Slice", "Gather", "Split", "Logistic",
                   "LayerNormalization", "HardSwish", "HardSigmoid", "ArgMax", "Pad", "Gelu", "Tanh")
# ONNX ops that only say how codes are stored (not shown in the ops column)
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear"}


def model_ops(model: onnx.ModelProto) -> str:
    ops = Counter(op_key(n) for n in model.graph.node)
    return ", ".join(sorted(op for op in ops if op not in QUANT_OPS))


def normal_inputs(graph, count: int, seed: int) -> dict:
    """Standard-normal float inputs (integer inputs: uniform codes), batch ``count``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        shape = (count,) + tuple(1 if d is None else int(d) for d in t.shape[1:])
        if t.dtype == "float32":
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
        else:
            info = np.iinfo(np.dtype(t.dtype))
            feeds[name] = rng.integers(info.min, int(info.max) + 1, shape).astype(t.dtype)
    return feeds


def one_at_a_time(graph) -> bool:
    from mrq.onnx_import import BATCH_FIXED_KEY
    return bool(graph.meta.get(BATCH_FIXED_KEY))


def real_outputs(graph, outputs: dict) -> dict:
    """Outputs as real values (codes dequantized on their grid; index outputs as they are)."""
    out = {}
    for name, arr in outputs.items():
        qp = graph.tensors[name].qparams
        out[name] = qp.dequantize(np.asarray(arr)) if qp is not None else np.asarray(arr)
    return out


def run_mrq(graph, profile, feeds: dict, single: bool) -> dict:
    from mrq.api import Pipeline
    pipe = Pipeline(graph, profile, "nhwc")
    if not single:
        return real_outputs(graph, pipe.run(feeds).outputs)
    runs = [pipe.run({k: v[i:i + 1] for k, v in feeds.items()}).outputs
            for i in range(len(next(iter(feeds.values()))))]
    return real_outputs(graph, {k: np.concatenate([r[k] for r in runs]) for k in runs[0]})


def run_onnxruntime(path: Path, graph, feeds: dict) -> dict:
    """The written file in ONNX Runtime (CPU, as tests/parity runs it), a sample at a time."""
    sess = make_session(path)
    names = [o.name for o in sess.get_outputs()]
    n = len(next(iter(feeds.values())))
    runs = [dict(zip(names, sess.run(names, {k: v[i:i + 1] for k, v in feeds.items()}))) for i in range(n)]
    return real_outputs(graph, {k: np.concatenate([r[k] for r in runs]) for k in names})


def compare_outputs(ref: dict, got: dict) -> dict:
    from mrq.metrics import sqnr_db
    out = {}
    for name, r in ref.items():
        g = got[name]
        if r.dtype.kind in "iu" and g.dtype.kind in "iu":   # ArgMax indices
            out[name] = {"agreement": float(np.mean(r == g))}
        else:
            out[name] = {"sqnr_db": sqnr_db(np.asarray(r, np.float64), np.asarray(g, np.float64))}
    return out


def worst_sqnr(per_output: dict):
    values = [v["sqnr_db"] for v in per_output.values() if "sqnr_db" in v]
    return min(values) if values else None


def host_profile(profile_name: str, graph, out_dir: Path):
    """``profile_name`` with the ops of ``graph`` it lacks on the host (onnxruntime-cpu), or None
    when it lacks none."""
    import yaml

    from mrq.hw_profile import load_profile
    from mrq.lower import IR_OP_NAMES
    base = load_profile(profile_name)
    supported = set(base.supported_ops)
    lacking = set()
    for node in graph.nodes:
        names = IR_OP_NAMES.get(node.op, {node.op})
        if names and not names & supported:
            lacking |= names & set(HOST_CANDIDATES)
    if not lacking:
        return None
    doc = base.to_dict()
    doc["name"] = f"{profile_name}-host"
    doc["description"] = f"{profile_name} with {', '.join(sorted(lacking))} on the host (onnxruntime-cpu)"
    doc["host_ops"] = {op: "onnxruntime-cpu" for op in sorted(lacking)}
    tag = hashlib.sha1(",".join(sorted(lacking)).encode()).hexdigest()[:8]
    path = out_dir / f"{profile_name}-host.{tag}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_profile(str(path))


def requant_row(path: Path, graph, profile, calib: dict, held: dict, ref: dict, out_dir: Path) -> dict:
    """Re-quantize ``graph`` for ``profile`` as `mrq requant` does, then check, ORT and SQNR."""
    from mrq.commands.check import check_model
    from mrq.errors import MrqError
    from mrq.onnx_export import export_onnx
    from mrq.onnx_import import load_model
    from mrq.passes.base import Options, feeds_for_new_graph
    from mrq.requant import requantize
    row = {"profile": profile.name, "error": "", "violations": [], "ort_error": ""}
    single = one_at_a_time(graph)
    t0 = time.perf_counter()
    try:
        new, _ = requantize(graph, profile, {k: v[:1] for k, v in calib.items()} if single else calib,
                                 Options())
        written = out_dir / f"{path.stem}.{profile.name}.onnx"
        onnx.save(export_onnx(new), str(written))
        reread = load_model(str(written))
        row["violations"] = check_model(reread, profile)[0]
        row["seconds"] = round(time.perf_counter() - t0, 2)
        feeds = feeds_for_new_graph(graph, new, held)
        got = run_mrq(reread, profile, feeds, single)
        # what `mrq requant` simulated before writing, against the file as read back
        before = run_mrq(new, profile, feeds, single)
    except MrqError as exc:   # the one line `mrq requant` prints
        row["error"] = str(exc).splitlines()[0]
        return row
    except Exception as exc:  # noqa: BLE001 - an internal error is a row too (mrq requant: a traceback)
        row["error"] = f"internal error {type(exc).__name__}: {exc}".splitlines()[0][:200]
        return row
    row["round_trip_mismatch"] = sum(int(np.sum(before[k] != got[k])) for k in got)
    row["outputs"] = compare_outputs(ref, got)
    row["sqnr_db"] = worst_sqnr(row["outputs"])
    try:
        ort_out = run_onnxruntime(written, reread, feeds_for_new_graph(graph, new, held))
        row["ort_outputs"] = compare_outputs(ref, ort_out)
        row["ort_sqnr_db"] = worst_sqnr(row["ort_outputs"])
    except Exception as exc:  # noqa: BLE001 - an ORT failure is a row of the table
        row["ort_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return row


def cell(r: dict) -> str:
    if r is None:
        return "-"
    if r["error"]:
        return "refused: " + r["error"].replace("|", "/")[:110]
    text = "n/a" if r.get("sqnr_db") is None else f"{r['sqnr_db']:.1f} dB"
    if r.get("ort_sqnr_db") is not None:
        text += f" (ORT {r['ort_sqnr_db']:.1f})"
    if r["ort_error"]:
        text += " ORT fails"
    if r["violations"]:
        text += f", {len(r['violations'])} violation(s)"
    if r.get("round_trip_mismatch"):
        text += f", re-read differs in {r['round_trip_mismatch']} output values"
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--profiles", default="nna-sym8", help="comma-separated target profiles")
    ap.add_argument("--host", action="store_true", help="also each profile with the ops it lacks on the host")
    ap.add_argument("--calib", type=int, default=32, help="calibration samples (default 32)")
    ap.add_argument("--heldout", type=int, default=16, help="held-out samples for the SQNR (default 16)")
    ap.add_argument("--parity", type=int, default=2, help="inputs for the parity count vs ORT (default 2)")
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--only", help="comma-separated substrings of the model file names to run")
    ap.add_argument("--json", default="onnx_real_requant.json")
    ap.add_argument("--md", default="onnx_real_requant.md")
    ap.add_argument("--out-dir", help="where to write the re-quantized models (default: a temporary directory)")
    a = ap.parse_args(argv)
    from mrq.onnx_import import load_model
    paths = sorted(p for p in Path(a.model_dir).glob("*.onnx") if ".float." not in p.name
                   and (not a.only or any(s in p.name for s in a.only.split(","))))
    if not paths:
        print(f"no quantized .onnx files in {a.model_dir}")
        return 1
    profiles = a.profiles.split(",")
    tmp = tempfile.TemporaryDirectory()
    out_dir = Path(a.out_dir or tmp.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        model = onnx.load(str(path))
        par = compare_model(path, a.parity, a.seed)
        row = {"model": path.name, "ops": model_ops(model),
               "parity": {k: par[k] for k in ("out_bad", "out_elems", "mid_bad", "mid_elems", "error")},
               "requant": {}}
        graph = load_model(str(path))
        calib = normal_inputs(graph, a.calib, a.seed)
        held = normal_inputs(graph, a.heldout, a.seed + 1)
        ref = run_mrq(graph, "onnxruntime-cpu", held, one_at_a_time(graph))
        row["one_at_a_time"] = one_at_a_time(graph)
        for name in profiles:
            from mrq.hw_profile import load_profile
            row["requant"][name] = requant_row(path, graph, load_profile(name), calib, held, ref, out_dir)
            if a.host:
                hp = host_profile(name, graph, out_dir)
                row["requant"][name + "-host"] = None if hp is None else \
                    requant_row(path, graph, hp, calib, held, ref, out_dir)
        rows.append(row)
        print(f"{path.name:36s} parity {par['out_bad']}/{par['out_elems']}"
              + "".join(f" | {k}: {cell(v)}" for k, v in row["requant"].items()), flush=True)
    columns = [c for name in profiles for c in ([name, name + "-host"] if a.host else [name])]
    lines = ["| model | ops | parity vs ORT (mismatching outputs) | "
             + " | ".join(f"{c} SQNR" for c in columns) + " |",
             "|---" * (3 + len(columns)) + "|"]
    for r in rows:
        p = r["parity"]
        parity = f"refused: {p['error']}" if p["error"] else f"{p['out_bad']}/{p['out_elems']}"
        name = r["model"][:-5] + (" (batch 1)" if r["one_at_a_time"] else "")
        lines.append(f"| {name} | {r['ops']} | {parity} | "
                     + " | ".join(cell(r["requant"].get(c)) for c in columns) + " |")
    ok = {c: sum(1 for r in rows if r["requant"].get(c) and not r["requant"][c]["error"]
                 and not r["requant"][c]["violations"] and not r["requant"][c]["ort_error"]) for c in columns}
    summary = (f"{len(rows)} models; parity: {sum(1 for r in rows if not r['parity']['error'] and not r['parity']['out_bad'])} exact; "
               + "; ".join(f"{c}: {n} re-quantized, checked and run in ORT" for c, n in ok.items()))
    Path(a.md).write_text("\n".join(lines) + "\n\n" + summary + "\n")
    from mrq.commands.common import finite
    Path(a.json).write_text(json.dumps(finite({"args": vars(a), "rows": rows, "summary": summary}), indent=1))
    print("\n" + summary)
    print(f"wrote {a.md} and {a.json}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
