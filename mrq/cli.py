"""The ``mrq`` command line. User errors print one line on stderr and exit with code 2."""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from mrq.errors import MrqError

EXIT_USER_ERROR = 2


def _finite(obj):
    """JSON has no Infinity/NaN: spell them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def cmd_profiles(args) -> int:
    from mrq.hw_profile import list_profiles
    rows = list_profiles()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_sim(args) -> int:
    from mrq.api import simulate
    from mrq.fileio import check_writable, load_npz, save_json, save_npz
    from mrq.metrics import format_table

    for path in (args.out, args.report):
        if path:
            check_writable(path)
    feeds = load_npz(args.inputs)
    t0 = time.perf_counter()
    result = simulate(args.model, args.profile, feeds, fidelity=True, trace=args.dump_all)
    elapsed = time.perf_counter() - t0
    arrays = dict(result.outputs)
    if args.dump_all:
        for name, value in result.trace.items():
            arrays.setdefault(name, value)
    save_npz(args.out, arrays)
    profile_name = result.lowered.arithmetic.name
    if result.violations:
        print(f"warning: the model does not satisfy profile {profile_name!r} "
              f"({len(result.violations)} violation(s); first: {result.violations[0]}); the "
              f"simulation applies the profile's arithmetic to the model's own grids. "
              f"Run `mrq requant` to convert the model.", file=sys.stderr)
    if not args.quiet:
        print(format_table(result.layers, title=f"{args.model} on {profile_name} "
                                                 f"(batch {_batch(feeds)}, {elapsed:.2f} s)"))
        print(f"wrote {args.out}: {', '.join(f'{k} {v.dtype}{list(v.shape)}' for k, v in result.outputs.items())}")
    if args.report:
        save_json(args.report, _finite({
            "model": args.model, "profile": profile_name, "seconds": elapsed,
            "outputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in result.outputs.items()},
            "violations": result.violations,
            "layers": [row.as_dict() for row in result.layers],
        }))
    return 0


def _batch(feeds) -> int:
    return int(next(iter(feeds.values())).shape[0]) if feeds else 0


def cmd_demo(args) -> int:
    from mrq.demo import run_demo
    return run_demo(profiles=args.profiles)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrq", description="Re-quantize quantized models for fixed-point "
                                     "accelerators and simulate them bit-exactly.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sim", help="run a quantized model bit-exactly as a hardware profile would")
    p.add_argument("model", help="quantized ONNX (QDQ or QOperator) or TFLite model")
    p.add_argument("--profile", required=True, help="profile name (see `mrq profiles`) or YAML path")
    p.add_argument("--inputs", required=True, help=".npz keyed by graph input name; float32 arrays are "
                   "quantized with the model's input quantization, integer arrays are used as codes")
    p.add_argument("--out", required=True, help=".npz of the outputs, keyed by graph output name")
    p.add_argument("--dump-all", action="store_true", help="also write every intermediate tensor to --out")
    p.add_argument("--report", help="JSON report with the per-layer fidelity")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the fidelity table")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("profiles", help="list the shipped hardware profiles")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("demo", help="simulate a built-in example model under two profiles")
    p.add_argument("--profiles", nargs="+", default=["onnxruntime-cpu", "tflite-int8"])
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    from simulator.errors import KernelInputError, AccumulatorOverflowError
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (MrqError, KernelInputError, AccumulatorOverflowError) as exc:
        print(f"mrq {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
