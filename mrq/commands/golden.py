"""``mrq golden``: write every tensor of one integer execution as a golden set for testbenches."""

EXAMPLES = """\
mrq golden model.onnx --profile nna-sym8 --inputs in.npz -o golden/
mrq golden model.onnx --profile nna-sym8 --inputs in.npz -o golden/ --layout NHWC --weight-layout OHWI --c-headers
mrq golden model.onnx --profile nna-sym8 --inputs in.npz -o golden/ --force -q
mrq golden model.onnx --profile nna-sym8 --inputs shards/ -o golden/ --batch-size 8
"""

# every tensor of a traced batch, and its hex text, is in memory at once
GOLDEN_BATCH = 16


def register(sub):
    from mrq.commands.common import add_command, add_constants, add_output
    p = add_command(sub, "golden", examples=EXAMPLES, quiet_help="do not print the summary",
                    help="write a golden set (every tensor of the integer execution) "
                       "for RTL/hardware verification",
                       description="Simulate MODEL under a profile on the given inputs and write every "
                       "tensor (inputs, integer weights and biases, accumulators before requantization, "
                       "requantization parameters, requantized outputs) as .npy and $readmemh hex, plus "
                       "manifest.json. See docs/verification.md. Refuses (exit 1) a model that needs "
                       "requantization parameters outside the profile's limits (see `mrq check`).")
    p.add_argument("model", help="quantized ONNX (QDQ or QOperator) or TFLite model")
    p.add_argument("--profile", required=True, help="profile name (see `mrq profiles`) or YAML path")
    p.add_argument("--inputs", required=True, help=".npz keyed by graph input name, a bare .npy (a "
                   "model with one input) or a directory of .npz/.npy shards (float32 arrays are "
                   "quantized by the model's input quantization; integer arrays are used as codes)")
    add_output(p, metavar="DIR", help="output directory (written atomically)")
    p.add_argument("--layout", choices=["NCHW", "NHWC"], help="axis order of the 4-D activation and "
                   "accumulator files (default: the model's)")
    p.add_argument("--weight-layout", metavar="PERM", help="axis order of conv weight files, a permutation "
                   "of OIHW such as OHWI or HWIO (default OIHW)")
    p.add_argument("--c-headers", action="store_true", help="also write C headers (DIR/c/*.h, DIR/c/mrq_golden.h)")
    p.add_argument("--bin", action="store_true", help="also write raw little-endian .bin files")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists and is not empty")
    p.add_argument("--batch-size", type=int, default=GOLDEN_BATCH, metavar="N",
                   help=f"inputs simulated and written per batch (default {GOLDEN_BATCH}): memory grows "
                        f"with it, not with the number of inputs; the files are the same for any N")
    add_constants(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mrq.accumulators import AccumulatorRow, format_table
    from mrq.commands.common import log
    from mrq.datasets import open_inputs
    from mrq.errors import MrqError
    from mrq.fileio import guard_paths
    from mrq.golden import GoldenLimitError, check_golden_target, stream_golden

    if args.weight_layout and sorted(args.weight_layout.upper()) != sorted("OIHW"):
        raise MrqError(f"--weight-layout {args.weight_layout!r}: must be a permutation of OIHW")
    if args.batch_size < 1:
        raise MrqError(f"--batch-size must be >= 1, got {args.batch_size}")
    from mrq.commands.common import model_with_constants
    guard_paths([args.model, args.profile, args.inputs, args.constants, *args.freeze],
                dir_outputs=[args.output])
    out = check_golden_target(args.output, args.force)
    with open_inputs(args.inputs) as source:
        try:
            gs = stream_golden(model_with_constants(args), args.profile, source, args.output, args.batch_size,
                               layout=args.layout,
                               weight_layout=args.weight_layout.upper() if args.weight_layout else None,
                               c_headers=args.c_headers, write_bin=args.bin, force=args.force,
                               progress=not args.quiet)
        except GoldenLimitError as exc:
            # exit 1 (the model fails the profile, like `mrq check`), not 2 (a usage error)
            log.error(str(exc))
            return 1
    if not args.quiet:
        m = gs.manifest
        n_files = sum(len(t["files"]) for t in m["tensors"])
        print(f"wrote {out}: {len(m['tensors'])} tensors of {len(m['layers']) - 1} steps "
              f"({n_files} files), profile {m['profile']}, batch {m['batch']}")
        rows = [AccumulatorRow(**{k: v for k, v in r.items() if k in AccumulatorRow.__dataclass_fields__})
                for r in m["accumulators"]]
        if rows:
            print(format_table(rows, title="accumulators"))
        if m["violations"]:
            print(f"note: the model does not satisfy profile {m['profile']!r} ({len(m['violations'])} "
                  f"violation(s), first: {m['violations'][0]}); the golden set uses the profile's "
                  f"arithmetic on the model's own grids")
    return 0
