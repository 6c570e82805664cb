"""Python API: load a model, lower it for a profile, simulate it, and measure its fidelity."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Union

import numpy as np

from mrq.errors import InputDataError
from mrq.float_ref import FloatReference
from mrq.hw_profile import HwProfile, load_profile
from mrq.ir import Graph, storage_dtype
from mrq.layout import to_nhwc
from mrq.lower import LoweredModel, arithmetic_from_profile, lower
from mrq.metrics import LayerFidelity, layer_fidelity
from mrq.onnx_import import load_model
from simulator.program import Program, TensorSpec
from simulator.run import run


def resolve_profile(profile: Union[str, HwProfile]) -> HwProfile:
    return profile if isinstance(profile, HwProfile) else load_profile(profile)


def profile_violations(graph: Graph, profile: HwProfile) -> list[str]:
    """Lines describing where the model's quantization breaks the profile's format rules."""
    lines = []
    roles = {}
    for node in graph.nodes:
        if node.op in ("Conv", "Gemm") and not node.attrs.get("integer_output"):
            roles[node.inputs[1]] = "weights"
            if len(node.inputs) > 2:
                roles[node.inputs[2]] = "bias"
    for name, t in graph.tensors.items():
        role = roles.get(name, "activations")
        if t.qparams is None or (role != "bias" and t.dtype in ("int32", "int64")):
            continue
        qp = t.qparams
        values = np.asarray(t.data) if t.is_const else None
        for problem in profile.check_tensor(role, storage_dtype(qp.dtype), qp.scale, qp.zero_point, qp.axis,
                                            values=values):
            lines.append(f"{name}: {problem}")
    if profile.ops.shared_grid:
        from mrq.passes.grid_classes import shared_grid_violations
        lines.extend(shared_grid_violations(graph, profile.ops.shared_grid))
    return lines


LAYOUTS = ("auto", "native", "nhwc")


def _layout_graph(graph: Graph, layout: str) -> Graph:
    """The graph the simulator runs: ``native`` as imported; ``nhwc``/``auto`` with the NCHW
    conv/pool chains rewritten to NHWC (:func:`mrq.layout.to_nhwc`; same outputs bit for bit,
    but intermediate tensors change layout and name)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    return graph if layout == "native" else to_nhwc(graph)


def prepare(model: Union[str, Graph], profile: Union[str, HwProfile], layout: str = "auto") -> LoweredModel:
    """Lower ``model`` for ``profile``, for callers that use the program's *outputs* only.

    ``layout='auto'`` (default) and ``'nhwc'`` run NCHW conv/pool chains in NHWC inside the
    simulator (faster; outputs bit-identical); the buffers between steps then differ from the
    model's own tensors. Use ``layout='native'`` to read intermediate tensors (traces, golden
    vectors, per-layer fidelity)."""
    graph = load_model(model) if isinstance(model, str) else model
    return lower(_layout_graph(graph, layout), arithmetic_from_profile(resolve_profile(profile)))


def _check_shape(name: str, spec_shape: tuple, arr: np.ndarray) -> None:
    if len(spec_shape) and arr.ndim != len(spec_shape):
        raise InputDataError(f"input {name!r}: expected rank {len(spec_shape)} "
                             f"{_fmt_shape(spec_shape)}, got shape {tuple(arr.shape)}")
    for i, (want, got) in enumerate(zip(spec_shape, arr.shape)):
        if i == 0 or want is None or want == 0:
            continue
        if want != got:
            raise InputDataError(f"input {name!r}: expected shape {_fmt_shape(spec_shape)}, "
                                 f"got {tuple(arr.shape)} (dimension {i} is {got}, must be {want})")


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("N" if i == 0 or d is None else str(d) for i, d in enumerate(shape)) + ")"


def bind_inputs(lowered: LoweredModel, feeds: dict) -> tuple[Program, dict]:
    """Check user arrays against the model's inputs. Float arrays go through the model's input
    quantization; integer arrays are taken as already quantized (the Quantize step is skipped)."""
    program = lowered.program
    expected = {s.name: s for s in program.inputs}
    unknown = sorted(set(feeds) - set(expected))
    missing = sorted(set(expected) - set(feeds))
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
        if unknown:
            parts.append(f"unknown input(s) {', '.join(map(repr, unknown))}")
        raise InputDataError("; ".join(parts) + f" (the model's inputs: {', '.join(map(repr, expected))})")
    steps = list(program.steps)
    inputs = []
    bound = {}
    for spec in program.inputs:
        arr = np.asarray(feeds[spec.name])
        _check_shape(spec.name, spec.shape, arr)
        if arr.ndim == 0:
            raise InputDataError(f"input {spec.name!r}: a scalar; the leading dimension is the batch")
        if arr.dtype == np.dtype(spec.dtype):
            bound[spec.name] = np.ascontiguousarray(arr)
            inputs.append(spec)
            continue
        quant = [s for s in steps if s.kind == "quantize" and s.inputs == (spec.name,)]
        if spec.dtype == "float32" and arr.dtype.kind == "f":
            bound[spec.name] = np.ascontiguousarray(arr.astype(np.float32))
            inputs.append(spec)
        elif spec.dtype == "float32" and arr.dtype.kind in "iu" and len(quant) == 1:
            q = quant[0]
            if arr.dtype != np.dtype(q.params["out_dtype"]):
                raise InputDataError(f"input {spec.name!r}: integer arrays must be already-quantized "
                                     f"{q.params['out_dtype']} codes, got {arr.dtype}")
            steps.remove(q)
            out = q.outputs[0]
            bound[out] = np.ascontiguousarray(arr)
            inputs.append(TensorSpec(out, q.params["out_dtype"], spec.shape))
        else:
            raise InputDataError(f"input {spec.name!r}: expected dtype {spec.dtype}, got {arr.dtype}")
    return replace(program, inputs=tuple(inputs), steps=tuple(steps)), bound


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
    prof = resolve_profile(profile)
    graph = load_model(model) if isinstance(model, str) else model
    if layout == "auto" and (trace or fidelity):
        layout = "native"
    if layout == "nhwc" and (trace or fidelity):
        raise ValueError("layout='nhwc' changes the intermediate tensors: use it with "
                         "trace=False and fidelity=False")
    lowered = lower(_layout_graph(graph, layout), arithmetic_from_profile(prof))
    program, bound = bind_inputs(lowered, feeds)
    result = run(program, bound, trace=trace or fidelity, threads=threads)
    sim = SimResult(outputs=result.outputs, stats=result.stats, lowered=lowered,
                    violations=profile_violations(graph, prof))
    full_trace = dict(result.trace)
    full_trace.update(bound)
    if trace:
        sim.trace = full_trace
    if fidelity:
        reference = FloatReference(graph).run({k: np.asarray(v) for k, v in feeds.items()})
        node_steps: dict = {}
        for step_name, node_name in lowered.step_node.items():
            node_steps.setdefault(node_name, []).append(step_name)
        sim.layers = layer_fidelity(graph, full_trace, reference, result.stats, node_steps)
    return sim


def simulate_model(model_path: str, profile: Union[str, HwProfile], feeds: dict) -> dict:
    """Outputs only (dict name -> array with the dtype/shape ONNX Runtime returns)."""
    return simulate(model_path, profile, feeds, fidelity=False).outputs
