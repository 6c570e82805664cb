"""``mrq compare``: one model under several profiles, in one self-contained HTML report."""


def register(sub):
    p = sub.add_parser("compare", help="run a model under several profiles and write an HTML report "
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
    p.add_argument("-o", "--out", required=True, metavar="REPORT.html", help="HTML report to write")
    p.add_argument("--json", metavar="REPORT.json", help="also write the numbers as JSON")
    p.add_argument("--batch-size", type=int, default=64, help="samples simulated per batch (default 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from mrq.commands.common import finite
    from mrq.compare import format_table, run_compare, write_report
    from mrq.errors import InputDataError
    from mrq.fileio import check_writable, load_npz, save_json

    for path in (args.out, args.json):
        if path:
            check_writable(path)
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
                         progress=not args.no_progress, calib=calib)
    print(format_table(result))
    write_report(result, args.out)
    print(f"wrote {args.out}")
    if args.json:
        save_json(args.json, finite(result.as_dict()))
    return 0
