"""``mrq verify``: compare a hardware/RTL dump with a golden set."""

EXAMPLES = """\
mrq verify golden/ --actual rtl_dump/
mrq verify golden/ --actual rtl_dump/ --require-all --json verify.json
mrq verify golden/ --actual rtl_dump/ -q        only the RESULT line
"""


def register(sub):
    from mrq.commands.common import add_command, add_json
    p = add_command(sub, "verify", examples=EXAMPLES, quiet_help="print only the result line",
                    simulates=False, help="compare a hardware/RTL dump with a golden set (exit 0 on a full "
                       "match, 1 otherwise)",
                       description="Compare the .npy/.hex/.bin files of DUMPDIR (named like the golden "
                       "set's files) with the golden set DIR: first differing layer and element, "
                       "histograms of the differences in LSBs, and a diagnosis of layout and rounding "
                       "mistakes. Exit 0 on a full match, 1 otherwise, 2 on unusable input.")
    p.add_argument("golden", metavar="DIR", help="golden set written by `mrq golden`")
    p.add_argument("--actual", required=True, metavar="DUMPDIR", help="directory of dumped tensors")
    p.add_argument("--require-all", action="store_true", help="fail when a golden tensor has no dump file")
    add_json(p, help="also write the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from mrq.commands.common import finite
    from mrq.fileio import guard_paths, save_json
    from mrq.verify import verify_dirs

    guard_paths([args.golden, args.actual], text_outputs=[args.json])
    report = verify_dirs(args.golden, args.actual, require_all=args.require_all)
    text = report.format()
    if args.quiet:
        text = next(line for line in text.splitlines() if line.startswith("RESULT"))
    print(text)
    if args.json:
        save_json(args.json, finite(report.as_dict()))
    return 0 if report.ok else 1
