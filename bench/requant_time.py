"""Re-quantization time on the QAT MobileNetV2 with 512 calibration images (training split).

Two measurements:

- default: wall time of ``requantize()`` alone, per target profile, after one warm-up run (JIT
  cache loaded), in this process::

      python bench/requant_time.py [MODEL.onnx] [--runs 3]

- ``--command``: the whole ``mrq requant`` command as a user runs it (process start, imports,
  model I/O, re-quantization, ONNX export, the check and the end-to-end simulation), one fresh
  process per run after a warm-up run; wall time, the CPU time of the process (user + sys, all
  its threads) and the sha256 of the written model (re-quantization results must not change
  when only speed work is done), then where the time of one more run goes (cProfile, CPU time,
  top-level phases)::

      python bench/requant_time.py --command [--profiles nna-sym8 nna-w4a8] [--threads 1]

- ``--cold``: the first ``mrq requant`` on a fresh machine: every run gets empty
  ``NUMBA_CACHE_DIR`` and ``MRQ_CACHE_DIR`` (every kernel compiles); wall and CPU time (user +
  sys of the process and of any child it starts), then one more cold run in an instrumented
  process: wall and CPU seconds per top-level phase, and every kernel compiled with its wall and
  CPU seconds and the phase that asked for it::

      python bench/requant_time.py --cold --runs 1 [--profiles nna-sym8]

- ``--hashes OUT.json``: no timing; the sha256 of the written model and of its JSON report (less
  the timing and the paths) for every profile on the QAT and the ORT-quantized MobileNetV2, all
  in this process, written to OUT.json; ``--expect BASE.json`` exits 1 on any difference. Speed
  work must leave every one unchanged: run it on the tree before the change (``PYTHONPATH``) and
  after::

      PYTHONPATH=/tmp/base python bench/requant_time.py --hashes /tmp/before.json
      python bench/requant_time.py --hashes /tmp/after.json --expect /tmp/before.json

  ``--threads N`` runs the command with N BLAS, OpenMP and numba threads (default: the
  libraries' own choice). On a shared machine the CPU time is the steadier figure: idle threads
  that spin while they wait count as CPU time too, so compare it across thread settings.

Needs Debian's dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist).
"""
import argparse
import hashlib
import io
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import fashion_mnist

PROFILES = ["nna-sym8", "nna-sym8-pow2", "nna-w4a8", "nna-w4a8-pow2", "nna-w4a4"]
HASH_PROFILES = ["nna-sym8", "nna-sym8-pow2", "nna-w4a8", "nna-w4a4", "nna-sym8-acc16"]
HASH_MODELS = ["fmnist_mnv2_qat_qdq.onnx", "fmnist_mnv2_ort_qdq.onnx"]

# the command's top-level phases, as cProfile names them (file suffix, function)
PHASES = [("mrq/requant.py", "requantize", "re-quantization passes"),
          ("mrq/api.py", "simulate", "end-to-end simulation (SQNR)"),
          ("mrq/commands/check.py", "check_model", "check of the written model"),
          ("mrq/onnx_import.py", "load_model", "model loading (input and output)"),
          ("mrq/onnx_export.py", "export_onnx", "ONNX export"),
          ("numba/core/caching.py", "load_overload", "loading cached kernels (JIT cache)")]


def _calib(n_images):
    train_x, _ = fashion_mnist.load("train")
    idx = np.random.default_rng(0).choice(len(train_x), n_images, replace=False)
    return fashion_mnist.to_float(train_x[idx])


def _thread_env(threads):
    env = dict(os.environ)
    # warm means as installed: the modules' bytecode is on disk (the warm-up run writes it), not
    # compiled from source by every process (~0.3 s of CPU for mrq's modules)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if threads:
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[name] = str(threads)
    return env


def _run_command(argv, env):
    """(wall s, cpu s) of one ``mrq requant`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mrq", *argv], env=env, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode not in (0, 1):   # 1: written, but the check found violations
        sys.exit(f"mrq {' '.join(argv)} failed:\n{r.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _sha256(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


# as the console script starts (mrq/entry.py: idle threads sleep), then cli.main under cProfile
_PROFILE_SCRIPT = """
import cProfile, sys, time
from mrq.entry import quiet_idle_threads
quiet_idle_threads()
from mrq.cli import main
prof = cProfile.Profile(time.process_time)
prof.enable()
main(sys.argv[2:])
prof.disable()
prof.dump_stats(sys.argv[1])
"""


def _phases(argv, env, work):
    """CPU seconds of the command's top-level phases in one profiled process."""
    stats_path = os.path.join(work, "requant.prof")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", _PROFILE_SCRIPT, stats_path, *argv], env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stats = pstats.Stats(stats_path, stream=io.StringIO()).stats
    rows = []
    for suffix, func, what in PHASES:
        cum = sum(v[3] for (path, _line, name), v in stats.items() if name == func and path.endswith(suffix))
        rows.append((what, cum))
    return total, rows


