"""``mrq sim``: run a quantized model bit-exactly as a hardware profile would."""
import sys
import time

from mrq.commands.common import finite


def register(sub):
    p = sub.add_parser("sim", help="run a quantized model bit-exactly as a hardware profile would")
    p.add_argument("model", help="quantized ONNX (QDQ or QOperator) or TFLite model")
    p.add_argument("--profile", required=True, help="profile name (see `mrq profiles`) or YAML path")
    p.add_argument("--inputs", required=True, help=".npz keyed by graph input name; float32 arrays are "
                   "quantized with the model's input quantization, integer arrays are used as codes")
    p.add_argument("--out", required=True, help=".npz of the outputs, keyed by graph output name")
    p.add_argument("--dump-all", action="store_true", help="also write every intermediate tensor to --out")
    p.add_argument("--report", help="JSON report with the per-layer fidelity")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the fidelity table")
    p.add_argument("--threads", type=int, help="CPU threads for the simulation (default: all cores)")
    p.set_defaults(func=run)


def run(args) -> int:
    from mrq.api import simulate
    from mrq.fileio import check_writable, load_npz, save_json, save_npz
    from mrq.metrics import format_table

    for path in (args.out, args.report):
        if path:
            check_writable(path)
    feeds = load_npz(args.inputs)
    t0 = time.perf_counter()
    result = simulate(args.model, args.profile, feeds, fidelity=True, trace=args.dump_all, threads=args.threads)
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
        save_json(args.report, finite({
            "model": args.model, "profile": profile_name, "seconds": elapsed,
            "outputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in result.outputs.items()},
            "violations": result.violations,
            "layers": [row.as_dict() for row in result.layers],
        }))
    return 0


def _batch(feeds) -> int:
    return int(next(iter(feeds.values())).shape[0]) if feeds else 0


