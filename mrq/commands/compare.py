"""``mrq compare``: one model under several profiles, in one self-contained HTML report."""

EXAMPLES = """\
mrq compare model.onnx --profiles nna-sym8 nna-sym8-pow2 --inputs data.npz -o report.html
mrq compare model.onnx --profiles onnxruntime-cpu nna-sym8 --inputs val.npz --labels labels.npy \\
    --calib calib.npz -o report.html --json report.json
"""

# the report's plots; the extra is checked before any simulation, which can take minutes
REPORT_EXTRA = 'pip install "mrq-nna[report]"'


def register(sub):
    from mrq.commands.common import add_command, add_json, add_output
    p = add_command(sub, "compare", examples=EXAMPLES,
                    quiet_help="no progress bar and no notes on stderr",
                    help="run a model under several profiles and write an HTML report "
                       "(accuracy/agreement, per-layer SQNR single vs accumulated, overflows, memory)",
                       description="Simulate MODEL under each profile (re-quantizing where the model "
                       "does not satisfy it and the re-quantizer is available), compare with the float "
                       "reference, print a table and write one self-contained HTML report.")
    p.add_argument("model", help="quantized ONNX (QDQ or QOperator) or TFLite model")
    p.add_argument("--profiles", nargs="+", required=True, metavar="PROFILE",
                   help="profile names (see `mrq profiles`) or YAML paths")
    p.add_argument("--inputs", required=True, help=".npz of evaluation inputs keyed by graph input name")
    p.add_argument("--labels", help=".npy of integer class labels (one per sample) for accuracy")
    p.add_argument("--calib", help=".npz of calibration inputs for re-quantization (default: data-free)")
    add_output(p, metavar="REPORT.html", help="HTML report to write (needs matplotlib: "
               + REPORT_EXTRA + ")")
    add_json(p, help="also write the numbers as JSON")
    p.add_argument("--batch-size", type=int, default=64, help="samples simulated per batch (default 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import importlib.util

    import numpy as np

    from mrq.commands.common import finite
    from mrq.compare import format_table, run_compare, write_report
    from mrq.errors import InputDataError, MrqError
    from mrq.fileio import guard_paths, load_npz, save_json

    guard_paths([args.model, *args.profiles, args.inputs, args.labels, args.calib],
                text_outputs=[args.output, args.json])
    if importlib.util.find_spec("matplotlib") is None:
        raise MrqError(f"the HTML report's plots need matplotlib, which is not installed; "
                       f"install it with: {REPORT_EXTRA}")
    if args.batch_size < 1:
        raise InputDataError(f"--batch-size must be >= 1, got {args.batch_size}")
    feeds = load_npz(args.inputs)
    labels = None
    if args.labels:
        try:
            labels = np.load(args.labels, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputDataError(f"{args.labels}: not a readable .npy file ({exc})") from None
        if isinstance(labels, np.lib.npyio.NpzFile) or labels.dtype.kind not in "iu":
            raise InputDataError(f"{args.labels}: expected an .npy array of integer labels")
    calib = load_npz(args.calib) if args.calib else None
    result = run_compare(args.model, args.profiles, feeds, labels=labels, batch_size=args.batch_size,
                         progress=not (args.no_progress or args.quiet), calib=calib)
    print(format_table(result))
    write_report(result, args.output)
    print(f"wrote {args.output}")
    if args.json:
        save_json(args.json, finite(result.as_dict()))
    return 0
