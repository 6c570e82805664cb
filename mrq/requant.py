"""Re-quantize an already-quantized model to a hardware profile.

    graph, report = requantize(graph, profile, calib=feeds)

runs the passes below in order (each one ``graph -> graph``, switchable for ablation) and returns
a graph whose every quantization parameter satisfies the profile. No float model is needed: the
input model's integer weights and grids are the ground truth.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from mrq.errors import InputDataError, ModelError, UnsupportedOpError
from mrq.ir import Graph
from mrq.passes.accumulator_budget import accumulator_budget, accumulator_budget_hook
from mrq.passes.activation_grids import activation_grids
from mrq.passes.activation_offsets import (
    activation_offsets,
    offset_bias,
    offset_bias_hook,
)
from mrq.passes.base import Context, Options, Pass, RequantReport, run_passes
from mrq.passes.bias_grids import bias_grids
from mrq.passes.error_folding import error_folding, error_folding_hook
from mrq.passes.explicit_clamps import explicit_clamps
from mrq.passes.float_inputs import float_inputs
from mrq.passes.multiplier_limits import multiplier_limits
from mrq.passes.output_grids import output_grids, output_grids_hook
from mrq.passes.scale_search import scale_search
from mrq.passes.unroll_recurrent import unroll_graph, unroll_recurrent
from mrq.passes.weight_correction import weight_correction, weight_correction_hook
from mrq.passes.weight_grids import weight_grids

PASSES = [
    # structural: requantize() runs it first and its graph is the input model the others see
    Pass("unroll_recurrent", unroll_recurrent, doc="LSTM/SVDF the profile does not run: unrolled into "
         "per-step Gemm/Add/Mul/Logistic (tanh from Logistic where the profile has no Tanh)"),
    Pass("explicit_clamps", explicit_clamps, doc="keep every clamp the old grids implied (ReLU, ReLU6)"),
    Pass("float_inputs", float_inputs, doc="integer inputs on a rejected grid take real values instead"),
    Pass("activation_grids", activation_grids, doc="activations onto conforming grids (+ scale selection)"),
    Pass("scale_search", scale_search, needs_calib=True, doc="opt-in (Options.output_error_scales): "
         "activation clips chosen by the network output's error (coordinate descent on calibration data)"),
    Pass("activation_offsets", activation_offsets, needs_calib=True, doc="ReLU outputs on signed grids below "
         "8 bits shifted to use every code; the consumers' biases undo the shift"),
    Pass("weight_grids", weight_grids, doc="weights onto conforming grids (+ scale selection), round to nearest"),
    Pass("multiplier_limits", multiplier_limits, doc="finer weight / coarser output scales where a "
         "requantization multiplier exceeds the profile's shift and multiplier range"),
    Pass("bias_grids", bias_grids, doc="biases onto input scale x weight scale, profile bias width"),
    Pass("accumulator_budget", accumulator_budget, doc="per-channel weight scales that keep a narrow "
         "accumulator from overflowing (proof) or trade measured saturation for rounding error",
         layer_hook=accumulator_budget_hook),
    Pass("weight_correction", weight_correction, needs_calib=True, doc="sequential rounding with error feedback",
         layer_hook=weight_correction_hook),
    Pass("offset_bias", offset_bias, needs_calib=True, doc="consumers of shifted activations: the "
         "shift's bias share with their final weights", layer_hook=offset_bias_hook),
    Pass("error_folding", error_folding, doc="fold the expected output shift into the bias",
         layer_hook=error_folding_hook),
    Pass("output_grids", output_grids, needs_calib=True, doc="class scores below 8 bits: the output grid "
         "whose argmax agrees most with the input model's", layer_hook=output_grids_hook),
]
PASS_NAMES = tuple(p.name for p in PASSES)

# The methods: what a naive re-quantization (every tensor rounded onto its new grid) leaves out.
METHOD_PASSES = frozenset({"scale_search", "activation_offsets", "accumulator_budget", "weight_correction", "offset_bias",
                           "error_folding", "output_grids"})


def naive_options() -> Options:
    """The one definition of "naive" that ablation tables, sweeps and the budget search share."""
    return Options(weight_correction=False, error_folding=False, scale_selection=False,
                   input_error_target=False, disabled=METHOD_PASSES)


def check_supported(graph: Graph, profile) -> None:
    from mrq.lower import IR_OP_NAMES
    # host_ops run on the host with their own arithmetic: accepted like supported ops
    supported = set(profile.supported_ops) | set(getattr(profile, "host_ops", None) or ())
    for node in graph.nodes:
        names = IR_OP_NAMES.get(node.op, {node.op})
        if names and not (names & supported):
            raise UnsupportedOpError(node.op, node.name, f"profile {profile.name!r} does not support it")


def check_calibration(graph: Graph, calib: dict) -> dict:
    """Calibration arrays must match the model's inputs by name and non-batch shape."""
    expected = {n: graph.tensors[n] for n in graph.inputs}
    unknown = sorted(set(calib) - set(expected))
    missing = sorted(set(expected) - set(calib))
    if unknown or missing:
        raise InputDataError("calibration data: " + "; ".join(
            ([f"missing input(s) {', '.join(map(repr, missing))}"] if missing else []) +
            ([f"unknown input(s) {', '.join(map(repr, unknown))}"] if unknown else [])) +
            f" (the model's inputs: {', '.join(map(repr, expected))})")
    out = {}
    for name, t in expected.items():
        arr = np.asarray(calib[name])
        want = tuple(t.shape)
        if arr.ndim != len(want) or any(w is not None and i > 0 and w != g for i, (w, g) in enumerate(zip(want, arr.shape))):
            shape = "(" + ", ".join("N" if i == 0 or d is None else str(d) for i, d in enumerate(want)) + ")"
            raise InputDataError(f"calibration input {name!r}: expected shape {shape}, got {tuple(arr.shape)}")
        if arr.dtype.kind not in "fiu":
            raise InputDataError(f"calibration input {name!r}: expected numbers, got dtype {arr.dtype}")
        # grids and bias corrections are statistics of these samples: with none, or with a NaN or
        # inf among them, every derived value is meaningless (NaN biases became 0 silently)
        if arr.ndim == 0 or arr.shape[0] == 0 or arr.size == 0:
            raise InputDataError(f"calibration input {name!r}: no samples (shape {tuple(arr.shape)})")
        if arr.dtype.kind == "f":
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            if bad:
                raise InputDataError(f"calibration input {name!r}: {bad} of {arr.size} values are NaN "
                                     f"or infinite; calibration data must be finite")
        from mrq.pipeline import check_batch
        check_batch(graph, arr.shape[0], f"calibration input {name!r}")
        out[name] = arr
    return out


