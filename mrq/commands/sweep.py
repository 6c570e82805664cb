"""``mrq sweep``: models x profiles x methods x datasets on Dask, into one results table."""

EXAMPLES = """\
mrq sweep sweep.yaml -o sweep-out/                  # a local Dask cluster, one worker per core
mrq sweep sweep.yaml -o sweep-out/ -j 2 --json sweep.json
mrq sweep sweep.yaml -o sweep-out/ --scheduler tcp://10.0.0.5:8786

sweep.yaml (paths relative to it; profiles by name or .yaml path):
  models: [model_a.onnx, {name: b, path: model_b.onnx}]
  profiles: [nna-sym8, nna-w4a8, my_npu.yaml]
  methods: [naive, full]          # or {name: {weight_correction: false, disable: [...]}}
  datasets:
    - {name: val, inputs: val.npz, labels: val_labels.npy, calibration: calib.npz}
  shard_size: 1000                # samples per task (default 1000)
  batch_size: 100                 # samples per simulator call (default 100)
"""

PREAMBLE = """\
Writes DIR/results.csv (and results.parquet with pyarrow), DIR/summary.html, and DIR/state/
(finished work, by content hash: running the same command again computes only what is missing).
Exit code 1 when a cell failed (its row says why), 2 for unusable input."""


def register(sub):
    from mrq.commands.common import add_command, add_json, add_output
    from mrq.sweep import SWEEP_EXTRA
    p = add_command(sub, "sweep", examples=EXAMPLES, preamble=PREAMBLE,
                    quiet_help="no progress bar and no table on stdout",
                    help="models x profiles x methods x datasets on a Dask cluster: one results "
                         "table and an HTML summary",
                    description="Re-quantize every model to every profile with every method, simulate "
                    "each on every data set in shards on Dask (a local cluster, or a running scheduler), "
                    f"and reduce the shards into one row per cell. Needs Dask: {SWEEP_EXTRA}.")
    p.add_argument("sweep", metavar="SWEEP.yaml", help="the sweep file")
    add_output(p, metavar="DIR", help="results directory (created; reused by a re-run to resume)")
    add_json(p, help="also write the rows and the provenance as JSON")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                   help="local cluster: N single-threaded worker processes (default: one per core)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the Dask scheduler at ADDRESS (tcp://host:8786) instead of a local cluster")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    import shlex
    import sys

    from mrq.commands.common import finite, log
    from mrq.errors import MrqError
    from mrq.fileio import guard_paths, save_json
    from mrq.sweep import (
        SWEEP_EXTRA,
        dask_available,
        dask_client,
        load_plan,
        plan_inputs,
        run_sweep,
    )
    from mrq.sweep_report import format_table, write_outputs

    if not dask_available():
        raise MrqError(f"`mrq sweep` runs on Dask, which is not installed; install it with: {SWEEP_EXTRA}")
    if args.jobs is not None and args.jobs < 1:
        raise MrqError(f"-j/--jobs must be >= 1, got {args.jobs}")
    if args.jobs is not None and args.scheduler:
        raise MrqError("-j/--jobs sizes the local cluster; with --scheduler the cluster's own workers run")
    plan = load_plan(args.sweep)
    guard_paths(plan_inputs(plan), dir_outputs=[args.output], text_outputs=[args.json])
    command = " ".join(shlex.quote(a) for a in ["mrq", *sys.argv[1:]]) if sys.argv[1:2] == ["sweep"] \
        else f"mrq sweep {shlex.quote(args.sweep)} -o {shlex.quote(args.output)}"
    workers = args.jobs or os.cpu_count() or 1
    result = run_sweep(plan, args.output, lambda: dask_client(args.scheduler, workers),
                       progress=not args.quiet, command=command)
    os.makedirs(args.output, exist_ok=True)
    paths = write_outputs(result, args.output)
    if not args.quiet:
        print(format_table(result))
    log.info(f"{result.computed} cell-shard(s) computed, {result.reused} reused from {args.output}; "
             f"wrote {', '.join(paths)}")
    if args.json:
        save_json(args.json, finite({"provenance": result.provenance, "computed": result.computed,
                                     "reused": result.reused, "rows": result.rows}))
    for row in result.failed:
        log.error(f"{row['model']} / {row['profile']} / {row['method']} / {row['dataset']}: {row['error']}")
    return 1 if result.failed else 0
