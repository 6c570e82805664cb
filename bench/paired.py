"""Issue-6 ratios measured in pairs: each round times the simulator and its peer back to back, so
a slow phase of this shared machine slows both sides of a ratio instead of one.

    python bench/paired.py [--rounds 15] [--json OUT.json] [--models resnet8,kws,...] [--cpu]

Per model it reports, as the median over the rounds (and the range of the per-round ratios):

- batch 256, 1 thread: simulator time / peer time (ORT CPU provider for the ONNX models, LiteRT's
  default interpreter for the TFLite ones); target <= 2. The simulator is ``simulator.run.run``
  in its steady state: its program is compiled once first (as an earlier run of the model on
  this machine leaves it in the on-disk cache), then ``run`` is called until its automatic
  switch to the compiled program has decided (``simulator.run.switch_status``). The step-by-step
  interpreter (``run(..., compile="no")``) is shown next to it;
- batch 1: LiteRT ``BUILTIN_REF`` time / compiled simulator time (``simulator.compiled``; TFLite
  models only); target >= 50; the interpreter's ratio is shown next to it;
- batch 256: simulator 1 thread / 2 threads; target >= 1.7.

Each engine is warmed up first; a round runs each engine for at least ~0.2 s (batch 1: a loop of
calls, time per call) and keeps its per-call time.

``--omp-wait passive|active`` runs with that ``OMP_WAIT_POLICY`` alone (``passive``: idle OpenMP
workers sleep at once; ``active``: they spin) instead of the simulator's default
(``simulator.capabilities.OMP_IDLE``: passive after a ~0.2 ms spin); an explicit
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` in the environment also wins. On the AMD EPYC KVM guest
of issue 18 a sleeping worker's vCPU halts and, woken for a 0.2 ms chunk, seems to share a host
core with the waking one: AD01's two 128-row halves took 430 us against 357 us on one thread
(0.82x, ``passive``), with spinning workers 214 us (1.68x; load 11).

The first line printed names the simulator's kernel path and the CPU numba generates code for.
Per host class (docs/performance.md): ``SIMULATOR_KERNELS=portable`` runs the portable kernels on
any host; with ``NUMBA_CPU_NAME=haswell`` and ``NUMBA_CPU_FEATURES`` (a Haswell feature list) the
simulator's kernels are AVX2 code, as on an AVX2-only host (the peers keep this host's code).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo

from simulator.capabilities import set_omp_idle_defaults

# --cpu: process CPU time instead of wall-clock time (a loaded machine deschedules the process
# at random; CPU time does not count that, but cannot show a thread speed-up)
_CLOCK = [time.perf_counter]


def _per_call(fn, min_seconds=0.2):
    clock = _CLOCK[0]
    n = 0
    t0 = clock()
    while True:
        fn()
        n += 1
        elapsed = clock() - t0
        if elapsed >= min_seconds:
            return elapsed / n


def _paired(engines, rounds):
    """``{name: [per-call seconds per round]}`` with the engines interleaved in every round."""
    times = {name: [] for name in engines}
    for _ in range(rounds):
        for name, fn in engines.items():
            times[name].append(_per_call(fn))
    return times


def _ratio(num, den):
    per_round = [a / b for a, b in zip(num, den)]
    return statistics.median(per_round), min(per_round), max(per_round)


def mrq_steady(name, batch, threads, compile="auto"):
    """``run(program, feeds, threads=threads, compile=compile)`` after its warm-up (module
    docstring)."""
    from mrq.api import bind_inputs, prepare
    from simulator.compiled import compile_program
    from simulator.run import run, set_threads, switch_status

    path, profile = zoo.MODELS[name]
    program, bound = bind_inputs(prepare(path, profile), zoo.inputs(name, batch))
    if compile == "auto":
        set_threads(threads)
        compiled = compile_program(program, bound)
        if compiled is not None:
            compiled.run(bound)
        while True:
            run(program, bound, threads=threads)
            status = switch_status(program, bound, threads)
            # runs == 0: the switch is off (SIMULATOR_COMPILE=no)
            if status["compiled"] is not None or status["switch_at"] == -1 or not status["runs"]:
                break

    def fn():
        return run(program, bound, threads=threads, compile=compile)

    fn()
    return fn


def measure(model, rounds):
    rows = {}
    peer = zoo.litert if zoo.is_tflite(model) else zoo.ort
    peer_name = "litert" if zoo.is_tflite(model) else "ort"
    t = _paired({"mrq": mrq_steady(model, 256, 1), peer_name: peer(model, 256),
                 "mrq_2t": mrq_steady(model, 256, 2),
                 "interpreter": mrq_steady(model, 256, 1, compile="no")}, rounds)
    rows["batch256_vs_peer"] = _ratio(t["mrq"], t[peer_name])
    rows["batch256_interpreter_vs_peer"] = _ratio(t["interpreter"], t[peer_name])
    rows["threads_1_to_2"] = _ratio(t["mrq"], t["mrq_2t"])
    rows["ms_batch256"] = {k: statistics.median(v) * 1e3 for k, v in t.items()}
    if zoo.is_tflite(model):
        t1 = _paired({"compiled": zoo.mrq_compiled(model, 1), "mrq": mrq_steady(model, 1, 1, compile="no"),
                      "litert_ref": zoo.litert(model, 1, reference=True),
                      "litert": zoo.litert(model, 1)}, rounds)
        rows["batch1_ref_vs_compiled"] = _ratio(t1["litert_ref"], t1["compiled"])
        rows["batch1_ref_vs_interpreter"] = _ratio(t1["litert_ref"], t1["mrq"])
        rows["batch1_compiled_vs_litert"] = _ratio(t1["compiled"], t1["litert"])
        rows["us_batch1"] = {k: statistics.median(v) * 1e6 for k, v in t1.items()}
    return rows


def _kernel_path():
    import numba

    from simulator.capabilities import capabilities

    target = numba.config.CPU_NAME or "host"
    return f"simulator kernels: {capabilities().kernels}, numba target CPU: {target}"


def _fmt(r):
    return f"{r[0]:.2f}x ({r[1]:.2f}-{r[2]:.2f})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", default=None)
    ap.add_argument("--models", default=",".join(zoo.MODELS))
    ap.add_argument("--omp-wait", choices=("passive", "active"), default=None,
                    help="OMP_WAIT_POLICY for this run, without a spin count (default: the "
                         "simulator's, simulator.capabilities.OMP_IDLE)")
    ap.add_argument("--cpu", action="store_true",
                    help="time per call in process CPU time (1-thread ratios on a loaded machine; "
                         "the thread column is then meaningless and shown as -)")
    args = ap.parse_args(argv)
    if args.omp_wait:
        # read by libgomp when numba loads its threading layer, which has not happened yet
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait.upper()
    set_omp_idle_defaults()
    if args.cpu:
        _CLOCK[0] = time.process_time
    path = _kernel_path()
    print(f"{path}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')},"
          f" GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'the policy default')}")
    results = {}
    for model in args.models.split(","):
        if not zoo.available(model):
            print(f"{model}: not on this machine, skipped")
            continue
        results[model] = measure(model, args.rounds)
    header = ["model", "b256 mrq/peer (<=2)", "b256 ms mrq / peer", "b256 interpreter/peer",
              "b1 REF/compiled (>=50)",
              "b1 REF/interpreter", "b1 us compiled / REF", "1->2 threads (>=1.7)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, r in results.items():
        ms = r["ms_batch256"]
        peer_ms = ms.get("ort", ms.get("litert"))
        b1 = r.get("us_batch1")
        lines.append("| " + " | ".join([
            model, _fmt(r["batch256_vs_peer"]), f"{ms['mrq']:.1f} / {peer_ms:.1f}",
            _fmt(r["batch256_interpreter_vs_peer"]),
            _fmt(r["batch1_ref_vs_compiled"]) if b1 else "-",
            _fmt(r["batch1_ref_vs_interpreter"]) if b1 else "-",
            f"{b1['compiled']:.0f} / {b1['litert_ref']:.0f}" if b1 else "-",
            "-" if args.cpu else _fmt(r["threads_1_to_2"])]) + " |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"kernels": path, "models": results}, fh, indent=1)


if __name__ == "__main__":
    main()
