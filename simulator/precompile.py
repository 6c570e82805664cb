"""Compile a program's kernels without running it, last step first: the second core's share of a
cold start.

numba compiles one kernel at a time per process, and a first run on a fresh machine spends most
of its time there (MLPerf Tiny KWS, one image: 17 s of compilation in a 19.5 s run on a 2-core
AMD EPYC host). A second process that compiles the same kernels into the shared on-disk cache
halves that when the two work from opposite ends: the run compiles its kernels in program order
as it meets them, and :func:`compile_last_first` compiles them from the last step back. Each new
signature the run meets is looked up in the on-disk cache first (numba's dispatcher does so for
every signature), so the run loads what the other process has written, and
:func:`compile_last_first` stops at the first kernel it finds already there: the two have met.
At most the one kernel both were compiling when they met is compiled twice. Results never
depend on this: a kernel is the same machine code whichever process compiled it.

The kernels are those of the steps' launches (:func:`simulator.steps.step_launch`) for inputs
shaped like the run's, with the argument types the interpreter passes them, so the run finds
exactly these signatures; a step without a launch ends the list (the specs of its outputs, hence
of every later step's inputs, are unknown without running it)."""
from __future__ import annotations

import numpy as np
from numba.core.dispatcher import Dispatcher

from simulator.launch import In, Tmp
from simulator.steps import spec, step_launch


def _arg_type(fn, arg, in_specs, temps):
    """The numba type ``fn`` sees for ``arg`` when :meth:`Launch.execute` passes it: inputs are
    read-only and scratch buffers writable C-contiguous arrays, the rest is passed as it is."""
    if isinstance(arg, (In, Tmp)):
        if isinstance(arg, In):
            base = in_specs[arg.index]
            shape, dtype = base.shape, base.dtype
        else:
            shape, dtype = temps[arg.index]
        ndim = len(shape if arg.shape is None else arg.shape)
        like = np.empty((0,) * ndim, dtype=dtype)
        like.flags.writeable = not isinstance(arg, In)
        return fn.typeof_pyval(like)
    return fn.typeof_pyval(arg)


def step_launches(program, specs: dict):
    """``(step, input specs, launch)`` of each step of ``program`` in order, for buffers
    ``specs`` (name -> spec array, holding the program's inputs); each launch's output specs are
    added to ``specs`` before it is yielded. A step without a launch (``None``) is the last."""
    from simulator.run import _plan

    for step, _kind, _params in _plan(program):
        in_specs = [specs[name] for name in step.inputs]
        launch = step_launch(step, in_specs)
        if launch is not None:
            specs.update(zip(step.outputs, (spec(*s) for s in launch.output_specs(in_specs))))
        yield step, in_specs, launch
        if launch is None:
            return


def kernel_signatures(program, feeds: dict) -> list:
    """``[(dispatcher, argument types), ...]`` of the launches of ``program`` for inputs like
    ``feeds`` (name -> array, or anything with ``shape`` and ``dtype``), in program order,
    each signature once; built for the current thread count, as the run builds them."""
    specs = {name: spec(arr.shape, arr.dtype) for name, arr in feeds.items()}
    found = {}
    for _step, in_specs, launch in step_launches(program, specs):
        if launch is None:
            break
        for call in launch.calls:
            if isinstance(call.fn, Dispatcher):
                sig = tuple(_arg_type(call.fn, a, in_specs, launch.temps) for a in call.args)
                found.setdefault((call.fn, sig), None)
    return list(found)


def compile_last_first(signatures) -> tuple[int, int]:
    """Compile ``signatures`` (:func:`kernel_signatures`) from the last one back, stopping at the
    first one the on-disk cache already holds (module docstring). ``(compiled, loaded)``:
    how many this call compiled, and 1 if it stopped on a cached one, else 0."""
    compiled = 0
    for fn, sig in reversed(signatures):
        if sig in fn.overloads:
            continue
        hits = sum(fn.stats.cache_hits.values())
        fn.compile(sig)
        if sum(fn.stats.cache_hits.values()) > hits:
            return compiled, 1
        compiled += 1
    return compiled, 0


__all__ = ["compile_last_first", "kernel_signatures", "step_launches"]
