"""The ``mrq`` console script and ``python -m mrq``: a process that *is* mrq.

The interrupt handlers go in before anything heavy is imported (numpy, numba, the commands take
most of a second), so Ctrl-C or ``kill`` during start-up ends the run as cleanly as later on:
``interrupted`` and exit code 130, never a KeyboardInterrupt traceback. ``mrq.cli.main`` itself
installs only the SIGTERM handler, because it also runs inside other programs (tests,
notebooks) whose Ctrl-C is theirs.

Before numpy loads, the process also asks idle worker threads to sleep instead of spinning
(:data:`IDLE_THREADS`, and numba's OpenMP pool's ``simulator.capabilities.OMP_IDLE``, which
spins only ~0.2 ms): OpenBLAS's pool and numba's OpenMP pool each spin for a while after a
parallel region, and a command such as ``mrq requant`` alternates BLAS products and parallel
kernels, so one pool's spinning threads take the cores the other's threads are waiting for
(``mrq requant`` of the QAT MobileNetV2 on 2 cores: 11.9 s of CPU with the libraries' default
spinning, 7.0 s without, for the same work; ``bench/requant_time.py --command``). How idle
threads wait never changes a result; a value the user set wins.

When the command has returned, the process ends through :func:`finish`: the exit handlers run
(logging, temporary files, child processes), the standard streams are flushed, and then the
process exits without the interpreter's finalization, which frees every module and every
compiled kernel one object at a time and took 0.4-0.6 s of each command on a 2-core AMD EPYC
(Zen 3) host (a warm ``mrq demo``: 1.9 s, 1.4 s without it). Every file mrq writes is closed
before the command returns (outputs are written atomically), so nothing is left to flush."""
from __future__ import annotations

import os

# at module level, so that once main() runs its first line installs the handlers: a signal before
# that lands in import-time code only (frames "in <module>"), where Python's own handler is the
# only one a package without import-time side effects can have
from mrq.interrupts import exit_interrupted, install_process_handlers

# environment variable -> value, read by OpenBLAS when it loads; numba's OpenMP pool has its own
# pair (simulator.capabilities.OMP_IDLE), set with it
IDLE_THREADS = {
    "OPENBLAS_THREAD_TIMEOUT": "4",         # spin 2**4 cycles, not 2**28, then sleep
}


def quiet_idle_threads(environ=os.environ) -> None:
    """Set the :data:`IDLE_THREADS` and OpenMP defaults in ``environ`` where the user has not."""
    # imports no numpy: cheap before main()
    from simulator.capabilities import set_omp_idle_defaults

    for name, value in IDLE_THREADS.items():
        environ.setdefault(name, value)
    set_omp_idle_defaults(environ)


def main() -> int:
    try:
        install_process_handlers()
    except KeyboardInterrupt:   # Ctrl-C while the handlers go in: end as they would have
        exit_interrupted()
    quiet_idle_threads()
    from mrq.cli import main as cli_main
    return finish(cli_main())


def finish(code: int) -> int:
    """End the process with exit ``code`` now (module docstring), or return ``code`` for the
    normal exit when another thread still runs (the interpreter would wait for it) or a
    standard stream cannot be flushed (the normal exit reports that as it always did)."""
    import atexit
    import sys
    import threading

    if threading.active_count() > 1:
        return code
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return code
    os._exit(code)
