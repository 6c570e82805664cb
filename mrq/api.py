"""Python API: load a model, lower it for a profile, simulate it, and measure its fidelity.

A thin layer over :mod:`mrq.pipeline` (the one pipeline every command uses)."""
from __future__ import annotations

from dataclasses import dataclass, field

from mrq.hw_profile import HwProfile
from mrq.ir import Graph
from mrq.lower import LoweredModel
from mrq.pipeline import (
    LAYOUTS,
    Pipeline,
    StreamResult,
    bind_inputs,
    layout_graph,
    profile_violations,
    resolve_profile,
)

__all__ = ["LAYOUTS", "Pipeline", "SimResult", "StreamResult", "bind_inputs", "layout_graph",
           "prepare", "profile_violations", "resolve_profile", "simulate", "simulate_dataset",
           "simulate_model"]


def prepare(model: str | Graph, profile: str | HwProfile, layout: str = "auto") -> LoweredModel:
    """Lower ``model`` for ``profile``, for callers that use the program's *outputs* only.

    ``layout='auto'`` (default) and ``'nhwc'`` run NCHW conv/pool chains in NHWC inside the
    simulator (faster; outputs bit-identical); the buffers between steps then differ from the
    model's own tensors. Use ``layout='native'`` to read intermediate tensors (traces, golden
    vectors, per-layer fidelity)."""
    return Pipeline(model, profile, layout).lowered


@dataclass
class SimResult:
    outputs: dict
    trace: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)     # list[LayerFidelity]
    violations: list = field(default_factory=list)
    lowered: LoweredModel | None = None


def simulate(model: str | Graph, profile: str | HwProfile, feeds: dict,
             fidelity: bool = True, trace: bool = False, threads: int | None = None,
             layout: str = "auto") -> SimResult:
    """Run ``model`` as the profile's hardware would, and (``fidelity``) compare every layer
    with the float reference.

    ``layout='auto'``: the native layout when ``trace`` or ``fidelity`` needs the model's
    intermediate tensors, else NHWC (see :func:`prepare`); the outputs are the same either way."""
    if layout == "auto" and (trace or fidelity):
        layout = "native"
    if layout == "nhwc" and (trace or fidelity):
        raise ValueError("layout='nhwc' changes the intermediate tensors: use it with "
                         "trace=False and fidelity=False")
    pipe = Pipeline(model, profile, layout)
    run = pipe.run(feeds, trace=trace or fidelity, threads=threads)
    sim = SimResult(outputs=run.outputs, stats=run.stats, lowered=pipe.lowered,
                    violations=pipe.violations())
    if trace:
        sim.trace = run.trace
    if fidelity:
        sim.layers = pipe.fidelity(feeds, run)
    return sim


def simulate_model(model_path: str, profile: str | HwProfile, feeds: dict) -> dict:
    """Outputs only (dict name -> array with the dtype/shape ONNX Runtime returns)."""
    return simulate(model_path, profile, feeds, fidelity=False).outputs


def simulate_dataset(model: str | Graph, profile: str | HwProfile, inputs, batch_size: int = 32,
                     fidelity: bool = True, labels=None, sink=None, threads: int | None = None,
                     progress: bool = False) -> StreamResult:
    """:func:`simulate` over a data set of any size, ``batch_size`` samples in memory at a time.

    ``inputs``: a path (.npz, .npy, or a directory of shards; see :func:`mrq.datasets.open_inputs`)
    or an :class:`mrq.datasets.InputSource`. ``labels``: a path or an array, for top-1
    accuracy. ``sink(outputs, trace)`` receives each batch's outputs. The per-layer fidelity is
    the same for every ``batch_size`` (see :class:`mrq.metrics.FidelityAccumulator`)."""
    from mrq.datasets import open_inputs, open_labels
    source = open_inputs(inputs) if isinstance(inputs, str) else inputs
    if isinstance(labels, str):
        labels = open_labels(labels, source.num_samples)
    pipe = Pipeline(model, profile, "native" if fidelity else "nhwc")
    return pipe.stream(source, batch_size, fidelity=fidelity, labels=labels, sink=sink,
                       threads=threads, progress=progress)
