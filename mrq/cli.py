"""The ``mrq`` command line. User errors print one line on stderr and exit with code 2.

Subcommands live in :mod:`mrq.commands`, one module each, discovered at start-up; the options
they share are made in :mod:`mrq.commands.common`. This module sets up what is the same for
all of them: ``--version``, the ``mrq`` logger on stderr (``-q``/``-v``), the notice before the
simulator's kernels are compiled, and a quiet end when stdout is a pipe whose reader has gone
(``mrq check ... | head -1``)."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import threading
import time

import mrq
import mrq.commands
from mrq.errors import MrqError

EXIT_USER_ERROR = 2

log = logging.getLogger("mrq")

COMPILE_NOTICE = "compiling kernels for this machine (first run only)..."


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command`` alone when a module of
    :mod:`mrq.commands` has that name: each command module imports what its options need, and
    some import much (``sweep``: the passes), so a process that runs one command registers only
    that one (the parse result is the same)."""
    parser = argparse.ArgumentParser(
        prog="mrq", description="Re-quantize quantized models for fixed-point accelerators and "
        "simulate them bit-exactly.",
        epilog="examples:\n"
               "  mrq demo\n"
               "  mrq profiles\n"
               "  mrq check model.onnx --profile nna-sym8\n"
               "  mrq requant model.onnx --profile nna-sym8 -o model_nna.onnx --calib calib.npz\n"
               "  mrq COMMAND --help          the options and examples of one command\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {mrq.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = sorted(info.name for info in pkgutil.iter_modules(mrq.commands.__path__))
    if command in names:
        names = [command]
    for name in names:
        module = importlib.import_module(f"mrq.commands.{name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


class _Formatter(logging.Formatter):
    """``warning: ...``/``debug: ...``; errors as ``mrq COMMAND: error: ...`` (the form of
    every user error), one prefix per line so each line on stderr reads on its own."""

    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            prefix = f"mrq {self.command}: error: "
        elif record.levelno >= logging.WARNING:
            prefix = "warning: "
        elif record.levelno < logging.INFO:
            prefix = "debug: "
        else:
            return text
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (tests and callers swap it), and a reader
    that went away is not an error worth a logging traceback."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass

    def handleError(self, record):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ValueError)):
            super().handleError(record)


def configure_logging(command: str, quiet: bool = False, verbose: bool = False) -> None:
    """The ``mrq`` logger: one stderr handler (replaced, not added, when ``main`` runs again in
    the same process), INFO by default, WARNING with ``-q``, DEBUG with ``-v``."""
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(command))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def _kernel_cache_is_cold() -> bool:
    """Whether the simulator's JIT cache directory for the current sources and kernel path is
    missing or empty, i.e. every kernel this run needs will be compiled."""
    try:
        from simulator.kernels import jitcache
        return jitcache.is_cold()
    except (ImportError, OSError):   # a cache we cannot inspect: let the timer decide
        return False


class _CompileNotice:
    """Says once on stderr that kernels are being compiled, so a first run's 20 s to 2 min is
    not taken for a hang. numba fires ``numba:compile`` only after its on-disk cache had
    nothing for a signature. With a cold cache directory the notice comes at the first
    compilation; with a warm one, a few kernels may still be compiled in every run (under a
    second), so the notice waits until compiling has gone on for :data:`LATE_S`. With ``-v``,
    one line per compiled function; at the end, how many were compiled."""

    LATE_S = 2.0

    def __init__(self):
        self.count = 0
        self.depth = 0
        self.started = None
        self.seconds = 0.0
        self.announced = False
        self.timer = None

    def _announce(self):
        if not self.announced:
            self.announced = True
            log.info(COMPILE_NOTICE)

    def _late(self):
        if self.depth > 0:
            self._announce()

    def on_start(self, event):
        self.depth += 1
        if self.depth > 1:   # a function compiled as part of another one: counted with it
            return
        if self.count == 0 and self.timer is None:
            if _kernel_cache_is_cold():
                self._announce()
            else:
                self.timer = threading.Timer(self.LATE_S, self._late)
                self.timer.daemon = True
                self.timer.start()
        self.started = time.perf_counter()

    def on_end(self, event):
        self.depth -= 1
        if self.depth:
            return
        self.count += 1
        elapsed = time.perf_counter() - self.started
        self.seconds += elapsed
        if log.isEnabledFor(logging.DEBUG):
            disp = (event.data or {}).get("dispatcher")
            func = getattr(disp, "py_func", None)
            name = f"{func.__module__}.{func.__qualname__}" if func else "a function"
            log.debug(f"compiled {name} in {elapsed:.1f} s")

    def done(self):
        if self.timer is not None:
            self.timer.cancel()
        if self.count:
            log.log(logging.INFO if self.announced else logging.DEBUG,
                    f"compiled {self.count} kernel(s) in {self.seconds:.1f} s")


def _watch_compilation():
    """A :class:`_CompileNotice` registered with numba, or None where numba has no event API."""
    try:
        from numba.core import event
    except ImportError:
        return None
    notice = _CompileNotice()

    class Listener(event.Listener):
        def on_start(self, ev):
            notice.on_start(ev)

        def on_end(self, ev):
            notice.on_end(ev)

    listener = Listener()
    event.register("numba:compile", listener)
    notice.unregister = lambda: event.unregister("numba:compile", listener)
    return notice


class _PipeSafeStdout:
    """``sys.stdout`` for the duration of a command: when the reader of a pipe goes away the
    rest of the output is dropped and the command runs to its own exit code (a check's 1 stays
    1), instead of a BrokenPipeError traceback."""

    def __init__(self, stream):
        self._stream = stream
        self.reader_gone = False

    def write(self, text):
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self):
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self):
        self.reader_gone = True
        # the interpreter flushes stdout once more at exit; with the descriptor on /dev/null
        # that flush has nowhere left to fail
        try:
            fd = self._stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv=None) -> int:
    from simulator.errors import SimulatorError
    given = list(sys.argv[1:] if argv is None else argv)
    # a first word that is not an option names the command (the top level has options only)
    parser = build_parser(given[0] if given and not given[0].startswith("-") else None)
    args = parser.parse_args(given)
    # the command line as given, for the provenance of reports (mrq/provenance.py)
    args.argv = given
    configure_logging(args.command, quiet=getattr(args, "quiet", False),
                      verbose=getattr(args, "verbose", False))
    notice = _watch_compilation() if getattr(args, "simulates", False) else None
    real_stdout = sys.stdout
    sys.stdout = out = _PipeSafeStdout(real_stdout)
    started = time.perf_counter()
    try:
        code = args.func(args)
        log.debug(f"mrq {args.command} finished in {time.perf_counter() - started:.2f} s, "
                  f"exit code {code}")
        return code
    except (MrqError, SimulatorError) as exc:
        # an error may carry several problems (HwProfileError: one per line); the formatter
        # gives each line the prefix
        log.error(str(exc) or type(exc).__name__)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # written past the wrapper (``sys.stdout.buffer``, e.g. binary output to ``-o -``): the
        # command was cut short, so its own exit code is unknown; the reader left on purpose
        out._drop()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        # flushed here, on every path, so the interpreter's own flush at exit has nothing left
        # that could meet a closed pipe
        out.flush()
        sys.stdout = real_stdout
        if notice is not None:
            notice.unregister()
            notice.done()


if __name__ == "__main__":
    from mrq.interrupts import install_process_handlers
    install_process_handlers()
    sys.exit(main())
