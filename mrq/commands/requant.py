"""``mrq requant``: re-quantize a quantized model to a hardware profile and write ONNX QDQ."""
import numpy as np

from mrq.commands.common import (
    add_command,
    add_constants,
    add_json,
    add_output,
    finite,
    log,
    model_with_constants,
)

EXAMPLES = """\
mrq requant model.onnx --profile nna-sym8 -o model_nna-sym8.onnx
mrq requant model.onnx --profile nna-sym8-pow2 -o out.onnx --calib calib.npz --json requant.json
mrq requant model.tflite --profile nna-w4a8 -o out.onnx --calib calib.npz --float-model model_float.tflite
mrq requant model.onnx --profile nna-w4a4 -o out.onnx --calib calib.npz --budget weight_bytes=60%
"""


def register(sub):
    p = add_command(sub, "requant", help="re-quantize a quantized model so it satisfies a hardware profile",
                    description="Re-quantize MODEL to the number formats and arithmetic of a hardware "
                    "profile, write it as ONNX QDQ and check the written model as `mrq check` does "
                    "(exit 1 if it does not satisfy the profile).", examples=EXAMPLES)
    p.add_argument("model", help="quantized ONNX (QDQ or QOperator) or TFLite model")
    p.add_argument("--profile", required=True, help="target profile name (see `mrq profiles`) or YAML path")
    add_output(p, metavar="OUT.onnx", help="re-quantized ONNX QDQ model to write")
    p.add_argument("--calib", help=".npz of calibration inputs keyed by graph input name (float32, batch "
                   "first), a bare .npy (a model with one input) or a directory of .npz/.npy shards")
    p.add_argument("--calib-limit", type=int, default=None, metavar="N",
                   help="calibrate on the first N samples of --calib, read lazily, so a whole data set "
                        "can be passed (default 1024; the passes hold every intermediate of each sample)")
    add_json(p, legacy="--report",
             help="JSON report: per-tensor scheme changes, per-layer errors, end-to-end SQNR")
    p.add_argument("--float-model", help="float TFLite/ONNX version of the model: report the fidelity of the input "
                   "and the re-quantized model against it on the calibration data (needs --calib)")
    p.add_argument("--no-weight-correction", action="store_true", help="round weights to nearest (ablation)")
    p.add_argument("--no-error-folding", action="store_true", help="do not fold the expected error into biases")
    p.add_argument("--no-scale-selection", action="store_true", help="use the covering scale, no search")
    p.add_argument("--output-error-scales", action="store_true",
                   help="re-choose activation clips by the network output's error on calibration data "
                        "(pass scale_search; slower; raises output SQNR, not always accuracy)")
    p.add_argument("--disable", nargs="+", default=[], metavar="PASS",
                   help="switch off passes by name (unroll_recurrent, explicit_clamps, float_inputs, activation_grids, "
                        "weight_grids, multiplier_limits, bias_grids, weight_correction, error_folding)")
    add_constants(p)
    p.add_argument("--budget", metavar="SPEC",
                   help="mixed precision: choose which conv/gemm layers run at --high-bits from their "
                        "measured sensitivity (needs --calib): weight_bytes=N, weight_bytes=P%% (of the "
                        "model with every layer at --high-bits) or sqnr_db=X (a floor); writes the chosen "
                        "profile next to the output (OUT.profile.yaml) and prints the frontier explored")
    p.add_argument("--high-bits", type=int, default=8, metavar="BITS",
                   help="with --budget: the weight and activation bits of the layers chosen (default 8)")
    p.set_defaults(func=run)


# Calibration statistics need every used sample in memory at once (--calib-limit of them)
CALIB_MAX_BYTES = 2 << 30


