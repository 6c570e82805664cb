"""Helpers shared by subcommands, and the command-line conventions every command follows.

Every command is made with :func:`add_command`, which gives it ``-q/--quiet``, ``-v/--verbose``
and an ``examples:`` epilog; a command that writes a file or directory takes it with
:func:`add_output` (``-o/--output``) and a JSON report with :func:`add_json` (``--json FILE``).
The spellings of 0.1.0's first drafts (``--out``, ``--report``) are accepted, hidden from
``--help``, for one release.

Messages go through the ``mrq`` logger (:data:`log`), configured once by :mod:`mrq.cli` on
stderr; what a command produces (a table, a result line) is printed on stdout."""
from __future__ import annotations

import argparse
import logging
import math
import textwrap

log = logging.getLogger("mrq")


def finite(obj):
    """JSON has no Infinity/NaN: spell them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def epilog(examples: str, preamble: str = "") -> str:
    """An ``examples:`` epilog (kept as written: the parsers use RawDescriptionHelpFormatter)."""
    text = "examples:\n" + textwrap.indent(textwrap.dedent(examples).strip("\n"), "  ") + "\n"
    return (textwrap.dedent(preamble).strip("\n") + "\n\n" + text) if preamble else text


def add_verbosity(p: argparse.ArgumentParser, quiet_help: str | None = None, nested: bool = False):
    """``-q/--quiet`` and ``-v/--verbose``. ``nested``: ``p`` is a subcommand of a command that
    already has them; its options then default to nothing, so they do not reset what was given
    one level up (``mrq profiles -q show X``)."""
    default = argparse.SUPPRESS if nested else False
    g = p.add_argument_group("output verbosity")
    g.add_argument("-q", "--quiet", action="store_true", default=default,
                   help=quiet_help or "print only warnings and errors on stderr")
    g.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="also print debugging messages on stderr")


def add_command(sub, name: str, *, help: str, examples: str, description: str | None = None,
                preamble: str = "", quiet_help: str | None = None,
                simulates: bool = True) -> argparse.ArgumentParser:
    """A subcommand parser with the shared options. ``simulates``: the command may run the
    simulator, so :mod:`mrq.cli` says when its kernels get compiled."""
    # RawDescriptionHelpFormatter keeps the examples as written, so the prose is wrapped here
    p = add_parser(sub, name, help=help, description=description and textwrap.fill(description, 79),
                   epilog_text=epilog(examples, preamble), quiet_help=quiet_help)
    p.set_defaults(simulates=simulates)
    return p


def add_parser(sub, name: str, *, help: str, description: str | None, epilog_text: str,
               quiet_help: str | None = None, nested: bool = False) -> argparse.ArgumentParser:
    """A (sub)command parser whose epilog is kept as written, with ``-q``/``-v``; ``nested``
    for the subcommands of a command (``mrq profiles show``), see :func:`add_verbosity`."""
    p = sub.add_parser(name, help=help, description=description, epilog=epilog_text,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbosity(p, quiet_help, nested=nested)
    return p


def add_output(p: argparse.ArgumentParser, *, help: str, metavar: str = "FILE",
               required: bool = True) -> None:
    """``-o/--output`` into ``args.output``; ``--out`` is its hidden former spelling. A
    mutually exclusive group is what lets argparse require one of two spellings, and its
    message names only the visible one."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("-o", "--output", dest="output", metavar=metavar, help=help)
    g.add_argument("--out", dest="output", metavar=metavar, help=argparse.SUPPRESS)


def add_json(p: argparse.ArgumentParser, *, help: str, legacy: str | None = None) -> None:
    """``--json FILE`` into ``args.json``; ``legacy`` is a hidden former spelling (``--report``)."""
    p.add_argument("--json", dest="json", metavar="FILE", help=help)
    if legacy:
        p.add_argument(legacy, dest="json", metavar="FILE", help=argparse.SUPPRESS)


def add_constants(p: argparse.ArgumentParser) -> None:
    """``--constants FILE.npz`` / ``--freeze NAME=FILE.npy``: values for ONNX graph inputs that
    hold quantization parameters (scales, zero points), which the simulator needs fixed."""
    g = p.add_argument_group("constant graph inputs (ONNX)")
    g.add_argument("--constants", metavar="FILE.npz",
                   help="values of graph inputs that are constants (scales, zero points), keyed "
                        "by input name; they become initializers")
    g.add_argument("--freeze", action="append", default=[], metavar="NAME=FILE.npy",
                   help="one graph input's constant value (repeatable)")


def constant_inputs(args) -> dict:
    """name -> array from ``--constants``/``--freeze`` (empty when neither is given)."""
    import numpy as np

    from mrq.errors import MrqError
    from mrq.fileio import check_npy_file, load_npz

    values = dict(load_npz(args.constants)) if getattr(args, "constants", None) else {}
    for item in getattr(args, "freeze", None) or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise MrqError(f"--freeze {item!r}: expected NAME=FILE.npy")
        if name in values:
            raise MrqError(f"--freeze {name}: the input is given twice")
        check_npy_file(path)
        values[name] = np.load(path, allow_pickle=False)
    return values


def model_with_constants(args):
    """``args.model``, or its imported graph with the constant inputs frozen."""
    values = constant_inputs(args)
    if not values:
        return args.model
    from mrq.errors import MrqError
    from mrq.onnx_import import import_onnx, load_onnx
    if str(args.model).lower().endswith(".tflite"):
        raise MrqError("--constants/--freeze apply to ONNX models (a TFLite model has no "
                       "parameter inputs)")
    return import_onnx(load_onnx(args.model), source=args.model, constants=values)
