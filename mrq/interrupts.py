"""How an ``mrq`` process ends when it is interrupted (Ctrl-C, ``kill``).

SIGINT and SIGTERM end the process the same way: this process's temporaries that hold only new
content are removed, registered clean-ups run (a sweep closes its Dask cluster), ``interrupted``
goes to stderr and the exit code is 130. The handler exits instead of raising
KeyboardInterrupt because an exception raised in a signal handler can unwind through a native
extension's callback (seen: a nanobind enum constructor during import ended in a C++ terminate,
and about one SIGINT in a hundred ended in SIGSEGV inside the JIT compiler). Nothing has been
renamed into place outside a :func:`critical` section, and a signal that arrives inside one waits
for its end, so exiting at once loses nothing the user had.

This module imports nothing heavy: the console script installs the handlers before it imports
numpy, numba or the commands, so an interrupt during start-up is as clean as one later on."""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from contextlib import contextmanager

# This process's temporaries that hold only new content: removing them on interrupt loses nothing.
_DISCARDABLE: set = set()
_CLEANUPS: list = []
_critical_depth = 0
_pending = False
_installed: set = set()


def _on_signal(signum, frame):
    global _pending
    if _critical_depth:
        _pending = True
        return
    exit_interrupted()


def exit_interrupted() -> None:
    """Remove this process's discardable temporaries, run the registered clean-ups and exit 130."""
    import shutil  # here, not at the top: installing the handlers must not wait for its imports
    for path in list(_DISCARDABLE):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.unlink(path)
        except OSError:
            pass
    for cleanup in list(_CLEANUPS):   # noqa: PERF101  (a clean-up may unregister itself)
        try:
            cleanup()
        except Exception:   # noqa: BLE001,S110  (a clean-up that fails must not stop the exit)
            pass
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(130)


@contextmanager
def critical():
    """A step that must not be cut in half by an interrupt (renaming a result into place,
    swapping a golden set): a signal that arrives inside waits for its end."""
    global _critical_depth
    _critical_depth += 1
    try:
        yield
    finally:
        _critical_depth -= 1
        if not _critical_depth and _pending:
            exit_interrupted()


def discardable(path: str) -> str:
    """Register a temporary that holds only new content (removed if an interrupt ends the run)."""
    _DISCARDABLE.add(path)
    return path


def forget(path: str) -> None:
    _DISCARDABLE.discard(path)


def on_interrupt(cleanup: Callable[[], None]) -> Callable[[], None]:
    """Run ``cleanup`` (quick, no exceptions expected) if an interrupt ends the process; returns
    a function that unregisters it."""
    _CLEANUPS.append(cleanup)
    return lambda: _CLEANUPS.remove(cleanup) if cleanup in _CLEANUPS else None


def _install(signum: int, only_if) -> None:
    if signum in _installed:
        return
    try:
        if signal.getsignal(signum) in only_if:
            signal.signal(signum, _on_signal)
    except ValueError:
        pass  # not the main thread (mrq used as a library): the host owns its signals
    _installed.add(signum)


def install_sigterm() -> None:
    """SIGTERM ends the run cleanly, unless the host program chose its own handler. Commands
    run in-process (``mrq.cli.main`` from a test or a notebook) get only this one: Ctrl-C stays
    the host's KeyboardInterrupt there."""
    _install(signal.SIGTERM, (signal.SIG_DFL,))


def install_process_handlers() -> None:
    """For a process that *is* mrq (the console script, ``python -m mrq``): SIGINT too, first
    (until it is in, a Ctrl-C is Python's KeyboardInterrupt, which ``mrq.entry.main`` ends)."""
    _install(signal.SIGINT, (signal.default_int_handler, signal.SIG_DFL))
    install_sigterm()
