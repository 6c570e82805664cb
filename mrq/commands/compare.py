"""``mrq compare``: one model under several profiles, in one self-contained HTML report."""

EXAMPLES = """\
mrq compare model.onnx --profiles nna-sym8 nna-sym8-pow2 --inputs data.npz -o report.html
mrq compare model.onnx --profiles onnxruntime-cpu nna-sym8 --inputs val.npz --labels labels.npy \\
    --calib calib.npz -o report.html --json report.json
mrq compare model.onnx --profiles nna-sym8 nna-w4a8 --inputs val/ --labels labels.npy \\
    --max-loss 0.5 -o report.html      exit 1 unless every profile PASSes
"""

# the report's plots; the extra is checked before any simulation, which can take minutes
REPORT_EXTRA = 'pip install "mrq-nna[report]"'


def register(sub):
    from mrq.commands.common import add_command, add_json, add_output
    p = add_command(sub, "compare", examples=EXAMPLES,
                    quiet_help="no progress bar and no notes on stderr",
                    help="run a model under several profiles and write an HTML report "
                       "(accuracy with 95%% intervals, change vs the input model, verdicts, per-layer "
                       "SQNR single vs accumulated, saturation, bias headroom, overflows, memory)",
                       description="Simulate MODEL under each profile (re-quantizing where the model "
                       "does not satisfy it and the re-quantizer is available) and the input model as "
                       "given under its own runtime (the baseline row), compare with the float "
                       "reference, print a table and write one self-contained HTML report. With "
                       "--max-loss each profile gets a verdict on its accuracy change against the "
                       "input model (95%% paired interval): PASS, FAIL or INCONCLUSIVE; the exit code "
                       "is 1 unless every profile passes.")
    p.add_argument("model", help="quantized ONNX (QDQ or QOperator) or TFLite model")
    p.add_argument("--profiles", nargs="+", required=True, metavar="PROFILE",
                   help="profile names (see `mrq profiles`) or YAML paths")
    p.add_argument("--inputs", required=True,
                   help="evaluation inputs: .npz keyed by graph input name, .npy, or a directory of "
                        "such shards (read a batch at a time)")
    p.add_argument("--labels", help="integer class labels, one per sample (.npy, .npz or shards), "
                   "for accuracy")
    p.add_argument("--max-loss", type=float, metavar="POINTS",
                   help="accuracy points a profile may lose against the input model (e.g. 0.5); "
                        "gives each profile a PASS/FAIL/INCONCLUSIVE verdict")
    p.add_argument("--baseline", metavar="PROFILE",
                   help="the runtime whose simulation is the input model's accuracy (default: "
                        "onnxruntime-cpu for ONNX, litert-default for TFLite)")
    p.add_argument("--calib", help=".npz of calibration inputs for re-quantization (default: data-free)")
    add_output(p, metavar="REPORT.html", help="HTML report to write (needs matplotlib: "
               + REPORT_EXTRA + ")")
    add_json(p, help="also write the numbers as JSON")
    p.add_argument("--batch-size", type=int, default=64, help="samples simulated per batch (default 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import importlib.util
    import math

    from mrq.commands.common import finite
    from mrq.compare import format_table, run_compare, write_report
    from mrq.datasets import open_inputs, open_labels
    from mrq.errors import InputDataError, MrqError
    from mrq.fileio import guard_paths, save_json
    from mrq.onnx_import import load_model
    from mrq.warm_up import cache_is_cold, stop_child_after

    guard_paths([args.model, *args.profiles, args.inputs, args.labels, args.calib, args.baseline],
                text_outputs=[args.output, args.json])
    if importlib.util.find_spec("matplotlib") is None:
        raise MrqError(f"the HTML report's plots need matplotlib, which is not installed; "
                       f"install it with: {REPORT_EXTRA}")
    if args.batch_size < 1:
        raise InputDataError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_loss is not None and not (math.isfinite(args.max_loss) and 0 <= args.max_loss <= 100):
        raise InputDataError(f"--max-loss must be a number of accuracy points in 0..100, got {args.max_loss}")
    cold = cache_is_cold()   # before anything compiles a helper
    graph = load_model(args.model)
    with open_inputs(args.inputs) as source:
        source = source.bound_to(list(graph.inputs))
        _check_inputs(args.inputs, source, graph)
        labels = open_labels(args.labels, source.num_samples) if args.labels else None
        calib = None
        if args.calib:
            # the first DEFAULT_CALIB_LIMIT samples, read lazily (as mrq requant does)
            from mrq.datasets import DEFAULT_CALIB_LIMIT, read_calibration
            calib = read_calibration(args.calib, list(graph.inputs), DEFAULT_CALIB_LIMIT).arrays
        if calib is not None:
            # checked now, not only if some profile needs re-quantizing: a bad file is an error
            from mrq.requant import check_calibration
            try:
                calib = check_calibration(graph, calib)
            except InputDataError as exc:
                raise InputDataError(f"{args.calib}: {exc}") from None
        warming = _start_warm_up(args, source) if cold else None
        with stop_child_after(warming):
            result = run_compare(args.model, args.profiles, source, labels=labels,
                                 batch_size=args.batch_size,
                                 progress=not (args.no_progress or args.quiet), calib=calib,
                                 baseline=args.baseline, max_loss=args.max_loss,
                                 argv=getattr(args, "argv", None), graph=graph)
    print(format_table(result))
    write_report(result, args.output)
    print(f"wrote {args.output}")
    if args.json:
        save_json(args.json, finite(result.as_dict()))
    return 0 if result.ok else 1


def _start_warm_up(args, source):
    """For a comparison on a cold JIT cache: a child compiling every profile's program for the
    first batch, from the last kernel back, while this process simulates the profiles in order
    (:mod:`mrq.warm_up`). It lowers the model file under each profile: where the comparison
    re-quantizes the model first, the programs have the same steps and formats, hence mostly
    the same kernels; a kernel it compiles for nothing costs CPU, never a result."""
    from mrq.warm_up import input_spec, start_precompile

    rows = min(args.batch_size, source.num_samples)
    spec = input_spec({name: ((rows, *source.shapes[name]), source.dtypes[name])
                       for name in source.shapes})
    profiles = list(args.profiles) + ([args.baseline] if args.baseline else [])
    return start_precompile([(args.model, profile, "native", spec) for profile in profiles])


def _check_inputs(path: str, source, graph) -> None:
    """The names and per-sample shapes of ``--inputs`` against the model's inputs, before the
    float reference and the simulations read them (their errors would be numpy's)."""
    import numpy as np

    from mrq.errors import InputDataError
    from mrq.pipeline import _check_shape

    missing = sorted(set(graph.inputs) - set(source.names))
    unknown = sorted(set(source.names) - set(graph.inputs))
    if missing or unknown:
        raise InputDataError(f"{path}: " + "; ".join(
            [f"missing input(s) {', '.join(map(repr, missing))}"] * bool(missing)
            + [f"unknown input(s) {', '.join(map(repr, unknown))}"] * bool(unknown))
            + f" (the model's inputs: {', '.join(map(repr, graph.inputs))})")
    for name in graph.inputs:
        # one sample's shape and dtype, no memory (every element is the same zero)
        shape = (1,) + tuple(source.shapes[name])
        one = np.lib.stride_tricks.as_strided(np.zeros(1, source.dtypes[name]), shape, (0,) * len(shape))
        try:
            _check_shape(name, tuple(graph.tensors[name].shape), one)
        except InputDataError as exc:
            raise InputDataError(f"{path}: {exc}") from None