def command_mode(args):
    env = _thread_env(args.threads)
    with tempfile.TemporaryDirectory() as work:
        calib = os.path.join(work, "calib.npz")
        np.savez(calib, input=_calib(args.calib_images))
        print(f"mrq requant {os.path.relpath(args.model, ROOT)}, {args.calib_images} calibration images, "
              f"threads: {args.threads or 'default'}, load {os.getloadavg()[0]:.1f}", flush=True)
        for profile in args.profiles:
            out = os.path.join(work, f"out_{profile}.onnx")
            argv = ["requant", args.model, "--profile", profile, "-o", out, "--calib", calib]
            _run_command(argv, env)  # warm-up: fills the JIT cache if it is cold
            times = [_run_command(argv, env) for _ in range(args.runs)]
            best_wall = min(t[0] for t in times)
            best_cpu = min(t[1] for t in times)
            print(f"{profile:<15} wall best {best_wall:.2f} s  cpu best {best_cpu:.2f} s   runs (wall/cpu): "
                  + ", ".join(f"{w:.2f}/{c:.2f}" for w, c in times)
                  + f"   sha256 {_sha256(out)[:16]}  load {os.getloadavg()[0]:.1f}", flush=True)
            if args.phases:
                total, rows = _phases(argv, env, work)
                print(f"  where the CPU time goes (one profiled run, {total:.2f} s cpu with the profiler):")
                for what, cum in rows:
                    print(f"    {what:<40} {cum:6.2f} s")
                print(f"    {'the rest (start-up, imports, I/O, printing)':<40} "
                      f"{total - sum(c for w, c in rows[:5]):6.2f} s", flush=True)
    return 0


# the command under a numba compile listener and timers around its phases, as the console
# script starts it; argv: report path, then the mrq arguments
_COLD_SCRIPT = """
import json, sys, time
from mrq.entry import quiet_idle_threads
quiet_idle_threads()
from numba.core import event
import resource
import mrq.api, mrq.commands.check, mrq.commands.requant_warm, mrq.onnx_export, mrq.onnx_import, mrq.requant
from mrq.cli import main

phases = {}
stack = ["start-up and the rest"]
kernels = []


def timed(module, name, what):
    func = getattr(module, name)

    def wrapper(*a, **k):
        stack.append(what)
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            return func(*a, **k)
        finally:
            stack.pop()
            w, c = phases.get(what, (0.0, 0.0))
            phases[what] = (w + time.perf_counter() - w0, c + time.process_time() - c0)
    setattr(module, name, wrapper)


for module, name, what in [(mrq.requant, "requantize", "re-quantization passes"),
                           (mrq.api, "simulate", "end-to-end simulation (SQNR)"),
                           (mrq.commands.check, "check_model", "check of the written model"),
                           (mrq.onnx_import, "load_model", "model loading"),
                           (mrq.onnx_export, "export_onnx", "ONNX export")]:
    timed(module, name, what)
timed(mrq.commands.requant_warm.CheckWarmUp, "wait", "waiting for the warm-up child")


class Listener(event.Listener):
    depth = 0

    def on_start(self, ev):
        self.depth += 1
        if self.depth == 1:
            self.t0 = (time.perf_counter(), time.thread_time())

    def on_end(self, ev):
        self.depth -= 1
        if self.depth:
            return
        func = ev.data["dispatcher"].py_func
        kernels.append((f"{func.__module__}.{func.__qualname__}".split("__k")[0], stack[-1],
                        time.perf_counter() - self.t0[0], time.thread_time() - self.t0[1]))


event.register("numba:compile", Listener())
w0, c0 = time.perf_counter(), time.process_time()
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as fh:
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    json.dump({"exit": code, "wall": time.perf_counter() - w0, "cpu": time.process_time() - c0,
               "child_cpu": child.ru_utime + child.ru_stime, "phases": phases, "kernels": kernels}, fh)
"""


def _cold_env(base_env, work):
    cache = tempfile.mkdtemp(dir=work)
    return dict(base_env, NUMBA_CACHE_DIR=os.path.join(cache, "numba"), MRQ_CACHE_DIR=os.path.join(cache, "mrq"))


