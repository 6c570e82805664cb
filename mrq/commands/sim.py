"""``mrq sim``: run a quantized model bit-exactly as a hardware profile would."""
import sys
import time

from mrq.commands.common import finite
from mrq.errors import MrqError


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
    p.add_argument("--no-fidelity", action="store_true",
                   help="outputs only: no float reference or per-layer table (the fast path for "
                        "whole validation sets; runs in batches with a progress bar)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="with --no-fidelity: inputs simulated per batch (default 256)")
    p.add_argument("--compile", choices=("auto", "yes", "no"), default="auto",
                   help="with --no-fidelity: run the whole program as one compiled function "
                        "(no per-layer Python; pays off for many small batches). auto: when there "
                        "are at least 64 batches of at most 16 inputs")
    p.set_defaults(func=run)


def run(args) -> int:
    from mrq.api import simulate
    from mrq.fileio import check_writable, load_npz, save_json, save_npz
    from mrq.metrics import format_table

    for path in (args.out, args.report):
        if path:
            check_writable(path)
    feeds = load_npz(args.inputs)
    if args.no_fidelity and args.dump_all:
        raise MrqError("--dump-all writes the intermediate tensors: it cannot be combined with "
                       "--no-fidelity")
    if args.batch_size < 1:
        raise MrqError(f"--batch-size must be >= 1, got {args.batch_size}")
    t0 = time.perf_counter()
    if args.no_fidelity:
        result = _outputs_in_batches(args, feeds)
    else:
        result = simulate(args.model, args.profile, feeds, fidelity=True, trace=args.dump_all,
                          threads=args.threads)
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
    limits = list(result.lowered.limit_violations)
    if limits:
        print(f"warning: the model needs {len(limits)} parameter(s) outside the limits of "
              f"profile {profile_name!r} (first: {limits[0]}); the simulation uses the closest "
              f"legal values, which is not the model's arithmetic. Run `mrq requant` to choose "
              f"grids within the limits.", file=sys.stderr)
    if not args.quiet and args.no_fidelity:
        print(f"{args.model} on {profile_name}: batch {_batch(feeds)} in {elapsed:.2f} s")
        print(f"wrote {args.out}: {', '.join(f'{k} {v.dtype}{list(v.shape)}' for k, v in result.outputs.items())}")
    elif not args.quiet:
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


def _outputs_in_batches(args, feeds):
    """Outputs only, ``--batch-size`` inputs at a time, through the fast (NHWC) program."""
    import numpy as np

    from mrq.api import SimResult
    from mrq.pipeline import Pipeline
    from simulator.run import run

    pipe = Pipeline(args.model, args.profile, layout="nhwc")
    lowered = pipe.lowered
    n = _batch(feeds)
    lengths = {k: (v.shape[0] if np.ndim(v) else None) for k, v in feeds.items()}
    if any(length != n for length in lengths.values()):
        raise MrqError(f"--inputs: every array needs the same leading (batch) dimension; got "
                       f"{', '.join(f'{k} {v}' for k, v in lengths.items())}")
    starts = range(0, max(n, 1), args.batch_size)
    chunks = {}
    stats = {}
    progress = None
    if len(starts) > 1 and not args.quiet:
        from tqdm import tqdm
        progress = tqdm(total=n, unit="input", desc="mrq sim", file=sys.stderr)
    want_compiled = args.compile == "yes" or (
        args.compile == "auto" and args.batch_size <= 16 and len(starts) >= 64)
    compiled = None
    for start in starts:
        part = {k: v[start:start + args.batch_size] for k, v in feeds.items()}
        program, bound = pipe.bind(part)
        if want_compiled and compiled is None:
            compiled = _compile(program, bound, args)
            want_compiled = compiled is not None
        if compiled is not None and all(bound[k].shape == compiled.input_specs[k][0]
                                        for k in bound):
            res = compiled.run(bound)
        else:
            res = run(program, bound, threads=args.threads)
        for name, value in res.outputs.items():
            chunks.setdefault(name, []).append(value)
        stats = res.stats
        if progress is not None:
            progress.update(next(iter(part.values())).shape[0] if part else 0)
    if progress is not None:
        progress.close()
    outputs = {name: np.concatenate(parts) if len(parts) > 1 else parts[0]
               for name, parts in chunks.items()}
    return SimResult(outputs=outputs, stats=stats, lowered=lowered,
                     violations=pipe.violations())


def _compile(program, bound, args):
    """The compiled program for this batch shape, or ``None`` (said on stderr)."""
    import numba

    from simulator.compiled import compile_program, last_reason
    from simulator.run import set_threads

    if args.threads is not None:
        set_threads(args.threads)
    compiled = compile_program(program, bound)
    if compiled is None:
        level = "warning" if args.compile == "yes" else "note"
        print(f"{level}: the program does not compile ({last_reason()}); running it step by "
              f"step", file=sys.stderr)
    elif not args.quiet:
        print(f"compiled the program for batch {args.batch_size} "
              f"({numba.get_num_threads()} thread(s))", file=sys.stderr)
    return compiled


def _batch(feeds) -> int:
    return int(next(iter(feeds.values())).shape[0]) if feeds else 0


