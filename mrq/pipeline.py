"""The one pipeline every command and :mod:`mrq.api` runs: load -> layout -> lower -> bind ->
run -> fidelity.

:class:`Pipeline` holds a model lowered for a profile in a chosen layout; :meth:`Pipeline.run`
binds user arrays and simulates one batch, :meth:`Pipeline.fidelity` compares a run with the
float reference. The layout choice is made here only: ``native`` keeps the model's own
intermediate tensors (traces, golden vectors, per-layer fidelity); ``nhwc`` (the default for
outputs-only work) runs NCHW conv/pool chains channels-last, bit-identical at the outputs.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from mrq.errors import InputDataError
from mrq.hw_profile import HwProfile, load_profile
from mrq.ir import Graph, storage_dtype
from mrq.layout import to_nhwc
from mrq.lower import LoweredModel, arithmetic_from_profile, lower
from simulator.program import Program, TensorSpec


def resolve_profile(profile: str | HwProfile) -> HwProfile:
    return profile if isinstance(profile, HwProfile) else load_profile(profile)


def profile_violations(graph: Graph, profile: HwProfile) -> list[str]:
    """Lines describing where the model's quantization breaks the profile's format rules (each
    tensor against its own layer's formats when the profile has ``layers``)."""
    from mrq.mixed_precision import LayerFormats
    formats = LayerFormats.of(graph, profile)
    lines = []
    from mrq.lower import IR_OP_NAMES
    roles = {}
    host_constants = set()   # weights of host_ops nodes: in the host's formats, not the NPU's
    for node in graph.nodes:
        if node.op in ("Conv", "Gemm", "DynamicMatMul", "DynamicConv", "TransposeConv") \
                and not node.attrs.get("integer_output"):
            roles[node.inputs[1]] = "weights"
            if len(node.inputs) > 2:
                roles[node.inputs[2]] = "bias"
            if any(profile.runs_on_host(op) for op in IR_OP_NAMES.get(node.op, {node.op})):
                host_constants.update(node.inputs[1:3])
    for name, t in graph.tensors.items():
        if name in host_constants:
            continue
        role = roles.get(name, "activations")
        if t.qparams is None or (role != "bias" and t.dtype in ("int32", "int64")):
            continue
        qp = t.qparams
        values = np.asarray(t.data) if t.is_const else None
        # a run-time tensor's codes are unknown: its grid's code range is what must fit (an
        # 8-bit grid in int8 under a 4-bit layer is a violation); constants' values are checked
        code_range = (qp.qmin, qp.qmax) if values is None and role == "activations" else None
        for problem in formats.for_tensor(name).check_tensor(
                role, storage_dtype(qp.dtype), qp.scale, qp.zero_point, qp.axis, values=values,
                code_range=code_range):
            lines.append(f"{name}: {problem}")
    if profile.ops.shared_grid:
        from mrq.passes.grid_classes import shared_grid_violations
        lines.extend(shared_grid_violations(graph, profile.ops.shared_grid))
    return lines


LAYOUTS = ("auto", "native", "nhwc")


def layout_graph(graph: Graph, layout: str) -> Graph:
    """The graph the simulator runs: ``native`` as imported; ``nhwc``/``auto`` with the NCHW
    conv/pool chains rewritten to NHWC (:func:`mrq.layout.to_nhwc`; same outputs bit for bit,
    but intermediate tensors change layout and name)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    return graph if layout == "native" else to_nhwc(graph)


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


def check_batch(graph: Graph, batch: int, what: str) -> None:
    """Refuse a batch of more than one sample for a model that bakes batch 1 into a constant
    shape (ONNX Runtime refuses it too: the model declares its input batch as 1)."""
    from mrq.onnx_import import BATCH_FIXED_KEY
    why = graph.meta.get(BATCH_FIXED_KEY)
    if why and batch > 1:
        raise InputDataError(f"{what}: a batch of {batch} samples, but the model takes one at a time "
                             f"({why}, which holds the batch size 1 it was exported with)")


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("N" if i == 0 or d is None else str(d) for i, d in enumerate(shape)) + ")"


def bind_inputs(lowered: LoweredModel, feeds: dict) -> tuple[Program, dict]:
    """Check user arrays against the model's inputs.

    A float input takes float arrays (through the model's input quantization) or integer codes
    of its quantization grid (the Quantize step is skipped), except where ``mrq requant`` moved
    that grid: codes made for the old grid would be read on the new one, so they are refused.
    An integer input takes its codes, or float arrays, which are quantized onto its own grid
    with the profile's quantizer, so one float file drives a model and its re-quantized
    variants alike."""
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
        if arr.ndim:
            check_batch(lowered.graph, arr.shape[0], f"input {spec.name!r}")
        if arr.ndim == 0:
            raise InputDataError(f"input {spec.name!r}: a scalar; the leading dimension is the batch")
        if arr.dtype == np.dtype(spec.dtype):
            bound[spec.name] = np.ascontiguousarray(arr)
            inputs.append(spec)
            continue
        quant = [s for s in steps if s.kind == "quantize" and s.inputs == (spec.name,)]
        regridded = lowered.graph.meta.get("regridded_inputs", {}).get(spec.name)
        if spec.dtype == "float32" and arr.dtype.kind in "iu" and regridded is not None:
            raise InputDataError(
                f"input {spec.name!r}: got {arr.dtype} codes, but `mrq requant` moved this "
                f"input off its original grid ({regridded}); codes made for that grid would be "
                f"read on the new one. Pass the real values instead: float32 arrays of "
                f"scale * (code - zero_point) of the original grid")
        if spec.dtype != "float32" and arr.dtype.kind == "f":
            quantize = _input_quantize(lowered, spec)
            steps.insert(0, quantize)
            bound[quantize.inputs[0]] = np.ascontiguousarray(arr.astype(np.float32))
            inputs.append(TensorSpec(quantize.inputs[0], "float32", spec.shape))
        elif spec.dtype == "float32" and arr.dtype.kind == "f":
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


def _input_quantize(lowered: LoweredModel, spec: TensorSpec):
    """A quantize step from float values onto an integer input's own grid, with the profile's
    input quantizer."""
    from simulator.steps import make_step
    qp = lowered.graph.tensors[spec.name].qparams
    if qp is None:
        raise InputDataError(f"input {spec.name!r}: expected {spec.dtype} codes, got float "
                             f"values, and the input has no quantization grid to put them on")
    a = lowered.arithmetic
    return make_step("quantize", f"{spec.name}/quantize", (spec.name + "__real",), (spec.name,),
                     scale=qp.scale.astype(np.float32), zero_point=qp.zero_point.astype(np.int64),
                     axis=qp.axis if qp.axis is not None else 1, rounding=a.quantize_rounding,
                     method=a.quantize_method, out_min=qp.qmin, out_max=qp.qmax,
                     out_dtype=spec.dtype)



@dataclass
class Run:
    """One simulated batch: ``outputs``; ``trace`` (every buffer, inputs included, when traced);
    ``stats`` per step; the bound ``program``."""

    outputs: dict
    trace: dict
    stats: dict
    program: Program
    bound: dict = field(default_factory=dict)


class Pipeline:
    """A model lowered for a profile, ready to run batches.

    ``layout``: ``native``, ``nhwc``, or ``auto`` (= ``nhwc``; pass ``native`` whenever the
    model's intermediate tensors are read). ``every_op``: lower ops outside the profile's
    ``supported_ops`` too (with its arithmetic), for analyses that cover every layer."""

    def __init__(self, model: str | Graph, profile: str | HwProfile,
                 layout: str = "auto", every_op: bool = False):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, "
                             f"got {layout!r}")
        self.profile = resolve_profile(profile)
        self.graph = _load(model)
        if self.profile.layers:
            from mrq.mixed_precision import LayerFormats
            LayerFormats.of(self.graph, self.profile)   # a `layers` entry must select a layer
        self.layout = "native" if layout == "native" else "nhwc"
        arithmetic = arithmetic_from_profile(self.profile)
        if every_op:
            arithmetic = replace(arithmetic, supported_ops=None)
        self.lowered: LoweredModel = lower(layout_graph(self.graph, self.layout), arithmetic)

    @staticmethod
    def load(model: str | Graph) -> Graph:
        """The IR graph of a model file (ONNX or TFLite), or the graph itself."""
        return _load(model)

    @property
    def program(self) -> Program:
        return self.lowered.program

    def violations(self) -> list:
        """Where the model breaks the profile: formats, shared grids, and parameters the
        lowering had to bring into the profile's limits."""
        lines = profile_violations(self.graph, self.profile)
        lines += [str(v) for v in getattr(self.lowered, "limit_violations", [])]
        return lines

    def node_steps(self) -> dict:
        """IR node name -> the names of the steps that implement it."""
        out: dict = {}
        for step in self.lowered.program.steps:
            out.setdefault(self.lowered.step_node.get(step.name, step.name), []).append(step.name)
        return out

    def bind(self, feeds: dict) -> tuple:
        return bind_inputs(self.lowered, feeds)

    def run(self, feeds: dict, trace: bool = False, threads: int | None = None) -> Run:
        from simulator.run import run
        program, bound = self.bind(feeds)
        result = run(program, bound, trace=trace, threads=threads)
        full = {}
        if trace:
            full = dict(result.trace)
            full.update(bound)
        return Run(result.outputs, full, result.stats, program, bound)

    def fidelity(self, feeds: dict, run: Run) -> list:
        """Per-layer fidelity of a traced run against the float reference of the model."""
        from mrq.float_ref import FloatReference
        from mrq.metrics import layer_fidelity
        if self.layout != "native":
            raise ValueError("per-layer fidelity reads the model's own tensors: use "
                             "layout='native'")
        reference = FloatReference(self.graph).run({k: np.asarray(v) for k, v in feeds.items()})
        return layer_fidelity(self.graph, run.trace, reference, run.stats, self.node_steps())

    def stream(self, source, batch_size: int, *, fidelity: bool = True, trace: bool = False,
               labels: np.ndarray | None = None, threads: int | None = None,
               sink: Callable[[dict, dict], None] | None = None,
               progress: bool | str = False, execute: Callable | None = None) -> StreamResult:
        """Simulate every sample of ``source`` (an :class:`mrq.datasets.InputSource`),
        ``batch_size`` at a time, holding one batch in memory.

        ``fidelity``: per-layer fidelity against the float reference, accumulated batch by batch
        (the same numbers as one batch of every sample; needs ``layout='native'``). ``labels``:
        top-1 accuracy of the single output, and of the float reference with ``fidelity``.
        ``sink(outputs, trace)`` receives each batch's outputs (and, with ``trace``, every
        buffer) as it is computed. ``progress``: a progress bar on stderr (a string: its
        label). ``execute(program, bound, n_batches)``: runs one bound batch of an outputs-only
        stream (a compiled program, say) instead of the interpreter."""
        from mrq.metrics import FidelityAccumulator
        if (fidelity or trace) and self.layout != "native":
            raise ValueError("per-layer fidelity and traces read the model's own tensors: use "
                             "layout='native'")
        source = source.bound_to([s.name for s in self.program.inputs])
        accumulator = FidelityAccumulator(self.graph, self.node_steps()) if fidelity else None
        reference = None
        if fidelity:
            from mrq.float_ref import FloatReference
            reference = FloatReference(self.graph)
        result = StreamResult(num_samples=source.num_samples)
        top1_output = _top1_output(self.graph) if labels is not None else None
        if labels is not None and top1_output is None:
            raise InputDataError("labels: top-1 accuracy needs a model with one output of class "
                                 "scores (shape (N, classes))")
        if labels is not None:
            result.correct = 0
            if fidelity:
                result.float_correct = 0
        bar = None
        if progress and source.num_samples > batch_size:
            from tqdm import tqdm
            # shown only when the run lasts more than a couple of seconds
            bar = tqdm(total=source.num_samples, unit="input", file=sys.stderr, delay=2.0,
                       desc=progress if isinstance(progress, str) else "simulating")
        seen = 0
        n_batches = -(-source.num_samples // batch_size)
        try:
            for feeds in source.batches(batch_size):
                if execute is not None and not (fidelity or trace):
                    program, bound = self.bind(feeds)
                    res = execute(program, bound, n_batches)
                    run = Run(res.outputs, {}, res.stats, program, bound)
                else:
                    run = self.run(feeds, trace=fidelity or trace, threads=threads)
                _add_stats(result.stats, run.stats)
                ref = None
                if fidelity:
                    ref = reference.run(feeds)
                    accumulator.add(run.trace, ref, run.stats)
                n = next(iter(feeds.values())).shape[0]
                if labels is not None:
                    want = labels[seen:seen + n]
                    result.correct += int(np.count_nonzero(_top1(run.outputs[top1_output]) == want))
                    if ref is not None:
                        result.float_correct += int(np.count_nonzero(_top1(ref[top1_output]) == want))
                if sink is not None:
                    sink(run.outputs, run.trace if trace else {})
                seen += n
                if bar is not None:
                    bar.update(n)
                del run, ref
        finally:
            if bar is not None:
                bar.close()
        if accumulator is not None:
            result.layers = accumulator.rows()
        return result


@dataclass
class StreamResult:
    """What :meth:`Pipeline.stream` measured over the whole set: per-layer ``layers``
    (``LayerFidelity``), the per-step counters summed over batches, and with labels the
    count of correct top-1 outputs (simulation and float reference)."""

    num_samples: int
    layers: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    correct: int | None = None
    float_correct: int | None = None

    @property
    def accuracy(self) -> float | None:
        return None if self.correct is None else self.correct / max(self.num_samples, 1)

    @property
    def float_accuracy(self) -> float | None:
        return None if self.float_correct is None else self.float_correct / max(self.num_samples, 1)


def _add_stats(total: dict, stats: dict) -> None:
    """Per-step counters are counts of events: a data set's are the sums of its batches'."""
    for step, counters in stats.items():
        into = total.setdefault(step, {})
        for key, value in counters.items():
            into[key] = into.get(key, 0) + int(value)


def _top1_output(graph: Graph) -> str | None:
    """The output whose argmax is the predicted class: the model's only output, when it holds
    per-class scores."""
    if len(graph.outputs) != 1:
        return None
    shape = graph.tensors[graph.outputs[0]].shape
    return graph.outputs[0] if shape is not None and len(shape) >= 2 else None


def _top1(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    return np.argmax(scores.reshape(scores.shape[0], -1), axis=-1)


def _load(model: str | Graph) -> Graph:
    from mrq.onnx_import import load_model
    return load_model(model) if isinstance(model, str) else model
