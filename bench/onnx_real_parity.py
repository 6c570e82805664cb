"""Parity of `mrq sim --profile onnxruntime-cpu` with ONNX Runtime on real-architecture quantized
ONNX models (bench/torch_models.py, or any directory of quantized .onnx files): outputs **and**
intermediates, element by element.

    python bench/torch_models.py /tmp/real && python bench/onnx_real_parity.py /tmp/real
    python bench/onnx_real_parity.py tests/data/onnx_real -n 4

Intermediates: every integer tensor the model names (QuantizeLinear outputs in QDQ models, the
QLinear* outputs in QOperator ones) is added as an extra ORT graph output and compared with the
same tensor of mrq's traced run. (Exposing a tensor can stop ORT from fusing its producer; the
plain model's outputs are compared too, so a fusion difference shows up there.)

One row per model: the ONNX ops, output and intermediate mismatch counts, and what mrq refuses
(its one-line error) or what is exact only as far as tested (ORT runs ReduceMean in float32: mrq's
integer result may differ by one code where ORT's float sum lands near a rounding boundary).
LayerNormalization and ConvTranspose are float kernels in ORT too; mrq runs ORT's own float32
arithmetic for them (mrq/onnx_import_islands.py), so they are exact by construction.
Exit code 1 if any model mismatches or fails.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.parity.compare import diff_outputs, op_key
from tests.parity.ort_runner import run_ort

# ORT runs these in float32 in QDQ models (no integer kernel) and mrq in integers: the results
# can differ by one code; named in the table.
FLOAT_IN_ORT = {"ReduceMean"}


def random_feeds(model: onnx.ModelProto, seed: int, scale: float = 2.0) -> dict:
    rng = np.random.default_rng(seed)
    init = {t.name for t in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in init:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in i.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        if dtype.kind == "f":
            feeds[i.name] = (rng.standard_normal(shape) * scale).astype(dtype)
        else:
            info = np.iinfo(dtype)
            feeds[i.name] = rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
    return feeds


def integer_tensors(model: onnx.ModelProto) -> list:
    """Names of the integer activations a model computes (its Q / QLinear* outputs)."""
    outs = {o.name for o in model.graph.output}
    names = []
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" or n.op_type.startswith("QLinear") or \
                n.op_type in ("QGemm",):
            names += [o for o in n.output[:1] if o and o not in outs]
    return names


def with_outputs(model: onnx.ModelProto, names: list) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in names:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return m


def compare_model(path: Path, n_inputs: int, seed: int) -> dict:
    from mrq.api import simulate
    model = onnx.load(str(path))
    row = {"model": path.name, "ops": Counter(op_key(n) for n in model.graph.node),
           "out_elems": 0, "out_bad": 0, "mid_elems": 0, "mid_bad": 0, "mid_tensors": 0,
           "error": "", "worst": ""}
    mids = integer_tensors(model)
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "probe.onnx"
        onnx.save(with_outputs(model, mids), str(probe))
        for k in range(n_inputs):
            feeds = random_feeds(model, seed + k)
            ref = run_ort(path, feeds)
            try:
                sim = simulate(str(path), "onnxruntime-cpu", feeds, fidelity=False, trace=True)
            except Exception as exc:  # noqa: BLE001 - every failure is a row of the table
                row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
                return row
            for diff in diff_outputs(ref, sim.outputs):
                row["out_elems"] += diff.n_elements
                row["out_bad"] += diff.n_mismatch
                if diff.n_mismatch and not row["worst"]:
                    row["worst"] = f"output {diff.name}: {diff.n_mismatch}/{diff.n_elements}"
            ref_mid = run_ort(probe, feeds)
            traced = {name: sim.trace[name] for name in mids if name in sim.trace}
            row["mid_tensors"] = len(traced)
            for diff in diff_outputs({n: ref_mid[n] for n in traced}, traced):
                row["mid_elems"] += diff.n_elements
                row["mid_bad"] += diff.n_mismatch
                if diff.n_mismatch and not row["worst"]:
                    row["worst"] = f"tensor {diff.name}: {diff.n_mismatch}/{diff.n_elements}"
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("-n", "--inputs", type=int, default=2, help="random inputs per model")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args(argv)
    paths = sorted(p for p in Path(a.model_dir).glob("*.onnx") if ".float." not in p.name)
    if not paths:
        print(f"no quantized .onnx files in {a.model_dir}")
        return 1
    print(f"{'model':36s} {'outputs':>17s} {'intermediates':>23s}  notes")
    bad = 0
    tot = Counter()
    for path in paths:
        r = compare_model(path, a.inputs, a.seed)
        inexact = sorted(op for op in r["ops"] if op in FLOAT_IN_ORT)
        if r["error"]:
            bad += 1
            print(f"{r['model']:36s} {'-':>17s} {'-':>23s}  unsupported: {r['error']}")
            continue
        tot.update({k: r[k] for k in ("out_elems", "out_bad", "mid_elems", "mid_bad")})
        bad += bool(r["out_bad"] or r["mid_bad"])
        notes = []
        if r["worst"]:
            notes.append(r["worst"])
        if inexact:
            notes.append("float in ORT: " + ",".join(inexact))
        print(f"{r['model']:36s} {r['out_bad']:7d}/{r['out_elems']:<9d} "
              f"{r['mid_bad']:7d}/{r['mid_elems']:<9d}({r['mid_tensors']:3d})  {'; '.join(notes)}")
    print(f"\nTOTAL {len(paths)} models: outputs {tot['out_bad']}/{tot['out_elems']} mismatching, "
          f"intermediates {tot['mid_bad']}/{tot['mid_elems']}; {bad} models not exact or refused")
    print("ops used: " + ", ".join(sorted({op for p in paths for op in
                                           Counter(op_key(n) for n in onnx.load(str(p)).graph.node)})))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