def cold_mode(args):
    import json
    env = _thread_env(args.threads)
    with tempfile.TemporaryDirectory() as work:
        calib = os.path.join(work, "calib.npz")
        np.savez(calib, input=_calib(args.calib_images))
        print(f"cold mrq requant {os.path.relpath(args.model, ROOT)}, {args.calib_images} calibration images, "
              f"threads: {args.threads or 'default'}; empty JIT caches every run", flush=True)
        for profile in args.profiles if args.profiles != PROFILES else ["nna-sym8"]:
            out = os.path.join(work, f"out_{profile}.onnx")
            argv = ["requant", args.model, "--profile", profile, "-o", out, "--calib", calib]
            for _ in range(args.runs):  # --runs 0: the instrumented run only
                load = os.getloadavg()[0]
                wall, cpu = _run_command(argv, _cold_env(env, work))
                print(f"{profile:<15} cold wall {wall:.2f} s  cpu {cpu:.2f} s  sha256 {_sha256(out)[:16]}  "
                      f"load before/after {load:.1f}/{os.getloadavg()[0]:.1f}", flush=True)
            report = os.path.join(work, "cold.json")
            subprocess.run([sys.executable, "-c", _COLD_SCRIPT, report, *argv], env=_cold_env(env, work),
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            with open(report) as fh:
                data = json.load(fh)
            print(f"  instrumented cold run (from the end of start-up): wall {data['wall']:.2f} s, cpu "
                  f"{data['cpu']:.2f} s, its warm-up child's cpu {data['child_cpu']:.2f} s, "
                  f"load {os.getloadavg()[0]:.1f}")
            print(f"    {'phase':<44} {'wall':>7} {'cpu':>7}")
            for what, (w, c) in data["phases"].items():
                print(f"    {what:<44} {w:7.2f} {c:7.2f}")
            kernels = data["kernels"]
            print(f"    {len(kernels)} kernel(s) compiled here, {sum(k[2] for k in kernels):.2f} s wall, "
                  f"{sum(k[3] for k in kernels):.2f} s cpu:")
            for name, phase, w, c in sorted(kernels, key=lambda k: -k[3]):
                print(f"      {name:<70} {w:6.2f} {c:6.2f}  ({phase})")
    return 0


def function_mode(args):
    from mrq.onnx_import import load_model
    from mrq.requant import requantize

    graph = load_model(args.model)
    calib = {graph.inputs[0]: _calib(args.calib_images)}
    requantize(graph, args.profiles[0], calib)  # warm-up: loads the JIT cache
    for profile in args.profiles:
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            requantize(graph, profile, calib)
            times.append(time.perf_counter() - t0)
        print(f"{profile:<15} best {min(times):.2f} s   runs: {', '.join(f'{t:.2f}' for t in times)}",
              flush=True)
    return 0


def _report_digest(path):
    """sha256 of the JSON report without what may change when nothing else does (time, paths)."""
    import json
    with open(path) as fh:
        data = json.load(fh)
    for key in ("seconds", "model", "output"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def hashes_mode(args):
    import json

    import mrq
    from mrq.cli import main as cli_main
    results = {}
    with tempfile.TemporaryDirectory() as work:
        calib = os.path.join(work, "calib.npz")
        np.savez(calib, input=_calib(args.calib_images))
        for model in HASH_MODELS:
            for profile in args.profiles if args.profiles != PROFILES else HASH_PROFILES:
                out = os.path.join(work, "out.onnx")
                report = os.path.join(work, "out.json")
                argv = ["requant", os.path.join(HERE, "models", model), "--profile", profile, "-o", out,
                        "--calib", calib, "--json", report]
                with open(os.devnull, "w") as sink:
                    saved, sys.stdout = sys.stdout, sink
                    try:
                        code = cli_main(argv)
                    finally:
                        sys.stdout = saved
                key = f"{model} {profile}"
                results[key] = {"exit": code, "onnx": _sha256(out), "report": _report_digest(report)}
                print(f"{key:<45} exit {code}  onnx {results[key]['onnx'][:16]}  "
                      f"report {results[key]['report'][:16]}", flush=True)
    print(f"(mrq from {os.path.dirname(mrq.__file__)})")
    with open(args.hashes, "w") as fh:
        json.dump(results, fh, indent=1, sort_keys=True)
    if args.expect:
        with open(args.expect) as fh:
            expected = json.load(fh)
        differ = [f"{k}: {what}" for k in sorted(set(expected) | set(results))
                  for what in ("exit", "onnx", "report")
                  if expected.get(k, {}).get(what) != results.get(k, {}).get(what)]
        print("\n".join(["DIFFERENT from " + args.expect + ":"] + differ) if differ
              else f"identical to {args.expect} ({len(results)} models)")
        return 1 if differ else 0
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=os.path.join(HERE, "models", "fmnist_mnv2_qat_qdq.onnx"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--profiles", nargs="+", default=PROFILES, help="e.g. nna-sym8-acc16 nna-sym8-acc18")
    ap.add_argument("--command", action="store_true", help="time the whole `mrq requant` command")
    ap.add_argument("--cold", action="store_true",
                    help="time the whole `mrq requant` command with empty JIT caches (see above)")
    ap.add_argument("--threads", type=int, default=0,
                    help="with --command: BLAS/OpenMP/numba threads (0: the libraries' default)")
    ap.add_argument("--phases", action="store_true",
                    help="with --command: one more, profiled run per profile: CPU time per phase")
    ap.add_argument("--hashes", metavar="OUT.json", help="hash every re-quantized model (see above)")
    ap.add_argument("--expect", metavar="BASE.json", help="with --hashes: exit 1 unless identical to these")
    args = ap.parse_args(argv)
    args.model = os.path.abspath(args.model)
    if args.hashes:
        return hashes_mode(args)
    if args.cold:
        return cold_mode(args)
    return command_mode(args) if args.command else function_mode(args)


if __name__ == "__main__":
    sys.exit(main())