def run(args) -> int:
    from mrq.api import resolve_profile
    from mrq.commands.requant_warm import CheckWarmUp
    from mrq.datasets import DEFAULT_CALIB_LIMIT, read_calibration
    from mrq.errors import MrqError
    from mrq.fileio import guard_paths
    from mrq.onnx_import import load_model
    from mrq.requant import PASS_NAMES

    guard_paths([args.model, args.profile, args.calib, args.float_model, args.constants,
                 *args.freeze], outputs=[args.output],
                text_outputs=[args.json])
    unknown = sorted(set(args.disable) - set(PASS_NAMES))
    if unknown:
        raise MrqError(f"--disable: unknown pass(es) {', '.join(unknown)}; passes are {', '.join(PASS_NAMES)}")
    profile = resolve_profile(args.profile)
    model = model_with_constants(args)
    graph = load_model(model) if isinstance(model, str) else model
    calib = None
    if args.calib_limit is not None and args.calib_limit < 1:
        raise MrqError(f"--calib-limit must be >= 1, got {args.calib_limit}")
    if args.calib:
        # the passes fit grids and corrections to every calibration sample at once: the first
        # --calib-limit samples are read (lazily), never the whole file
        calibration = read_calibration(args.calib, graph.inputs,
                                       args.calib_limit or DEFAULT_CALIB_LIMIT, CALIB_MAX_BYTES)
        calib = calibration.arrays
        if calibration.note(args.calib):
            log.info(calibration.note(args.calib))
    # the check's kernels compile in a child while the passes run (mrq/commands/requant_warm.py);
    # with --budget the profile is only known after the search
    warming = CheckWarmUp.start(None if args.budget else model, args.profile, profile, calib)
    try:
        return _requantize_and_check(args, graph, profile, calib, warming)
    finally:
        warming.stop()


def _requantize_and_check(args, graph, profile, calib, warming) -> int:
    import onnx

    from mrq.api import simulate
    from mrq.commands.check import check_model
    from mrq.commands.requant_warm import check_threads
    from mrq.errors import MrqError
    from mrq.fileio import atomic_path, save_json
    from mrq.metrics import sqnr_db
    from mrq.onnx_export import export_onnx
    from mrq.onnx_import import load_model
    from mrq.passes.base import Options, feeds_for_new_graph
    from mrq.requant import requantize

    options = Options(weight_correction=not args.no_weight_correction, error_folding=not args.no_error_folding,
                      scale_selection=not args.no_scale_selection, disabled=frozenset(args.disable),
                      output_error_scales=args.output_error_scales)
    search = _precision_search(args, graph, profile, calib)
    if search is not None:
        profile = search.profile    # the chosen per-layer formats are the profile from here on
    new, report = requantize(graph, profile, calib, options)
    model = export_onnx(new)
    with atomic_path(args.output, ".onnx") as tmp:
        onnx.save(model, tmp)
    # The output is checked as the user gets it (read back from the file) with everything
    # `mrq check` checks: formats, the lowered program's limits, accumulator widths.
    violations, _, _ = check_model(load_model(args.output), profile)

    sqnr = None
    if calib is not None:
        from mrq.float_ref import FloatReference
        old_out = report.reference_outputs
        if set(old_out) != set(graph.outputs):  # no calibration sweep ran (all passes off)
            old_out = FloatReference(graph, fake_quant=True).run(calib)
        warming.wait()
        sim = simulate(new, profile, feeds_for_new_graph(graph, new, calib), fidelity=False,
                       threads=check_threads(profile))
        sqnr = {}
        for name in new.outputs:
            qp = new.tensors[name].qparams
            got = qp.dequantize(sim.outputs[name]) if qp is not None else sim.outputs[name].astype(np.float64)
            sqnr[name] = sqnr_db(old_out[name], got)
        report.end_to_end_sqnr_db = min(sqnr.values())
        from mrq.passes.accumulator_budget import record_simulated_overflow
        record_simulated_overflow(report, sim)
    float_fidelity = None
    if args.float_model:
        if calib is None:
            raise MrqError("--float-model needs --calib (the fidelity is measured on the calibration inputs)")
        from mrq.float_model import float_fidelity as measure
        float_fidelity = measure(args.float_model, graph, new, profile, calib)
    _print(report, args, sqnr)
    if search is not None:
        print(f"\n{search.table()}\nwrote the chosen profile to {_profile_path(args.output)}")
    if float_fidelity:
        print(f"\nfidelity vs the float model {args.float_model} on the calibration data:")
        for row in float_fidelity["tensors"]:
            print(f"  {row['tensor'][:48]:<48} input model {row['input_sqnr_db']:7.2f} dB   "
                  f"re-quantized {row['requant_sqnr_db']:7.2f} dB")
    if args.json:
        data = _report_json(report, args, sqnr, violations)
        data["float_model_fidelity"] = float_fidelity
        data["precision_search"] = None if search is None else search.as_dict()
        save_json(args.json, finite(data))
    if violations:
        # The model is written anyway: it is what the passes could do, and the violations are
        # easiest to understand on it. A failing exit keeps scripts from using it unchecked.
        log.error("\n".join(
            [(f"the re-quantized model does not satisfy profile {profile.name!r} "
              f"({len(violations)} violation(s)):")] + [f"  {line}" for line in violations]
            + [(f"{args.output} was written so you can inspect it "
                f"(`mrq check {args.output} --profile "
                f"{_profile_path(args.output) if search else args.profile}`); do not deploy it")]))
        return 1
    print(f"\n{args.output} satisfies profile {profile.name!r} (formats, program limits, accumulators)")
    return 0


