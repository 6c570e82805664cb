"""Where MLPerf Tiny AD01's batch-1 time goes, next to two lower bounds and LiteRT's reference.

AD01 is ten fully connected layers (640-128-128-128-128-8-128-128-128-128-640, int8 weights).
At batch 1 every weight is used once per inference, so no implementation can be faster than
reading them once from the caches, nor (on the portable path: int16 pair products, 32 weight
products per ``vpmaddwd``-class instruction) than one such instruction per 32 weights. This
script measures, per inference and as the best of many short windows (a loaded machine's
preemptions drop out):

- ``read``: the weight bytes summed with 64-byte vector loads (the file's own weights, warm L2);
- ``madd``: one int16 pair multiply-add per 32 weights into 8 independent accumulators, reading
  nothing (the instruction throughput bound of the kernel path in use);
- ``layers``: each layer's kernel calls alone, looped in one jitted function (weights warm),
  summed over the ten layers;
- ``program``: the compiled program's function (:mod:`simulator.compiled`) looped in a jitted
  function: the layers plus their glue (output allocations, calls);
- ``fn(x)``: that function called from Python through numba's dispatcher (adds the type
  resolution of the argument, unboxing it, boxing the returned array and counters);
- ``run``: :meth:`CompiledProgram.run` from Python, as ``bench/paired.py`` times it (adds the
  input checks and the result object; it calls the compiled version's entry point instead of
  the dispatcher);
- LiteRT ``BUILTIN_REF`` per inference, and the ratios ``REF / run`` and ``REF / read``.

The differences ``fn(x) - program`` and ``run - fn(x)`` are the call's two parts (the Python
side also evicts some of the kernels' state between calls, which only ``run`` and ``fn(x)``
pay).

    SIMULATOR_KERNELS=portable python bench/ad01_floor.py
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo


def _best(fn, n, windows=200):
    """Best seconds per call of ``fn(n)`` (``n`` calls) over ``windows`` windows."""
    best = float("inf")
    for _ in range(windows):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def _program():
    from mrq.api import bind_inputs, prepare

    path, profile = zoo.MODELS["ad01"]
    return bind_inputs(prepare(path, profile), zoo.inputs("ad01", 1))


def _weights(program):
    arrays = [np.ascontiguousarray(s.params["weight"]).reshape(-1).view(np.uint8)
              for s in program.steps if "weight" in getattr(s, "params", {})]
    return np.concatenate(arrays)


def _floors(w):
    from numba import njit

    from simulator.kernels.simd import vadd_i32, vload, vmaddwd, vstore, vzero

    @njit
    def read_once(w, out, n):
        for _ in range(n):
            a0 = vzero()
            a1 = vzero()
            for i in range(0, w.shape[0] - 127, 128):
                a0 = vadd_i32(a0, vload(w, i))
                a1 = vadd_i32(a1, vload(w, i + 64))
            vstore(out, 0, vadd_i32(a0, a1))

    @njit
    def madd_only(x, out, n_madd, n):
        for _ in range(n):
            v = vload(x, 0)
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = vzero()
            for _ in range(n_madd // 8):
                a0 = vmaddwd(a0, v, v)
                a1 = vmaddwd(a1, v, v)
                a2 = vmaddwd(a2, v, v)
                a3 = vmaddwd(a3, v, v)
                a4 = vmaddwd(a4, v, v)
                a5 = vmaddwd(a5, v, v)
                a6 = vmaddwd(a6, v, v)
                a7 = vmaddwd(a7, v, v)
                v = vadd_i32(v, a7)
            vstore(out, 0, vadd_i32(vadd_i32(vadd_i32(a0, a1), vadd_i32(a2, a3)),
                                    vadd_i32(vadd_i32(a4, a5), vadd_i32(a6, a7))))

    out = np.zeros(16, np.int32)
    x = np.ones(32, np.int16)
    n_madd = -(-len(w) // 32)
    read_once(w, out, 1)
    madd_only(x, out, n_madd, 1)
    return (_best(lambda n: read_once(w, out, n), 100),
            _best(lambda n: madd_only(x, out, n_madd, n), 100))


def _looped(calls_args):
    """A jitted ``loop(n, *args)`` making the given ``(kernel, args)`` calls ``n`` times."""
    import numba

    g, lines, params = {}, [], []
    for i, (fn, args) in enumerate(calls_args):
        g[f"K{i}"] = fn
        names = [f"a{len(params) + j}" for j in range(len(args))]
        params += names
        lines.append(f"        K{i}({', '.join(names)})")
    exec(f"def loop(n, {', '.join(params)}):\n    for _ in range(n):\n"  # noqa: S102
         + "\n".join(lines) + "\n", g)
    return numba.njit(g["loop"]), [a for _, args in calls_args for a in args]


def _layers(program, bound):
    """Seconds per inference of every layer's kernel calls alone (weights warm), summed."""
    from simulator.launch import In, Tmp
    from simulator.steps import spec, step_launch

    values = dict(bound)
    total = 0.0
    for step in program.steps:
        ins = [np.ascontiguousarray(values[name]) for name in step.inputs]
        launch = step_launch(step, [spec(a.shape, a.dtype) for a in ins])
        outs, _ = launch.execute(tuple(ins))
        values.update(zip(step.outputs, outs))
        temps = [np.empty(s, dtype=d) for s, d in launch.temps]
        calls = []
        for call in launch.calls:
            args = []
            for a in call.args:
                if isinstance(a, (In, Tmp)):
                    arr = ins[a.index] if isinstance(a, In) else temps[a.index]
                    a = arr if a.shape is None else arr.reshape(a.shape)
                args.append(a)
            calls.append((call.fn, args))
        loop, largs = _looped(calls)
        loop(1, *largs)
        total += _best(lambda n, loop=loop, largs=largs: loop(n, *largs), 200)
    return total


def main():
    import numba

    from simulator.compiled import compile_program

    numba.set_num_threads(1)
    program, bound = _program()
    w = _weights(program)
    w = np.concatenate([w, np.zeros(-len(w) % 128, np.uint8)])
    read_s, madd_s = _floors(w)
    layers_s = _layers(program, bound)
    compiled = compile_program(program, bound)
    compiled.run(bound)
    fn = compiled.fn
    x = bound[program.inputs[0].name]

    @numba.njit
    def program_loop(n, x):
        for _ in range(n):
            fn(x)

    program_loop(1, x)
    program_s = _best(lambda n: program_loop(n, x), 200)
    fn_s = _best(lambda n: [fn(x) for _ in range(n)], 200)
    run_s = _best(lambda n: [compiled.run(bound) for _ in range(n)], 200)
    ref = zoo.litert("ad01", 1, reference=True)
    ref_s = _best(lambda n: [ref() for _ in range(n)], 20)
    from simulator.capabilities import capabilities

    print(f"kernels: {capabilities().kernels}; AD01 weights: {len(w) / 1024:.0f} KiB")
    for name, sec in (("read (floor)", read_s), ("madd (floor)", madd_s), ("layers", layers_s),
                      ("program", program_s), ("fn(x)", fn_s), ("run", run_s),
                      ("LiteRT BUILTIN_REF", ref_s)):
        print(f"{name:20s} {sec * 1e6:8.2f} us")
    print(f"call: {(run_s - program_s) * 1e6:.2f} us (dispatch and boxing"
          f" {(fn_s - program_s) * 1e6:.2f}, run's Python {(run_s - fn_s) * 1e6:.2f})")
    print(f"REF / run: {ref_s / run_s:.1f}x; REF / read: {ref_s / read_s:.1f}x")


if __name__ == "__main__":
    main()