def requantize(graph: Graph, profile, calib: Optional[dict] = None, options: Optional[Options] = None):
    """Returns (new graph, RequantReport). ``graph`` is not modified."""
    from mrq.api import resolve_profile
    t0 = time.perf_counter()
    profile = resolve_profile(profile)
    options = options or Options()
    if not any(t.qparams is not None for t in graph.tensors.values()):
        raise ModelError("the model is not quantized")
    if calib is not None:
        calib = check_calibration(graph, calib)
    report = RequantReport(profile=profile.name)
    if options.enabled("unroll_recurrent"):
        graph, unrolled = unroll_graph(graph, profile, calib)
        report.passes_run.append("unroll_recurrent")
        if unrolled:
            report.notes.append(f"unrolled into per-step ops: {', '.join(unrolled)}")
    else:
        report.passes_skipped.append("unroll_recurrent")
    check_supported(graph, profile)
    ctx = Context(profile=profile, original=graph, calib=calib, options=options, report=report)
    passes = [p for p in PASSES if p.name != "unroll_recurrent"
              and not (p.needs_calib and calib is None and p.name in options.disabled)]
    new = run_passes(graph, passes, ctx)
    env = ctx.cache.get("original_env")
    if env is not None:
        report.reference_outputs = {name: env[name] for name in graph.outputs if name in env}
    report.seconds = time.perf_counter() - t0
    return new, report
