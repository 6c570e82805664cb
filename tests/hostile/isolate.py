"""Run one CLI call in a separate process with a deadline and an address-space cap, for the
corpus cases that would hang (a FIFO opened for reading) or allocate without bound (a declared
size trusted) if a fix regressed: the regression then fails its case instead of stalling or
swapping the test run.

The processes come from a ``forkserver``: a fresh interpreter started once per test process
(forking the test process itself is unsafe once the simulator has used OpenMP), with mrq's
modules imported once, so a case costs a fork, not an interpreter start."""
from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import resource
import traceback

HEADROOM_BYTES = 1 << 30   # what a case may map beyond what the process had at its start
# imported once by the fork server, so that a case does not pay for them (none starts threads)
PRELOAD = ["tests.hostile.isolate", "mrq.cli", *(f"mrq.commands.{c}" for c in (
    "check", "compare", "golden", "profiles", "requant", "sim", "verify")),
    "mrq.api", "mrq.pipeline", "mrq.onnx_import", "mrq.tflite_import", "mrq.golden", "mrq.verify",
    "mrq.compare", "mrq.datasets", "mrq.requant", "mrq.onnx_export", "mrq.lower", "mrq.float_ref"]
_ctx = None


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def run_in_process(argv) -> tuple:
    """(exit code or what ended the call, stderr, stdout) of ``mrq.cli.main(argv)``."""
    from mrq.cli import main
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:   # argparse: a mistake in the corpus, reported as such
            code = f"SystemExit({exc.code})"
        except BaseException:  # noqa: BLE001 - any escape from main is what the case reports
            code = "exception"
            err.write(traceback.format_exc())
    return code, err.getvalue(), out.getvalue()


def _child(argv, conn) -> None:   # pragma: no cover - runs in the child
    try:
        cap = _vm_size() + HEADROOM_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        result = run_in_process(argv)
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the case
        result = ("exception", traceback.format_exc(), "")
    conn.send(result)
    conn.close()
    # no interpreter teardown: the result is sent, and exit handlers (thread pools, atexit
    # hooks of the libraries mrq imported) could only make the parent wait
    os._exit(0)


def run_isolated(argv, deadline_s: float) -> tuple:
    """:func:`run_in_process` in a child process, killed at ``deadline_s``."""
    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(list(argv), child), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(deadline_s):
            proc.kill()
            return "timeout", f"no end within {deadline_s} s", ""
        try:
            return parent.recv()
        except EOFError:
            return "crash", f"the child process died (exit code {proc.exitcode})", ""
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        parent.close()


def _context():
    global _ctx
    if _ctx is None:
        _ctx = multiprocessing.get_context("forkserver")
        _ctx.set_forkserver_preload(PRELOAD)
    return _ctx


def start() -> None:
    """Start the fork server now, without waiting: it imports :data:`PRELOAD` in the
    background while the caller prepares its cases."""
    from multiprocessing import forkserver
    _context()
    forkserver.ensure_running()
