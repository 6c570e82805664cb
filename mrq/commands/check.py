"""``mrq check``: does a model satisfy a hardware profile? Format rules, the lowered program's
parameters, and accumulator widths.

Exit 0 when the model satisfies the profile (no format violation, every op supported, every
parameter of the lowered program within the profile's limits (:mod:`mrq.limits`), no parameter
the lowering had to clip, and no conv/gemm accumulator that can overflow statically), 1
otherwise with one line per violation on stdout, followed by the accumulator analysis table.
``--inputs`` adds the observed accumulator ranges over those inputs."""

EXAMPLES = """\
mrq check model.onnx --profile nna-sym8
mrq check model.onnx --profile nna-sym8 --inputs calib.npz --json check.json
mrq check model.tflite --profile ./my-npu.yaml -q      only the violation lines
"""


def register(sub):
    from mrq.commands.common import add_command, add_json
    p = add_command(sub, "check", examples=EXAMPLES, quiet_help="print only the violation lines",
                    help="check that a model satisfies a hardware profile (formats, "
                       "supported ops, requantization shift/multiplier limits, accumulator widths); "
                       "exit 0 if it does, 1 otherwise",
                       description="Print one line per violation of the profile's format rules, of its "
                       "limits on the lowered program's parameters (requantization shifts and "
                       "multipliers, accumulator, bias width), and of its accumulator width, then the "
                       "per-layer accumulator analysis (static worst case "
                       "from the integer weights and input range, the smallest safe width, and with "
                       "--inputs the observed range). Exit 0 if the model satisfies the profile, 1 if not.")
    p.add_argument("model", help="quantized ONNX (QDQ or QOperator) or TFLite model")
    p.add_argument("--profile", required=True, help="profile name (see `mrq profiles`) or YAML path")
    p.add_argument("--inputs", help="inputs for the observed accumulator ranges: an .npz keyed by "
                   "graph input name, a bare .npy (a model with one input) or a directory of "
                   ".npz/.npy shards, read a batch at a time")
    p.add_argument("--batch-size", type=int, default=CHECK_BATCH, metavar="N",
                   help=f"inputs simulated per batch with --inputs (default {CHECK_BATCH}): memory "
                        f"grows with it, not with the data set")
    add_json(p, help="also write violations and the analysis as JSON")
    p.set_defaults(func=run)


# every buffer of a traced batch is held at once: 64 28x28 MobileNetV2 inputs are ~100 MB
CHECK_BATCH = 64


def value_violations(graph, prof) -> list:
    """Conv/Gemm weight and bias codes outside the profile's code range (e.g. 4-bit weights
    stored in int8 whose values need more than 4 bits)."""
    import numpy as np

    from mrq.mixed_precision import LayerFormats
    formats = LayerFormats.of(graph, prof)
    out = []
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm"):
            continue
        layer = formats.for_node(node.name)    # the layer's own widths
        for role, name in zip(("weights", "bias"), node.inputs[1:3]):
            t = graph.tensors.get(name)
            if t is None or t.data is None:
                continue
            data = np.asarray(t.data)
            if data.dtype.kind not in "iu" or not data.size:
                continue
            try:
                lo, hi = layer.bias.qmin_qmax() if role == "bias" else \
                    layer.weights.qmin_qmax(data.dtype if t.dtype in ("int4", "uint4") else t.dtype)
            except (ValueError, TypeError):
                continue  # a dtype the profile does not allow: reported by profile_violations
            bad = (data < lo) | (data > hi)
            if bad.any():
                width = layer.bias.bits if role == "bias" else layer.weights.bits
                out.append(f"{name}: {role}: {int(bad.sum())} value(s) outside the profile's {width}-bit "
                           f"range [{lo}, {hi}] (min {int(data.min())}, max {int(data.max())})")
    return out


