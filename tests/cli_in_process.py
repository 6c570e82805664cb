"""Run ``mrq`` commands through :func:`mrq.cli.main` inside the test process.

A subprocess costs an interpreter start and the imports of numpy, onnx and numba (about 2 s of
CPU) before the command does anything; most CLI tests check what a command writes and says,
which is the same in-process. Each test file keeps a few real subprocess runs for what only a
process shows (the entry point, exit codes set by the interpreter, signals).

What a process would have printed on stderr is kept: the ``mrq`` log lines (the handler writes
to the ``sys.stderr`` of the moment) and Python warnings (recorded here, formatted as the
interpreter prints them), so a test that wants exactly one line on stderr still sees a stray
warning. An exception that would have been a traceback propagates and fails the test.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass


@dataclass
class Completed:
    """The fields of ``subprocess.CompletedProcess`` the tests read."""
    returncode: int
    stdout: str
    stderr: str


def mrq_in_process(*args) -> Completed:
    import numba

    from mrq.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads = numba.get_num_threads()  # ``--threads`` sets it for the calling thread
    with warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("default")   # the interpreter's own filter: once per location
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:          # argparse: usage errors exit 2, --help exits 0
            code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
        finally:
            numba.set_num_threads(threads)
    stderr = err.getvalue() + "".join(
        warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    return Completed(code, out.getvalue(), stderr)
