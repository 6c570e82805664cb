"""``mrq sim``: run a quantized model bit-exactly as a hardware profile would."""
import logging
import time

from mrq.commands.common import (
    add_command,
    add_constants,
    add_json,
    add_output,
    finite,
    log,
    model_with_constants,
)
from mrq.errors import MrqError

EXAMPLES = """\
mrq sim model.onnx --profile onnxruntime-cpu --inputs in.npz -o out.npz --json fidelity.json
mrq sim model.onnx --profile nna-sym8 --inputs val.npz -o out.npz --no-fidelity
mrq sim model.tflite --profile litert-default --inputs val.npz -o out.npz --no-fidelity --batch-size 1 --compile yes
"""


# Per-layer fidelity holds every intermediate of a batch twice (integer trace, float64
# reference): a smaller batch keeps a 28x28 MobileNetV2 under 1 GB; outputs-only batches hold
# one layer at a time.
FIDELITY_BATCH = 32
OUTPUTS_BATCH = 256


def register(sub):
    p = add_command(sub, "sim", help="run a quantized model bit-exactly as a hardware profile would",
                    description="Simulate MODEL bit-exactly under a hardware profile, write its outputs "
                    "and print each layer's fidelity against the float reference.",
                    examples=EXAMPLES, quiet_help="do not print the fidelity table or notes")
    p.add_argument("model", help="quantized ONNX (QDQ or QOperator) or TFLite model")
    p.add_argument("--profile", required=True, help="profile name (see `mrq profiles`) or YAML path")
    p.add_argument("--inputs", required=True, help=".npz keyed by graph input name, a bare .npy "
                   "(a model with one input), or a directory of .npz/.npy shards; float32 arrays "
                   "are quantized with the model's input quantization, integer arrays are used "
                   "as codes. Read a batch at a time")
    p.add_argument("--labels", help="integer class labels (.npy/.npz, one per input): report the "
                   "top-1 accuracy of the simulation (and of the float reference)")
    add_output(p, metavar="OUT.npz", help=".npz of the outputs, keyed by graph output name")
    p.add_argument("--dump-all", action="store_true", help="also write every intermediate tensor to --output")
    add_json(p, help="JSON report with the per-layer fidelity", legacy="--report")
    p.add_argument("--threads", type=int, help="CPU threads for the simulation (default: all cores)")
    p.add_argument("--no-fidelity", action="store_true",
                   help="outputs only: no float reference or per-layer table (the fast path for "
                        "whole validation sets; runs in batches with a progress bar)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="inputs simulated per batch: memory grows with it, not with the data set "
                        f"(default {FIDELITY_BATCH}; {OUTPUTS_BATCH} with --no-fidelity)")
    p.add_argument("--compile", choices=("auto", "yes", "no"), default="auto",
                   help="with --no-fidelity: run the whole program as one compiled function "
                        "(no per-layer Python; pays off for many small batches). auto: when there "
                        "are at least 64 batches of at most 16 inputs, or once the batches run so "
                        "far would have paid for compiling (simulator.run). no: never")
    p.add_argument("--stop-before", type=int, metavar="OPERATOR",
                   help="TFLite models: simulate only the operators before this operator index "
                        "(e.g. a CUSTOM post-processing op); its inputs become the outputs")
    add_constants(p)
    p.set_defaults(func=run)


def _model(args):
    """The model path, or with ``--stop-before`` the TFLite graph cut before that operator."""
    if getattr(args, "stop_before", None) is None:
        return model_with_constants(args)
    if not str(args.model).lower().endswith(".tflite"):
        raise MrqError(f"--stop-before needs a .tflite model, got {args.model}")
    from mrq.tflite_import import import_tflite
    return import_tflite(args.model, stop_before=args.stop_before)