def _profile_path(output: str) -> str:
    import os
    return os.path.splitext(output)[0] + ".profile.yaml"


def _precision_search(args, graph, profile, calib):
    """``--budget``: choose the layers at ``--high-bits`` (:mod:`mrq.precision_search`) and
    write the chosen profile next to the output; None without ``--budget``."""
    if not args.budget:
        return None
    import yaml

    from mrq.errors import MrqError
    from mrq.fileio import guard_paths, save_text
    from mrq.hw_profile import ACT_BITS
    from mrq.precision_search import parse_budget, search
    budget = parse_budget(args.budget)
    if not ACT_BITS[0] <= args.high_bits <= ACT_BITS[1]:
        raise MrqError(f"--high-bits must be in [{ACT_BITS[0]}, {ACT_BITS[1]}], got {args.high_bits}")
    path = _profile_path(args.output)
    guard_paths([], text_outputs=[path])
    result = search(graph, profile, calib, budget, args.high_bits,
                    progress=lambda what: log.info(f"precision search: measuring {what}"))
    doc = result.profile.to_dict()
    doc["description"] = (f"{profile.name} with {len(result.chosen.high_layers)} layer(s) at "
                          f"{args.high_bits} bits, chosen by mrq requant --budget {budget.text}")
    own = len(profile.layers)   # the profile's own entries, then one per chosen layer
    doc["layers"] = doc.get("layers", [])[:own] + [
        {"name": entry.name, "weights": {"bits": args.high_bits}, "activations": {"bits": args.high_bits}}
        for entry in result.profile.layers[own:]]
    if not doc["layers"]:
        del doc["layers"]
    save_text(path, "# written by mrq requant --budget; the layers: entries are its choice\n"
              + yaml.safe_dump(doc, sort_keys=False))
    return result


def _print(report, args, sqnr):
    print(f"{args.model} -> {args.output} for profile {report.profile} ({report.seconds:.2f} s)")
    print(f"passes: {', '.join(report.passes_run)}" + (f" (off: {', '.join(report.passes_skipped)})" if report.passes_skipped else ""))
    print(f"{'tensor':<40} {'role':<11} {'old':<36} {'new':<36} kind")
    for c in report.changes:
        name = c.tensor if len(c.tensor) <= 40 else "…" + c.tensor[-39:]
        print(f"{name:<40} {c.role:<11} {c.old:<36} {c.new:<36} {'lossless' if c.lossless else 'lossy'}")
    for stage, rows in report.layer_errors.items():
        if not rows:
            continue
        print(f"\nlayer output MSE vs the input model, {stage}:")
        for layer, (before, after) in rows.items():
            gain = 10 * np.log10(before / after) if after > 0 and before > 0 else float("inf")
            print(f"  {layer:<38} {before:10.4g} -> {after:10.4g}  ({gain:+.1f} dB)")
    if report.bias_saturated:
        print("\nbias codes saturated: " + ", ".join(f"{k}: {v}" for k, v in report.bias_saturated.items()))
    if report.accumulators:
        from mrq.passes.accumulator_budget import format_report
        print("\n" + format_report(report.accumulators))
    for note in report.notes:
        print(f"note: {note}")
    if sqnr:
        print("\nend-to-end SQNR vs the input model on the calibration data: " +
              ", ".join(f"{k} {v:.2f} dB" for k, v in sqnr.items()))


def _report_json(report, args, sqnr, violations):
    return {
        "model": args.model, "output": args.output, "profile": report.profile, "seconds": report.seconds,
        "passes_run": report.passes_run, "passes_skipped": report.passes_skipped,
        "changes": [vars(c) for c in report.changes],
        "layer_errors": {stage: {k: {"mse_before": b, "mse_after": a} for k, (b, a) in rows.items()}
                         for stage, rows in report.layer_errors.items()},
        "bias_saturated": report.bias_saturated, "accumulators": report.accumulators, "notes": report.notes,
        "end_to_end_sqnr_db": sqnr, "violations": violations,
    }