def check_model(model, profile, feeds=None, batch_size: int = CHECK_BATCH, progress: bool = False):
    """(violation lines, accumulator rows) of ``model`` under ``profile``. ``feeds``: arrays by
    input name, or an :class:`mrq.datasets.InputSource` read ``batch_size`` samples at a time,
    for the observed accumulator ranges."""
    from mrq import accumulators as accmod
    from mrq.errors import UnsupportedOpError
    from mrq.limits import program_violations
    from mrq.lower import IR_OP_NAMES
    from mrq.pipeline import Pipeline, profile_violations, resolve_profile

    prof = resolve_profile(profile)
    graph = Pipeline.load(model)
    lines = []
    supported = set(prof.supported_ops or ()) | set(getattr(prof, "host_ops", None) or ())
    if supported:
        for node in graph.nodes:
            names = IR_OP_NAMES.get(node.op, {node.op})
            if names and not (names & supported):
                lines.append(f"{node.name}: op {node.op} is not supported by profile {prof.name!r}")
    lines += profile_violations(graph, prof)
    lines += value_violations(graph, prof)
    # Lower without the supported-ops filter so the accumulator analysis covers every layer.
    try:
        pipe = Pipeline(graph, prof, layout="native", every_op=True)
    except UnsupportedOpError as err:
        # an op the profile has no arithmetic for is reported above as not supported; any
        # other op the lowering refuses is a violation of its own
        if not any(line.startswith(f"{err.node}: op ") for line in lines):
            lines.append(f"{err.node}: {err}")
        return lines, [], prof
    lowered = pipe.lowered
    # Parameters the model needs beyond the limits (the program holds clipped values), then the
    # program's own parameters. Activation dtypes are left out of the latter: the lowering takes
    # every out_dtype from a tensor that profile_violations above has already checked.
    lines += [str(v) for v in lowered.limit_violations]
    lines += [str(v) for v in program_violations(lowered.program, prof, lowered.step_node, lowered.placement)
              if not v.field.startswith("activations.")]
    rows = accmod.static_analysis(lowered.program)
    lines += accmod.violation_lines(rows, prof.accumulator.guarantee)
    if feeds is not None:
        rows = _observed_rows(pipe, feeds, batch_size, progress) or rows
    return lines, rows, prof


def _observed_rows(pipe, feeds, batch_size: int, progress: bool) -> list:
    """The accumulator rows with their observed columns over every sample of ``feeds``, one
    traced batch in memory at a time: extremes of extremes, sums of counts."""
    import sys

    from mrq import accumulators as accmod
    from mrq.datasets import InputSource
    if isinstance(feeds, InputSource):
        source = feeds.bound_to([s.name for s in pipe.program.inputs])
        batches, total = source.batches(batch_size), source.num_samples
    else:
        batches, total = [feeds], 0
    bar = None
    if progress and total > batch_size:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="input", file=sys.stderr, delay=2.0, desc="mrq check")
    merged = None
    try:
        for batch in batches:
            result = pipe.run(batch, trace=True)
            rows = accmod.static_analysis(result.program)
            accmod.observe(rows, result.program, result.trace, result.stats)
            del result
            merged = rows if merged is None else [accmod.merge_observed(m, r) for m, r in zip(merged, rows)]
            if bar is not None:
                bar.update(next(iter(batch.values())).shape[0])
    finally:
        if bar is not None:
            bar.close()
    return merged


def _precision(model, prof):
    """Each layer's formats (None when the model cannot be read: reported as a violation)."""
    from mrq.errors import MrqError
    from mrq.mixed_precision import LayerFormats
    from mrq.pipeline import Pipeline
    try:
        return LayerFormats.of(Pipeline.load(model), prof)
    except MrqError:
        return None


def run(args) -> int:
    import contextlib

    from mrq.accumulators import format_table
    from mrq.commands.common import finite
    from mrq.datasets import open_inputs
    from mrq.errors import InputDataError
    from mrq.fileio import guard_paths, save_json
    from mrq.mixed_precision import precision_table

    guard_paths([args.model, args.profile, args.inputs], text_outputs=[args.json])
    if args.batch_size < 1:
        raise InputDataError(f"--batch-size must be >= 1, got {args.batch_size}")
    with contextlib.ExitStack() as stack:
        feeds = stack.enter_context(open_inputs(args.inputs)) if args.inputs else None
        if feeds is not None and feeds.num_samples == 0:
            raise InputDataError(f"{args.inputs}: holds no samples")
        lines, rows, prof = check_model(args.model, args.profile, feeds, batch_size=args.batch_size,
                                        progress=not args.quiet)
    precision = _precision(args.model, prof)
    for line in lines:
        print(line)
    if not args.quiet:
        if lines:
            print()
        if rows:
            print(format_table(rows, title=f"accumulators ({prof.name}: {prof.accumulator.bits}-bit, "
                                           f"{prof.accumulator.overflow}, guarantee "
                                           f"{prof.accumulator.guarantee})", guarantee=prof.accumulator.guarantee))
        if precision is not None and precision.mixed:
            print(precision_table(precision))
        verdict = "satisfies" if not lines else f"does not satisfy ({len(lines)} violation(s))"
        print(f"{args.model} {verdict} profile {prof.name!r}")
    if args.json:
        save_json(args.json, finite({"model": args.model, "profile": prof.name, "ok": not lines,
                                     "violations": lines, "accumulators": [r.as_dict() for r in rows],
                                     "precision": [] if precision is None else [
                                         {"layer": n, "kind": k, "weight_bits": w, "activation_bits": a}
                                         for n, k, w, a in precision.rows()]}))
    return 0 if not lines else 1
