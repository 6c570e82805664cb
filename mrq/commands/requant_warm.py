"""The first ``mrq requant`` on a fresh machine: compile the check's kernels in a child process.

With calibration data, ``mrq requant`` ends by simulating the re-quantized model on it (the
end-to-end SQNR). On an empty JIT cache that simulation compiles about a dozen simulator
kernels, after the passes have compiled their own float kernels (~6 s of CPU for the QAT
MobileNetV2) and done their work. numba compiles under one lock per process, so the two would
run one after the other. Instead, a child process (:func:`warm_up`) re-quantizes the same model
naively (no calibration data: a fraction of a second, no float kernels), simulates the result
on zeros shaped like the calibration batch, and so leaves the check's kernels in the shared
on-disk cache while this process runs the passes. The naive model has the profile's formats and
the same layers, hence the same kernel specialisations; a kernel it misses is compiled by this
process as before. This process waits for the child before its own simulation
(:meth:`CheckWarmUp.wait`), then loads the kernels instead of compiling them. The child's
output is thrown away and it writes nothing but the cache: the results are this process's own.

The child is started when the simulator's cache is cold (the first run on a machine, or after an
edit of the simulator). On a warm cache every run would pay its start-up (~1.2 s of CPU), while a
model or profile whose kernels are still missing is the exception; that run compiles them here.

The check runs single-threaded (:func:`check_threads`) when the profile's accumulator wraps:
at calibration sizes the fast integer paths make it a small part of the command (0.2 s of CPU
of ~4 s for the MobileNetV2's 512 images), and the simulator's parallel drivers cost more to
compile than their kernels (~8 of the ~17 s of CPU the check's kernels took to compile with
them). An exactly simulated saturating (or overflow-checking) accumulator is slow
(nna-sym8-acc16: ~6 s of CPU): there the threads pay, and no child is started (which parallel
driver a layer takes depends on the batch, and a child running the whole slow simulation would
only make this process wait). Threads do not change the simulator's results.

The child simulates at most :data:`WARM_UP_BATCH` samples: single-threaded, the kernels chosen
depend on the batch only below a few rows (batch-1 matrix-vector kernels), and running the
whole calibration batch would keep this process waiting for nothing.
"""
from __future__ import annotations

import json
import subprocess

import numpy as np

WARM_UP_BATCH = 16


def check_threads(profile) -> int | None:
    """Threads of the check's simulation (module docstring): 1 for a wrapping accumulator, else
    None (the current setting): a saturating or overflow-checking one is simulated exactly."""
    return 1 if profile.accumulator.overflow == "wrap" else None


def warm_up(model: str, profile: str, inputs: dict) -> None:
    """Simulate ``model`` naively re-quantized to ``profile`` on zeros as ``mrq requant``'s
    check simulates it; ``inputs``: :func:`mrq.warm_up.input_spec` of the calibration data.
    Fills the JIT cache with the kernels of that check."""
    from mrq.api import resolve_profile, simulate
    from mrq.onnx_import import load_model
    from mrq.passes.base import feeds_for_new_graph
    from mrq.requant import naive_options, requantize

    profile = resolve_profile(profile)
    graph = load_model(model)
    new, _ = requantize(graph, profile, None, naive_options())
    feeds = {name: np.zeros((min(shape[0], WARM_UP_BATCH), *shape[1:]), dtype)
             for name, (dtype, shape) in inputs.items()}
    simulate(new, profile, feeds_for_new_graph(graph, new, feeds), fidelity=False, threads=1)


class CheckWarmUp:
    """The child running :func:`warm_up`, or nothing to wait for (:meth:`start`)."""

    def __init__(self, process: subprocess.Popen | None):
        self.process = process

    @classmethod
    def start(cls, model, profile_arg: str, profile, calib: dict | None) -> CheckWarmUp:
        """Start the child when the check will run (calibration data given) single-threaded on a
        model file (not a graph with frozen constants: ``model`` None or a graph starts nothing)
        and the simulator's cache is cold. ``profile_arg``: the profile as the user named it,
        ``profile`` as resolved."""
        if calib is None or not isinstance(model, str) or check_threads(profile) != 1:
            return cls(None)
        from mrq.warm_up import cache_is_cold, input_spec, start_child

        if not cache_is_cold():
            return cls(None)
        code = ("import json, sys; from mrq.commands.requant_warm import warm_up; "
                "warm_up(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))")
        spec = input_spec({name: (np.shape(a), np.asarray(a).dtype) for name, a in calib.items()})
        return cls(start_child(code, model, profile_arg, json.dumps(spec)))

    def wait(self) -> None:
        """Until the child is done: its kernels are (being) compiled, and loading them beats
        compiling them again; a failed child only means this process compiles them."""
        if self.process is not None:
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        """Kill a child still running (the command failed or was interrupted before its check)."""
        from mrq.warm_up import stop_child

        stop_child(self.process)
        self.process = None
