"""Re-quantization passes: each is a function ``(graph, ctx) -> graph``.

Contract for every pass (one module each in :mod:`mrq.passes`):

- It receives a copy of the graph (the driver copies), may edit that copy, and returns it.
  It never touches ``ctx.original`` and writes no files.
- It records what it did in ``ctx.report`` (tensor re-gridding, per-layer errors), labelling each
  rewrite lossless or lossy.
- It runs once (no fixed point is needed: passes are ordered so that each sees the grids the
  previous ones chose).
- It can be switched off by name (``--disable NAME``) for ablation; the driver then skips it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from mrq.errors import PassError
from mrq.ir import Graph

# Calibration sweeps (the input model's and the new model's fake-quantized forward passes over the
# calibration set) store tensors and run convolutions in float32: half the memory traffic of
# float64, deterministic, and far below the grids' resolution (rounding onto a grid divides by
# the scale in float64). Statistics over the sweeps (means, second moments, errors) accumulate
# in float64.
CALIB_DTYPE = np.float32


@dataclass
class TensorChange:
    tensor: str
    role: str            # activations | weights | bias
    old: str
    new: str
    lossless: bool
    pass_name: str
    note: str = ""


@dataclass
class RequantReport:
    profile: str
    changes: list = field(default_factory=list)          # list[TensorChange]
    layer_errors: dict = field(default_factory=dict)     # stage -> {layer: output MSE vs input model}
    bias_saturated: dict = field(default_factory=dict)   # layer -> number of saturated bias codes
    # layer -> what accumulator_budget did (mrq.passes.accumulator_budget.LayerAccReport.as_dict)
    accumulators: dict = field(default_factory=dict)
    passes_run: list = field(default_factory=list)
    passes_skipped: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    end_to_end_sqnr_db: Optional[float] = None
    seconds: float = 0.0
    # The input model's outputs on the calibration data (fake-quantized float, from the
    # calibration sweep), so the end-to-end SQNR does not need another forward pass. Not saved.
    reference_outputs: dict = field(default_factory=dict, repr=False)

    def change(self, *args, **kwargs):
        self.changes.append(TensorChange(*args, **kwargs))


@dataclass
class Options:
    weight_correction: bool = True
    error_folding: bool = True
    scale_selection: bool = True
    # weight_correction rounds the least-squares fit of the input model's output on the new
    # model's input (mrq.passes.input_error_target) instead of the input model's weights
    input_error_target: bool = True
    # activation clips re-chosen by the network output's error (pass scale_search); opt-in: it
    # raises the output SQNR but not held-out accuracy, at 2-7x the re-quantization time
    output_error_scales: bool = False
    disabled: frozenset = frozenset()

    def enabled(self, name: str) -> bool:
        if name in self.disabled:
            return False
        return {"weight_correction": self.weight_correction, "error_folding": self.error_folding,
                "scale_search": self.output_error_scales}.get(name, True)


@dataclass
class Context:
    profile: object                  # mrq.hw_profile.HwProfile
    original: Graph                  # the input model; never modified
    calib: Optional[dict]            # graph input name -> float array (batch first)
    options: Options
    report: RequantReport
    cache: dict = field(default_factory=dict)
    renamed: dict = field(default_factory=dict)    # tensor of the new graph -> same tensor in the original

    def original_env(self) -> dict:
        """Every tensor of the input model on the calibration data (fake-quantized, stored as
        float32: see CALIB_DTYPE), also under the names the new graph gives them."""
        if "original_env" not in self.cache:
            from mrq.float_ref import FloatReference
            self.cache["original_env"] = FloatReference(self.original, fake_quant=True, dtype=CALIB_DTYPE).run(self.calib)
        env = self.cache["original_env"]
        for new, old in self.renamed.items():
            env.setdefault(new, env[old])
        return env

    def new_graph_feeds(self, graph) -> dict:
        return feeds_for_new_graph(self.original, graph, self.calib)


def feeds_for_new_graph(original: Graph, graph: Graph, feeds: dict) -> dict:
    """Inputs of the original model as the re-quantized one takes them: integer inputs that became
    float inputs (pass float_inputs) get the real values of their codes."""
    out = {}
    for name, value in feeds.items():
        value = np.asarray(value)
        t_new, t_old = graph.tensors.get(name), original.tensors.get(name)
        if t_new is not None and t_new.dtype == "float32" and t_old is not None and t_old.qparams is not None \
                and value.dtype.kind in "iu":
            value = t_old.qparams.dequantize(value).astype(np.float32)
        out[name] = value
    return out


@dataclass(frozen=True)
class Pass:
    name: str
    fn: Callable
    needs_calib: bool = False
    doc: str = ""
    # Per-layer passes over calibration data also offer ``layer_hook(graph, ctx) -> on_layer``;
    # consecutive ones share one sweep (each layer gets every such pass before the next layer).
    layer_hook: Optional[Callable] = None


def run_passes(graph: Graph, passes: list, ctx: Context) -> Graph:
    from mrq.passes.layer_data import run_layer_hooks
    done = []
    enabled = []
    for p in passes:
        if ctx.options.enabled(p.name):
            enabled.append(p)
        else:
            ctx.report.passes_skipped.append(p.name)
    i = 0
    while i < len(enabled):
        group = [enabled[i]]
        if enabled[i].layer_hook is not None and ctx.calib is not None:
            while i + len(group) < len(enabled) and enabled[i + len(group)].layer_hook is not None:
                group.append(enabled[i + len(group)])
        names = ", ".join(p.name for p in group)
        try:
            if len(group) > 1:
                graph = run_layer_hooks(graph.copy(), ctx, [p.layer_hook for p in group])
            else:
                graph = group[0].fn(graph.copy(), ctx)
        except PassError:
            raise
        except np.linalg.LinAlgError as exc:
            raise PassError(f"pass {names} failed ({exc}); passes run before: {', '.join(done) or 'none'}") from exc
        for p in group:
            done.append(p.name)
            ctx.report.passes_run.append(p.name)
        i += len(group)
    return graph
