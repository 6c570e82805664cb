"""The ``mrq`` command line. User errors print one line on stderr and exit with code 2.

Subcommands live in :mod:`mrq.commands`, one module each, discovered at start-up."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import mrq.commands
from mrq.errors import MrqError

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrq", description="Re-quantize quantized models for fixed-point "
                                     "accelerators and simulate them bit-exactly.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(mrq.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"mrq.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv=None) -> int:
    from simulator.errors import SimulatorError
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (MrqError, SimulatorError) as exc:
        # an error may carry several problems (HwProfileError: one per line); each line gets
        # the prefix so every line on stderr reads on its own
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"mrq {args.command}: error: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
