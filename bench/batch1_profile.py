"""Where a batch-1 compiled program spends its time: one line per kernel call and per step.

    python bench/batch1_profile.py [--models resnet8,kws] [--runs 2000]

The program's generated source (:mod:`simulator.compiled`) is instrumented with a read of the
CPU's time-stamp counter (LLVM ``readcyclecounter``) after every statement, so each kernel call,
scratch allocation and view is timed inside the one jitted function, without the Python or
dispatch costs a per-call timer from Python would add. Per line it reports the median over
``--runs`` runs in microseconds (TSC ticks converted with a rate measured against
``time.perf_counter``), then per kernel kind (conv, depthwise, pointwise, gemm, prepass, add,
pool, softmax, glue) and the whole program's median time, instrumented and not.

The counter reads cost ~10-40 cycles each, so the instrumented total is slightly above the
plain one; on a loaded machine the medians are inflated by descheduling (state ``uptime``).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo


def _rdtsc():
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def rdtsc(typingctx):
        def codegen(context, builder, sig, args):
            fn = builder.module.declare_intrinsic("llvm.readcyclecounter", fnty=ir.FunctionType(
                ir.IntType(64), []))
            return builder.call(fn, [])
        return types.int64(), codegen

    return rdtsc


def _tsc_rate(rdtsc):
    import numba

    @numba.njit
    def read():
        return rdtsc()

    read()
    t0, c0 = time.perf_counter(), read()
    time.sleep(0.2)
    t1, c1 = time.perf_counter(), read()
    return (c1 - c0) / (t1 - t0)


def _kind_of(line, names):
    """A kernel call's kind from the dispatcher's Python name."""
    m = re.search(r"\b(K\d+)\(", line)
    if not m:
        return "glue"
    name = names.get(m.group(1), "")
    for key, kind in (("rows_add", "conv+add"), ("prepass", "prepass"), ("dw3", "depthwise"), ("_dw", "depthwise"),
                      ("gemv", "gemm"), ("rows", "conv"), ("vnni", "conv"), ("add", "add"),
                      ("pool", "pool"), ("softmax", "softmax")):
        if key in name:
            return kind
    return name or "other"


def profile(model, runs):
    import numba

    from mrq.api import bind_inputs, prepare
    from simulator import compiled as C

    path, profile_name = zoo.MODELS[model]
    program, bound = bind_inputs(prepare(path, profile_name), zoo.inputs(model, 1))
    numba.set_num_threads(1)
    source, src, _ = C._source_for(program, bound, 1)
    plain = C.compile_program(program, bound, threads=1)
    lines = source.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("def program"))
    body = lines[start + 1:]
    timed = [ln for ln in body[:-1]]
    out = [f"    ticks = np.zeros({len(timed)}, np.int64)", "    c_prev = rdtsc()"]
    for i, ln in enumerate(timed):
        out.append(ln)
        out.append(f"    c_now = rdtsc()\n    ticks[{i}] = c_now - c_prev\n    c_prev = c_now")
    out.append(body[-1].replace("return ", "return ticks, ", 1))
    inst_src = "\n".join(lines[:start + 1] + out) + "\n"
    rdtsc = _rdtsc()
    # the helpers simulator.compiled puts in the generated module's namespace
    glb = {"np": np, "rdtsc": rdtsc, **C._jit(source, src).py_func.__globals__,
           **src.consts, **src.kernels}
    exec(compile(inst_src, f"<profile {model}>", "exec"), glb)  # noqa: S102 - our own source
    fn = numba.njit(glb["program"])
    args = [bound[i.name] for i in program.inputs]
    fn(*args)
    samples = np.empty((runs, len(timed)), dtype=np.int64)
    for r in range(runs):
        samples[r] = fn(*args)[0]
    rate = _tsc_rate(rdtsc)
    med = np.median(samples, axis=0) / rate * 1e6
    names = {k: getattr(v, "__name__", str(v)) for k, v in src.kernels.items()}
    by_kind = {}
    print(f"## {model}: per line (median us over {runs} runs)")
    for ln, us in zip(timed, med):
        kind = _kind_of(ln, names)
        by_kind[kind] = by_kind.get(kind, 0.0) + us
        text = ln.strip()
        m = re.search(r"\b(K\d+)\(", text)
        label = names.get(m.group(1), "") if m else ""
        print(f"{us:8.2f}  {kind:9s} {label:14s} {text[:90]}")
    total = float(np.median(samples.sum(axis=1))) / rate * 1e6
    print(f"## {model}: per kind (us, sum of medians)")
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"{us:8.2f}  {kind}  ({100 * us / max(total, 1e-9):.0f}%)")

    def per_call(call):
        # process CPU time: on a shared machine wall-clock time per call counts the other
        # processes' turns too (up to 2x at load 4 on 2 vCPUs), the medians above do not
        call()
        best = []
        for _ in range(5):
            n, t0 = 0, time.process_time()
            while time.process_time() - t0 < 0.1:
                call()
                n += 1
            best.append((time.process_time() - t0) / n)
        return statistics.median(best) * 1e6

    plain_us = per_call(lambda: plain.run(bound))
    print(f"## {model}: instrumented median {total:.1f} us; plain compiled.run {plain_us:.1f} us"
          " (CPU time per call)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet8,kws")
    ap.add_argument("--runs", type=int, default=2000)
    args = ap.parse_args(argv)
    print(f"load: {os.getloadavg()}")
    for model in args.models.split(","):
        if not zoo.available(model):
            print(f"{model}: not on this machine, skipped")
            continue
        profile(model, args.runs)


if __name__ == "__main__":
    main()