def run(args) -> int:
    from mrq.datasets import open_inputs, open_labels
    from mrq.errors import InputDataError
    from mrq.fileio import guard_paths, save_json, stream_npz
    from mrq.metrics import format_table
    from mrq.pipeline import Pipeline
    from mrq.warm_up import cache_is_cold, stop_child_after

    guard_paths([args.model, args.profile, args.inputs, args.labels, args.constants, *args.freeze],
                outputs=[args.output],
                text_outputs=[args.json])
    if args.no_fidelity and args.dump_all:
        raise MrqError("--dump-all writes the intermediate tensors: it cannot be combined with "
                       "--no-fidelity")
    if args.batch_size is None:
        args.batch_size = OUTPUTS_BATCH if args.no_fidelity else FIDELITY_BATCH
    if args.batch_size < 1:
        raise MrqError(f"--batch-size must be >= 1, got {args.batch_size}")
    with open_inputs(args.inputs) as source:
        if source.num_samples == 0:
            raise InputDataError(f"{args.inputs}: no samples (the leading dimension is 0)")
        labels = open_labels(args.labels, source.num_samples) if args.labels else None
        model = _model(args)
        cold = cache_is_cold()   # before lowering, which may compile a helper or two
        pipe = Pipeline(model, args.profile, layout="nhwc" if args.no_fidelity else "native")
        warming = _start_warm_up(args, model, pipe, source) if cold else None
        t0 = time.perf_counter()
        with stop_child_after(warming), stream_npz(args.output) as writer:
            def sink(outputs, trace):
                # outputs first, then every other buffer: the member order of one in-memory run
                writer.append({**outputs, **{k: v for k, v in trace.items() if k not in outputs}})
            result = pipe.stream(source, args.batch_size, fidelity=not args.no_fidelity,
                                 trace=args.dump_all, labels=labels, threads=args.threads,
                                 sink=sink, progress=not args.quiet and "mrq sim",
                                 execute=_executor(args) if args.no_fidelity else None)
            written = {name: (dtype, [rows, *shape])
                       for name, (dtype, shape, rows, _) in writer.layouts.items()}
        elapsed = time.perf_counter() - t0
    outputs = {spec.name: written[spec.name] for spec in pipe.program.outputs}
    n = source.num_samples
    profile_name = pipe.lowered.arithmetic.name
    violations = pipe.violations()
    if violations:
        log.warning(f"the model does not satisfy profile {profile_name!r} "
                    f"({len(violations)} violation(s); first: {violations[0]}); the "
                    f"simulation applies the profile's arithmetic to the model's own grids. "
                    f"Run `mrq requant` to convert the model.")
    limits = list(pipe.lowered.limit_violations)
    if limits:
        log.warning(f"the model needs {len(limits)} parameter(s) outside the limits of "
                    f"profile {profile_name!r} (first: {limits[0]}); the simulation uses the closest "
                    f"legal values, which is not the model's arithmetic. Run `mrq requant` to choose "
                    f"grids within the limits.")
    wrote = f"wrote {args.output}: {', '.join(f'{k} {dt}{shape}' for k, (dt, shape) in outputs.items())}"
    if not args.quiet and args.no_fidelity:
        print(f"{args.model} on {profile_name}: batch {n} in {elapsed:.2f} s")
        print(wrote)
    elif not args.quiet:
        print(format_table(result.layers, title=f"{args.model} on {profile_name} "
                                                 f"(batch {n}, {elapsed:.2f} s)"))
        print(wrote)
    if not args.quiet and labels is not None:
        line = f"top-1 accuracy on {n} labelled inputs: {result.accuracy:.4f}"
        if result.float_accuracy is not None:
            line += f" (float reference {result.float_accuracy:.4f})"
        print(line)
    if args.json:
        from mrq.provenance import provenance
        save_json(args.json, finite({
            "model": args.model, "profile": profile_name, "seconds": elapsed,
            "provenance": provenance(args.model, args.profile, getattr(args, "argv", None)),
            "outputs": {k: {"dtype": str(dt), "shape": shape} for k, (dt, shape) in outputs.items()},
            "samples": n, "batch_size": args.batch_size,
            "accuracy": result.accuracy, "float_accuracy": result.float_accuracy,
            "violations": violations,
            "layers": [row.as_dict() for row in result.layers],
        }))
    return 0


def _start_warm_up(args, model, pipe, source):
    """For a run on a cold JIT cache: a child compiling the program's kernels for this run's
    first batch from the last step back while this process runs it (:mod:`mrq.warm_up`), or
    ``None``."""
    from mrq.errors import InputDataError
    from mrq.warm_up import input_spec, start_precompile, worth_a_child

    if not isinstance(model, str):
        return None   # a graph built here (frozen constants, a cut TFLite model)
    try:
        bound = source.bound_to([spec.name for spec in pipe.program.inputs])
    except InputDataError:
        return None   # the run says what is wrong
    rows = min(args.batch_size, source.num_samples)
    first = {spec.name: ((rows, *spec.shape[1:]), spec.dtype) for spec in pipe.program.inputs}
    if not worth_a_child(pipe.program, first):
        return None
    spec = input_spec({name: ((rows, *bound.shapes[name]), bound.dtypes[name])
                       for name in bound.shapes})
    return start_precompile([(model, args.profile, pipe.layout, spec)], args.threads)


def _executor(args):
    """Runs one bound batch of the outputs-only (NHWC) program: through the compiled program
    when ``--compile`` asks for it (or auto finds many small batches), else step by step."""
    from simulator.run import run

    state = {"want": args.compile == "yes" or (args.compile == "auto" and args.batch_size <= 16),
             "compiled": None}

    def execute(program, bound, n_batches):
        if state["want"] and state["compiled"] is None and (args.compile == "yes" or n_batches >= 64):
            state["compiled"] = _compile(program, bound, args)
            state["want"] = state["compiled"] is not None
        compiled = state["compiled"]
        if compiled is not None and all(bound[k].shape == compiled.input_specs[k][0] for k in bound):
            return compiled.run(bound)
        return run(program, bound, threads=args.threads,
                   compile="no" if args.compile == "no" else "auto")
    return execute


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
