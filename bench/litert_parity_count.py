"""Bit-exactness of `mrq sim` against LiteRT on the MLPerf Tiny int8 models.

For each model (AD01 auto-encoder, KWS DS-CNN, ResNet-8) and each TFLite profile:

* ``tflite-int8``    vs LiteRT ``OpResolverType.BUILTIN_REF`` (reference kernels);
* ``litert-default`` vs LiteRT's default interpreter (``AUTO``: XNNPACK delegate on x86);

the simulator runs the whole batch at once, LiteRT runs one input at a time with
``experimental_preserve_all_tensors=True``, and every tensor both have (the graph output and
every intermediate) is compared element by element. For ``litert-default`` the outputs are also
compared with the default interpreter *without* preserve_all_tensors (XNNPACK fuses the whole
partition then). Inputs: ``--random`` random int8 tensors per model, plus for AD01 every window of
the real features file (196 windows, quantized as TFLite's QUANTIZE would).

The simulation is exactly what ``mrq sim`` runs (``mrq.api`` lowering).

Usage: python bench/litert_parity_count.py [--random 100] [--models ad01,kws,resnet8]
       [--json out.json] [--per-tensor]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "tflite"))

from tflite_helpers import (MLPERF, ad01_windows, compare_rows, litert, litert_run,  # noqa: E402
                            model_path, quantize_tflite)

PROFILES = ("tflite-int8", "litert-default")


def _inputs(graph, key, n_random, seed=0):
    name = graph.inputs[0]
    t = graph.tensors[name]
    rng = np.random.default_rng(seed)
    sets = {"random": rng.integers(-128, 128, size=(n_random,) + tuple(t.shape[1:])).astype(np.int8)}
    if key == "ad01":
        qp = t.qparams
        sets["ad01_real"] = quantize_tflite(ad01_windows(), float(qp.scale[0]), int(qp.zero_point[0]))
    return name, sets


def _simulate(graph, profile, name, x):
    from mrq.api import bind_inputs, resolve_profile
    from mrq.lower import arithmetic_from_profile, lower
    from simulator.run import run

    lowered = lower(graph, arithmetic_from_profile(resolve_profile(profile)))
    program, bound = bind_inputs(lowered, {name: x})
    result = run(program, bound, trace=True)
    trace = dict(result.trace)
    trace.update(bound)
    return result.outputs, trace


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--random", type=int, default=100, help="random inputs per model (default 100)")
    ap.add_argument("--models", default=",".join(MLPERF), help="comma-separated subset of " + ",".join(MLPERF))
    ap.add_argument("--json", help="write the counts to this JSON file")
    ap.add_argument("--per-tensor", action="store_true", help="print every tensor's count")
    args = ap.parse_args(argv)
    if litert() is None:
        print("ai_edge_litert is not installed", file=sys.stderr)
        return 2
    from mrq.tflite_import import import_tflite

    warnings.simplefilter("ignore")
    report = {"rows": []}
    header = (f"{'model':8s} {'inputs':10s} {'n':>4s} {'profile':15s} "
              f"{'out mism/elems':>16s} {'intermediate mism/elems':>24s} {'tensors':>7s} "
              f"{'fused out mism':>14s}")
    print(header)
    print("-" * len(header))
    for key in args.models.split(","):
        path = model_path(key)
        graph = import_tflite(path)
        name, sets = _inputs(graph, key, args.random)
        out_name = graph.outputs[0]
        for set_name, x in sets.items():
            ref_vs_default = None
            lit = {}
            for profile in PROFILES:
                t0 = time.perf_counter()
                rows = litert_run(path, {name: x}, profile, preserve_all=True)
                fused = litert_run(path, {name: x}, profile, preserve_all=False)
                lit[profile] = np.concatenate([r[out_name] for r in rows])
                t_lit = time.perf_counter() - t0
                fused_out = np.concatenate([r[out_name] for r in fused])
                t0 = time.perf_counter()
                outputs, trace = _simulate(graph, profile, name, x)
                t_sim = time.perf_counter() - t0
                counts = compare_rows(trace, rows)
                out_bad, out_n = counts.get(out_name, [None, 0])
                inter = {k: v for k, v in counts.items() if k != out_name and k != name}
                ib = sum(v[0] for v in inter.values())
                ie = sum(v[1] for v in inter.values())
                fused_bad = int(np.count_nonzero(outputs[out_name].reshape(fused_out.shape) != fused_out))
                print(f"{key:8s} {set_name:10s} {len(x):4d} {profile:15s} "
                      f"{f'{out_bad}/{out_n}':>16s} {f'{ib}/{ie}':>24s} {len(inter) + 1:7d} "
                      f"{fused_bad:14d}   (LiteRT {t_lit:.1f}s, sim {t_sim:.1f}s)")
                if args.per_tensor:
                    for tname, (b, n) in sorted(counts.items()):
                        print(f"      {b:6d}/{n:<8d} {tname}")
                report["rows"].append(dict(
                    model=key, inputs=set_name, n=len(x), profile=profile,
                    output_mismatches=out_bad, output_elements=out_n,
                    intermediate_mismatches=ib, intermediate_elements=ie,
                    tensors_compared=len(inter) + 1, fused_output_mismatches=fused_bad,
                    per_tensor={k: v for k, v in counts.items()}))
            ref_vs_default = int(np.count_nonzero(lit["tflite-int8"] != lit["litert-default"]))
            rows_differ = int(np.count_nonzero((lit["tflite-int8"] != lit["litert-default"])
                                               .reshape(len(x), -1).any(axis=1)))
            print(f"{key:8s} {set_name:10s} LiteRT BUILTIN_REF vs default: {ref_vs_default} output "
                  f"elements differ ({rows_differ} of {len(x)} inputs)")
            report["rows"].append(dict(model=key, inputs=set_name, n=len(x),
                                       ref_vs_default_output_mismatches=ref_vs_default,
                                       ref_vs_default_inputs_differing=rows_differ))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
