"""``mrq sim``: run a quantized model bit-exactly as a hardware profile would."""
import logging
import sys
import time

from mrq.commands.common import add_command, add_json, add_output, finite, log
from mrq.errors import MrqError

EXAMPLES = """\
mrq sim model.onnx --profile onnxruntime-cpu --inputs in.npz -o out.npz --json fidelity.json
mrq sim model.onnx --profile nna-sym8 --inputs val.npz -o out.npz --no-fidelity
mrq sim model.tflite --profile litert-default --inputs val.npz -o out.npz --no-fidelity --batch-size 1 --compile yes
"""


def register(sub):
    p = add_command(sub, "sim", help="run a quantized model bit-exactly as a hardware profile would",
                    description="Simulate MODEL bit-exactly under a hardware profile, write its outputs "
                    "and print each layer's fidelity against the float reference.",
                    examples=EXAMPLES, quiet_help="do not print the fidelity table or notes")
    p.add_argument("model", help="quantized ONNX (QDQ or QOperator) or TFLite model")
    p.add_argument("--profile", required=True, help="profile name (see `mrq profiles`) or YAML path")
    p.add_argument("--inputs", required=True, help=".npz keyed by graph input name; float32 arrays are "
                   "quantized with the model's input quantization, integer arrays are used as codes")
    add_output(p, metavar="OUT.npz", help=".npz of the outputs, keyed by graph output name")
    p.add_argument("--dump-all", action="store_true", help="also write every intermediate tensor to --output")
    add_json(p, help="JSON report with the per-layer fidelity", legacy="--report")
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
    from mrq.fileio import guard_paths, load_npz, save_json, save_npz
    from mrq.metrics import format_table

    guard_paths([args.model, args.profile, args.inputs], outputs=[args.output], text_outputs=[args.json])
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
    save_npz(args.output, arrays)
    profile_name = result.lowered.arithmetic.name
    if result.violations:
        log.warning(f"the model does not satisfy profile {profile_name!r} "
                    f"({len(result.violations)} violation(s); first: {result.violations[0]}); the "
                    f"simulation applies the profile's arithmetic to the model's own grids. "
                    f"Run `mrq requant` to convert the model.")
    limits = list(result.lowered.limit_violations)
    if limits:
        log.warning(f"the model needs {len(limits)} parameter(s) outside the limits of "
                    f"profile {profile_name!r} (first: {limits[0]}); the simulation uses the closest "
                    f"legal values, which is not the model's arithmetic. Run `mrq requant` to choose "
                    f"grids within the limits.")
    if not args.quiet and args.no_fidelity:
        print(f"{args.model} on {profile_name}: batch {_batch(feeds)} in {elapsed:.2f} s")
        print(f"wrote {args.output}: {', '.join(f'{k} {v.dtype}{list(v.shape)}' for k, v in result.outputs.items())}")
    elif not args.quiet:
        print(format_table(result.layers, title=f"{args.model} on {profile_name} "
                                                 f"(batch {_batch(feeds)}, {elapsed:.2f} s)"))
        print(f"wrote {args.output}: {', '.join(f'{k} {v.dtype}{list(v.shape)}' for k, v in result.outputs.items())}")
    if args.json:
        save_json(args.json, finite({
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
        # asked for explicitly, not getting it is a warning; chosen by auto, a note
        log.log(logging.WARNING if args.compile == "yes" else logging.INFO,
                f"{'' if args.compile == 'yes' else 'note: '}the program does not compile "
                f"({last_reason()}); running it step by step")
    else:
        log.info(f"compiled the program for batch {args.batch_size} "
                 f"({numba.get_num_threads()} thread(s))")
    return compiled


def _batch(feeds) -> int:
    return int(next(iter(feeds.values())).shape[0]) if feeds else 0


