"""Python API: load a model, lower it for a profile, simulate it, and measure its fidelity.

A thin layer over :mod:`mrq.pipeline` (the one pipeline every command uses)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from mrq.hw_profile import HwProfile
from mrq.ir import Graph
from mrq.lower import LoweredModel
from mrq.pipeline import (LAYOUTS, Pipeline, bind_inputs, layout_graph, profile_violations,
                          resolve_profile)

__all__ = ["LAYOUTS", "Pipeline", "SimResult", "bind_inputs", "layout_graph", "prepare",
           "profile_violations", "resolve_profile", "simulate", "simulate_model"]


def prepare(model: Union[str, Graph], profile: Union[str, HwProfile], layout: str = "auto") -> LoweredModel:
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
    lowered: Optional[LoweredModel] = None


def simulate(model: Union[str, Graph], profile: Union[str, HwProfile], feeds: dict,
             fidelity: bool = True, trace: bool = False, threads: Optional[int] = None,
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


def simulate_model(model_path: str, profile: Union[str, HwProfile], feeds: dict) -> dict:
    """Outputs only (dict name -> array with the dtype/shape ONNX Runtime returns)."""
    return simulate(model_path, profile, feeds, fidelity=False).outputs
