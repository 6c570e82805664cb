"""ONNX Runtime parity count: generate N random quantized CNNs (tests/parity/zoo.py), run each on
random inputs with ONNX Runtime (CPU EP, default optimizations, session.qdqisint8allowed=1, one
thread) and with `mrq sim --profile P`, P this host's ORT profile (onnxruntime-cpu on AVX-512
VNNI hosts, onnxruntime-cpu-avx2 on AVX2 hosts; --profile to choose), and count mismatching
output elements.

    python bench/ort_parity_count.py                # 150 models, in-process mrq.api
    python bench/ort_parity_count.py --cli          # every model through the `mrq sim` CLI
    python bench/ort_parity_count.py --inventory    # also: ORT's optimized-graph op inventory
    python bench/ort_parity_count.py --no-mrq       # ORT side only (zoo + inventory)

Prints one row per quantization config and the grand total; exit code 1 if anything mismatched
or failed. The numbers in the issue note come from this script.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.parity import compare, zoo  # noqa: E402
from tests.parity.ort_runner import op_inventory, optimized_graph, run_ort  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--count", type=int, default=150)
    ap.add_argument("--seed", type=int, default=20261126)
    ap.add_argument("--inputs-per-model", type=int, default=2)
    ap.add_argument("--out-dir", help="where to put the models (default: a temp dir)")
    ap.add_argument("-j", "--processes", type=int, default=1, help="for model generation")
    ap.add_argument("--cli", action="store_true", help="run mrq through the CLI subprocess")
    ap.add_argument("--no-mrq", action="store_true", help="ORT side only")
    ap.add_argument("--profile", default=compare.PROFILE,
                    help=f"the profile mrq simulates under (default: this host's, {compare.PROFILE})")
    ap.add_argument("--inventory", action="store_true", help="print ORT optimized-graph ops")
    ap.add_argument("-v", "--verbose", action="store_true", help="details for every failure")
    a = ap.parse_args(argv)
    compare.PROFILE = a.profile   # simulate_api and simulate_cli read it

    tmp = None
    if a.out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mrq_ort_zoo_")
        a.out_dir = tmp.name
    t0 = time.perf_counter()
    cases = zoo.generate(a.out_dir, a.count, a.seed, a.processes)
    t_gen = time.perf_counter() - t0
    n_rej = sum(len(c.rejected) for c in cases)
    print(f"zoo: {len(cases)} models, {len({c.config for c in cases})} configs, generated in "
          f"{t_gen:.1f} s ({n_rej} candidate architectures rejected for inexact float ops)")

    use_mrq = not a.no_mrq
    if use_mrq and not compare.api_available() and not a.cli:
        print("mrq/api.py does not exist yet: ORT side only")
        use_mrq = False
    sim = (lambda p, f: compare.simulate_cli(p, f)) if a.cli else compare.simulate_api

    rows = defaultdict(Counter)  # config key -> counters
    inv_ops = defaultdict(Counter)  # (format, act) -> op counter
    inv_float = defaultdict(Counter)  # config group -> float-op contexts
    failures = []
    t_ort = t_mrq = 0.0
    opt_dir = Path(a.out_dir) / "_optimized"
    opt_dir.mkdir(exist_ok=True)
    for c in cases:
        r = rows[c.config.key]
        r["models"] += 1
        if a.inventory:
            g = optimized_graph(c.path, opt_dir / c.path.name)
            cf = c.config
            grp = (f"{cf.quant_format:9s} act={'u8' if cf.activation_type == 'QUInt8' else 's8'} "
                   f"actsym={int(cf.activation_symmetric)}")
            inv_ops[grp].update(op_inventory(g))
            inv_float[grp].update(compare.float_op_contexts(g))
        model_bad = 0
        for k in range(a.inputs_per_model):
            feeds = c.make_inputs(k)
            t = time.perf_counter()
            ref = run_ort(c.path, feeds)
            t_ort += time.perf_counter() - t
            r["elements"] += sum(v.size for v in ref.values())
            if not use_mrq:
                continue
            t = time.perf_counter()
            try:
                got = sim(c.path, feeds)
            except Exception as e:  # noqa: BLE001 - every failure is a data point here
                n = sum(v.size for v in ref.values())
                r["errors"] += 1
                r["mismatch"] += n
                model_bad += n
                failures.append((c, k, f"{type(e).__name__}: {e}",
                                 traceback.format_exc() if a.verbose else ""))
                continue
            finally:
                t_mrq += time.perf_counter() - t
            for d in compare.diff_outputs(ref, got):
                r["mismatch"] += d.n_mismatch
                r["bit_only_mismatch"] += d.n_bit_mismatch
                model_bad += d.n_mismatch
                if d.n_mismatch or d.problem:
                    failures.append((c, k, f"output {d.name}: {d.n_mismatch}/{d.n_elements} "
                                     f"mismatch {d.problem} first: {d.examples[:4]}", ""))
        r["models_mismatching"] += int(model_bad > 0)

    hdr = f"{'config':32s} {'models':>6s} {'elements':>9s} {'mismatch':>9s} {'bad models':>10s} {'errors':>6s}"
    print()
    print(hdr)
    print("-" * len(hdr))
    tot = Counter()
    for key in sorted(rows):
        r = rows[key]
        tot.update(r)
        mm = str(r["mismatch"]) if use_mrq else "-"
        print(f"{key:32s} {r['models']:6d} {r['elements']:9d} {mm:>9s} "
              f"{r['models_mismatching'] if use_mrq else '-':>10} {r['errors'] if use_mrq else '-':>6}")
    print("-" * len(hdr))
    print(f"{'TOTAL':32s} {tot['models']:6d} {tot['elements']:9d} "
          f"{(str(tot['mismatch']) if use_mrq else '-'):>9s} "
          f"{tot['models_mismatching'] if use_mrq else '-':>10} {tot['errors'] if use_mrq else '-':>6}")
    print(f"time: generation {t_gen:.1f} s, ORT {t_ort:.1f} s, mrq {t_mrq:.1f} s")
    if use_mrq:
        print(f"\nGRAND TOTAL: {tot['models']} models, {len(rows)} configs, "
              f"{tot['elements']} output elements compared, {tot['mismatch']} mismatching "
              f"({tot['bit_only_mismatch']} further bit-pattern-only differences, e.g. -0.0/+0.0), "
              f"{tot['errors']} mrq errors")
    if a.inventory:
        print("\nORT optimized-graph op inventory (all models of each group):")
        for grp in sorted(inv_ops):
            print(f"  {grp}: " + ", ".join(f"{k}={v}" for k, v in sorted(inv_ops[grp].items())))
        print("\nops computing on float tensors in ORT's optimized graphs (producer->op->consumer):")
        for grp in sorted(inv_float):
            print(f"  {grp}: " + (", ".join(f"{k} x{v}" for k, v in sorted(inv_float[grp].items()))
                                  or "none"))
        rej = Counter(op for c in cases for rj in c.rejected for op in rj["inexact_ops"])
        print(f"\nrejected candidate architectures (inexact float op in ORT graph): "
              f"{n_rej} {dict(rej)}")
    if use_mrq:
        n_ok = tot["models"] - tot["models_mismatching"]
        print(f"models bit-exact on all inputs: {n_ok}/{tot['models']}")
    if failures:
        causes = defaultdict(list)
        for c, k, msg, _ in failures:
            key = re.sub(r"'[^']*'", "'…'", msg.split(" first: ")[0])
            key = re.sub(r"\d+", "N", key)[:160]
            causes[key].append(c.path.stem)
        print("\nfailure causes (message with names/numbers masked: models, e.g.):")
        for key, ms in sorted(causes.items(), key=lambda kv: -len(kv[1])):
            print(f"  {len(set(ms)):4d} models  {key}   e.g. {ms[0]}")
        print(f"\n{len(failures)} failures:")
        for c, k, msg, tb in failures[: (None if a.verbose else 40)]:
            print(f"  {c.path.name} inputs#{k} [{c.arch}]: {msg}")
            if tb:
                print(tb)
    if tmp is not None:
        tmp.cleanup()
    return 1 if (use_mrq and (tot["mismatch"] or tot["errors"])) else 0


if __name__ == "__main__":
    sys.exit(main())
