"""Compare a model under several hardware profiles (``mrq compare``), as a decision.

The input model as given is simulated bit-exactly under its own runtime (the *baseline*:
the ONNX Runtime profile of this host class for ONNX, ``litert-default`` for TFLite, or
``baseline=``), and every
profile's model (re-quantized where needed, see :func:`requantize_for_profile`) on the same
inputs, read once, batch by batch; every statistic accumulates over batches, so memory follows
the batch size. Measured against the baseline and the float reference of the *input* model:

- accuracy with ``labels`` and its 95% Wilson interval; the change against the input model with
  a 95% interval for the paired difference (Newcombe's method 10); top-1 agreement with the
  input model and with the float reference; with ``max_loss`` a verdict per profile decided on
  the interval (:func:`verdict`: PASS, FAIL or INCONCLUSIVE);
- per layer: SQNR and max |error| in output LSBs, both **accumulated** (the layer fed the
  network's own integer input, i.e. the real execution) and **single** (the layer fed its float
  reference input rounded onto its input grid, so only the layer's own error shows; the lowest
  single SQNR is where error *enters*); the single error split into clipping and rounding;
  the clamped outputs split into saturation at the storage range and activation clamps
  (ReLU/ReLU6/Clip); the largest bias code against the bias width;
- accumulator overflow counts, weight memory in bytes, and the provenance of the run.

The result is printed as a table and written as one self-contained HTML page (inline CSS, the
matplotlib plots embedded as base64 PNG, no external resources).
"""
from __future__ import annotations

import base64
import html
import io
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from mrq.errors import InputDataError, MrqError

# --------------------------------------------------------------------------------------------
# The re-quantization hook
# --------------------------------------------------------------------------------------------


@dataclass
class RequantOutcome:
    graph: object                 # the graph to simulate
    requantized: bool
    note: str
    violations_before: list
    violations_after: list


def model_violations(graph, profile) -> list:
    """Format violations (:func:`mrq.api.profile_violations`) plus weight/bias codes outside the
    profile's widths (as ``mrq check`` reports them)."""
    from mrq.api import profile_violations, resolve_profile
    from mrq.commands.check import value_violations
    profile = resolve_profile(profile)
    return profile_violations(graph, profile) + value_violations(graph, profile)


def requantize_for_profile(graph, profile, calib: dict | None = None) -> RequantOutcome:
    """THE place where re-quantization plugs into ``compare``.

    A model that satisfies ``profile`` is simulated as it is. Otherwise, when the re-quantizer
    (:func:`mrq.requant.requantize`) is available, the model is re-quantized to the profile first
    (``calib``: optional calibration inputs); when it is not available or fails, the model is
    simulated with the profile's arithmetic on its own grids and the report says so."""
    from mrq.api import resolve_profile
    profile = resolve_profile(profile)
    before = model_violations(graph, profile)
    if not before:
        return RequantOutcome(graph, False, "the model satisfies the profile", [], [])
    try:
        from mrq.requant import requantize
    except ImportError:
        return RequantOutcome(graph, False, "the re-quantizer is not available: simulated with the "
                              "profile's arithmetic on the model's own grids", before, before)
    try:
        new, report = requantize(graph, profile, calib)
    except MrqError as exc:
        return RequantOutcome(graph, False, f"re-quantization failed ({exc}): simulated with the "
                              f"profile's arithmetic on the model's own grids", before, before)
    after = model_violations(new, profile)
    secs = getattr(report, "seconds", 0.0) or 0.0
    note = (f"re-quantized to the profile ({len(before)} violation(s) before, {len(after)} after"
            f"{', calibrated on ' + str(_batch(calib)) + ' sample(s)' if calib else ', data-free'}"
            f", {secs:.2f} s)")
    return RequantOutcome(new, True, note, before, after)


# --------------------------------------------------------------------------------------------
# Statistics: accuracy intervals, the paired change against the input model, verdicts
# --------------------------------------------------------------------------------------------

# two-sided 95%: the standard normal quantile 0.975
Z95 = 1.959963984540054

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (nan, nan for ``n == 0``)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    z2 = z * z
    den = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / den
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / den
    # the limits at k = 0 and k = n are exactly 0 and 1; float rounding must not move them
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


@dataclass(frozen=True)
class PairedCounts:
    """The 2x2 table of one profile against the input model on the same samples: ``both``
    correct, ``base_only`` (the input model right, the profile wrong), ``new_only`` (the
    reverse), ``neither``."""
    both: int
    base_only: int
    new_only: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.base_only + self.new_only + self.neither

    @property
    def change(self) -> float:
        """Accuracy of the profile minus accuracy of the input model."""
        return (self.new_only - self.base_only) / self.n if self.n else math.nan


def paired_change_interval(c: PairedCounts, z: float = Z95) -> tuple[float, float]:
    """Interval for (profile accuracy - input model accuracy) on paired samples: Newcombe's
    method 10 (Statistics in Medicine 17:2635, 1998), the Wilson score intervals of the two
    accuracies combined with the correlation of the pairs. The same images are scored twice, so
    an unpaired interval would be far too wide; the width is set by the discordant pairs."""
    n = c.n
    if n == 0:
        return (math.nan, math.nan)
    p_new, p_base = (c.both + c.new_only) / n, (c.both + c.base_only) / n
    l_new, u_new = wilson_interval(c.both + c.new_only, n, z)
    l_base, u_base = wilson_interval(c.both + c.base_only, n, z)
    margins = ((c.both + c.base_only) * (c.new_only + c.neither)
               * (c.both + c.new_only) * (c.base_only + c.neither))
    phi = (c.both * c.neither - c.base_only * c.new_only) / math.sqrt(margins) if margins else 0.0
    theta = p_new - p_base
    down = (p_new - l_new) ** 2 - 2 * phi * (p_new - l_new) * (u_base - p_base) + (u_base - p_base) ** 2
    up = (u_new - p_new) ** 2 - 2 * phi * (u_new - p_new) * (p_base - l_base) + (p_base - l_base) ** 2
    return (max(-1.0, theta - math.sqrt(max(down, 0.0))), min(1.0, theta + math.sqrt(max(up, 0.0))))


def verdict(change_interval: tuple[float, float], max_loss: float | None) -> str | None:
    """PASS when even the worst end of the 95% interval loses at most ``max_loss`` (a fraction:
    0.005 = 0.5 points), FAIL when even the best end loses more, else INCONCLUSIVE (the interval
    straddles the threshold: more samples decide). Decided on the interval, never on the point
    estimate, so a PASS is a claim at 95% confidence."""
    if max_loss is None:
        return None
    lo, hi = change_interval
    if math.isnan(lo) or math.isnan(hi):
        return INCONCLUSIVE
    if -lo <= max_loss:
        return PASS
    if -hi > max_loss:
        return FAIL
    return INCONCLUSIVE


# --------------------------------------------------------------------------------------------
# Error bookkeeping
# --------------------------------------------------------------------------------------------


class _Err:
    """Running SQNR / max-LSB / differing-code counts of one tensor over batches; the noise is
    also split into the part from clipping (the reference outside the grid's range) and the rest
    (rounding, and arithmetic)."""

    __slots__ = ("clip_noise", "max_lsb", "n", "n_diff", "noise", "signal")

    def __init__(self):
        self.signal = 0.0
        self.noise = 0.0
        self.clip_noise = 0.0
        self.max_lsb = 0.0
        self.n_diff = 0
        self.n = 0

    def add(self, ref: np.ndarray, codes: np.ndarray, qp) -> None:
        from mrq.metrics import quantize_reference
        codes = np.asarray(codes)
        ref = np.asarray(ref, np.float64)
        deq = qp.dequantize(codes)
        shape = qp.broadcast_shape(codes.ndim)
        lsb = qp.scale.astype(np.float64).reshape(shape)
        zp = qp.zero_point.astype(np.float64).reshape(shape)
        e = ref - deq
        # the grid's real range: a reference beyond it is clipped, whatever the rounding
        clip_e = ref - np.clip(ref, (qp.qmin - zp) * lsb, (qp.qmax - zp) * lsb)
        self.signal += float(np.sum(np.square(ref)))
        self.noise += float(np.sum(np.square(e)))
        self.clip_noise += float(np.sum(np.square(clip_e)))
        if e.size:
            self.max_lsb = max(self.max_lsb, float(np.max(np.abs(e) / lsb)))
        self.n_diff += int(np.count_nonzero(codes.astype(np.int64) != quantize_reference(ref, qp)))
        self.n += int(codes.size)

    @staticmethod
    def _db(signal: float, noise: float) -> float:
        if noise <= 0.0:
            return float("inf")
        if signal == 0.0:
            return float("-inf")
        return 10.0 * math.log10(signal / noise)

    @property
    def sqnr_db(self) -> float:
        return self._db(self.signal, self.noise)

    @property
    def clipping_db(self) -> float:
        return self._db(self.signal, self.clip_noise)

    @property
    def rounding_db(self) -> float:
        # e = clip part + rest; the rest's energy, from the two parts' energies, is not
        # additive in general, so the rest is measured as total minus clipping (>= 0 up to
        # float error), the share a finer grid could remove
        return self._db(self.signal, max(self.noise - self.clip_noise, 0.0))


@dataclass
class LayerRow:
    layer: str
    op: str
    tensor: str
    sqnr_single: float
    sqnr_accumulated: float
    max_lsb_single: float
    max_lsb_accumulated: float
    n_diff: int
    n_elements: int
    acc_overflow: int = 0
    out_saturated: int = 0
    # conv/gemm: bits the static worst-case partial sum needs (mrq.accumulators) vs the profile's
    acc_need_bits: int | None = None
    acc_bits: int | None = None
    # the layer's own error (single run) split: SQNR of the clipping part and of the rest
    sqnr_clipping: float = float("inf")
    sqnr_rounding: float = float("inf")
    # out_saturated split: clamped at the storage range (information lost) vs by the layer's
    # activation (ReLU/ReLU6/Clip: intended); None where the split could not be computed
    saturated_range: int | None = None
    clamped_activation: int | None = None
    # conv/gemm: largest |bias code| and the profile's bias width
    bias_max_code: int | None = None
    bias_bits: int | None = None
    # conv/gemm: the layer's weight and output bits under the profile (its `layers` overrides)
    weight_bits: int | None = None
    activation_bits: int | None = None

    @property
    def compounding_db(self) -> float:
        """How much worse the accumulated SQNR is than the single one (dB)."""
        a, s = self.sqnr_accumulated, self.sqnr_single
        if math.isinf(a) and math.isinf(s):
            return 0.0
        return s - a

    @property
    def bias_headroom_bits(self) -> int | None:
        """Unused magnitude bits of the bias register: 0 means the largest code fills it."""
        if self.bias_max_code is None or self.bias_bits is None:
            return None
        return self.bias_bits - 1 - int(self.bias_max_code).bit_length()

    def as_dict(self) -> dict:
        return dict(self.__dict__, compounding_db=self.compounding_db,
                    bias_headroom_bits=self.bias_headroom_bits)


@dataclass
class ProfileResult:
    profile: str
    description: str = ""
    role: str = "profile"                            # profile | baseline (the input model)
    requantized: bool = False
    note: str = ""
    violations_before: list = field(default_factory=list)
    violations: list = field(default_factory=list)
    layers: list = field(default_factory=list)       # LayerRow
    top1_agreement: float | None = None              # with the float reference
    baseline_agreement: float | None = None          # with the input model's top-1
    baseline_agreement_ci: tuple | None = None
    accuracy: float | None = None
    accuracy_ci: tuple | None = None
    paired: PairedCounts | None = None               # against the input model (labels)
    change: float | None = None                      # accuracy - input model accuracy
    change_ci: tuple | None = None
    verdict: str | None = None
    verdict_basis: str = ""
    output_sqnr_db: float | None = None
    output_max_err_lsb: float | None = None
    output_layer: str = ""
    entry_layer: str = ""                            # lowest single-layer SQNR: error enters here
    acc_overflow: int = 0
    out_saturated: int = 0
    seconds: float = 0.0
    weight_bytes: int = 0
    error: str | None = None

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["layers"] = [r.as_dict() for r in self.layers]
        d["paired"] = dict(self.paired.__dict__) if self.paired is not None else None
        return d


@dataclass
class CompareResult:
    model: str
    n_samples: int
    batch_size: int
    has_labels: bool
    float_accuracy: float | None
    profiles: list                                   # ProfileResult
    baseline: ProfileResult | None = None            # the input model under its own runtime
    float_accuracy_ci: tuple | None = None
    max_loss: float | None = None                    # fraction (0.005 = 0.5 points)
    provenance: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every profile passed the threshold (True without a threshold)."""
        return self.max_loss is None or all(p.verdict == PASS for p in self.profiles)

    def as_dict(self) -> dict:
        return {"model": self.model, "n_samples": self.n_samples, "batch_size": self.batch_size,
                "has_labels": self.has_labels, "float_accuracy": self.float_accuracy,
                "float_accuracy_ci": self.float_accuracy_ci,
                "max_loss_points": None if self.max_loss is None else 100.0 * self.max_loss,
                "verdict_rule": VERDICT_RULE if self.max_loss is not None else None,
                "provenance": self.provenance,
                "baseline": self.baseline.as_dict() if self.baseline is not None else None,
                "profiles": [p.as_dict() for p in self.profiles]}


VERDICT_RULE = ("95% intervals (accuracy: Wilson; change vs the input model: Newcombe's paired "
                "method 10). PASS: the worst end of the change interval loses at most --max-loss "
                "points; FAIL: even the best end loses more; else INCONCLUSIVE. Without labels the "
                "loss is bounded by the share of changed top-1 predictions, so a profile can PASS "
                "or be INCONCLUSIVE but never FAIL.")


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _batch(feeds) -> int:
    return int(next(iter(feeds.values())).shape[0]) if feeds else 0


class ArraySource:
    """In-memory inputs with the interface of :func:`mrq.datasets.open_inputs`'s sources."""

    def __init__(self, feeds: dict):
        self._feeds = {k: np.asarray(v) for k, v in feeds.items()}
        self.names = list(self._feeds)
        self.num_samples = _batch(self._feeds)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None):
        stop = self.num_samples if stop is None else min(stop, self.num_samples)
        for i in range(start, stop, batch_size):
            yield {k: v[i:min(i + batch_size, stop)] for k, v in self._feeds.items()}


def _source(inputs):
    return inputs if hasattr(inputs, "batches") else ArraySource(inputs)


def _top1(x: np.ndarray) -> np.ndarray | None:
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[-1] < 2:
        return None
    return np.argmax(x.reshape(x.shape[0], -1) if x.ndim > 2 else x, axis=-1)


def weight_bytes(graph, profile=None) -> int:
    """Bytes of the conv/gemm weights and biases. With ``profile`` (for a model that satisfies
    it) at each layer's weight and bias widths under the profile, else at the model's code
    widths; sub-byte codes are packed (two 4-bit weights per byte), each tensor rounded up to
    whole bytes."""
    from mrq.ir import dtype_range
    from mrq.mixed_precision import LayerFormats
    formats = LayerFormats.of(graph, profile, check=False) if profile is not None else None
    total = 0
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm"):
            continue
        for role, name in zip(("weights", "bias"), node.inputs[1:3]):
            t = graph.tensors.get(name)
            if t is None or t.data is None:
                continue
            if formats is not None:
                layer = formats.for_node(node.name)    # each layer at its own widths
                bits = layer.bias.bits if role == "bias" else layer.weights.bits
            else:
                try:
                    lo, hi = dtype_range(t.dtype)
                except KeyError:
                    lo, hi = dtype_range(np.asarray(t.data).dtype.name)
                bits = round(math.log2(hi - lo + 1))
            total += (np.asarray(t.data).size * bits + 7) // 8
    return total


def _noop_bar(total, **_):
    class _Bar:
        def update(self, n=1):
            pass

        def set_postfix_str(self, s):
            pass

        def close(self):
            pass
    return _Bar()


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return _noop_bar(total)
    try:
        from tqdm import tqdm
    except ImportError:
        return _noop_bar(total)
    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False, dynamic_ncols=True)


def _single_layer_outputs(graph, program, bound, trace, ref, node_steps) -> dict:
    """Each node run alone on its float reference input rounded onto its input grid."""
    from mrq.accumulators import execute_step
    from mrq.metrics import quantize_reference
    steps_by_name = {s.name: s for s in program.steps}
    out = {}
    for node in graph.nodes:
        names = [n for n in node_steps.get(node.name, ()) if n in steps_by_name]
        if not names:
            continue
        steps = [steps_by_name[n] for n in names]
        produced = {o for s in steps for o in s.outputs}
        env = {}
        for s in steps:
            for b in s.inputs:
                if b in produced or b in env:
                    continue
                t = graph.tensors.get(b)
                have = trace.get(b)
                if t is not None and t.qparams is not None and b in ref and have is not None \
                        and np.asarray(have).dtype.kind in "iu":
                    env[b] = quantize_reference(ref[b], t.qparams).astype(np.asarray(have).dtype)
                elif b in bound:
                    env[b] = bound[b]
                else:
                    env[b] = have
        for s in steps:
            outs, _ = execute_step(s, *[env[b] for b in s.inputs])
            env.update(zip(s.outputs, outs))
        out[node.outputs[0]] = env.get(node.outputs[0])
    return out


# the unclamped requantized value fits here for any int8/int16 layer; wider than every storage
# range a profile allows, so "beyond the storage range" is still visible after this clamp
_WIDE = (-(2 ** 30), 2 ** 30)


def _clamp_sides(step, node) -> tuple[bool, bool] | None:
    """Whether the lower and the upper clamp of ``step`` are the activation's: the lower when
    its bound is real zero (ReLU: the bound code is the zero point) or the node clamps there,
    the upper when the node clamps there (ReLU6, Clip; a re-quantized model's nodes also carry
    the clamps of the input model's grids). Otherwise the side is the storage range's
    (saturation: information lost). None for a step without an output clamp."""
    p = dict(step.params)
    lo = p.get("out_min")
    if lo is None or p.get("out_max") is None:
        return None
    clamp = (node.attrs.get("clamp") if node is not None else None) or (None, None)
    zp = p.get("out_zero_point")
    return (clamp[0] is not None or (zp is not None and int(zp) == int(lo)), clamp[1] is not None)


def _clamp_split(step, arrays, node, n_clamped: int) -> tuple[int, int] | None:
    """(clamped at the storage range, clamped by the activation) among the ``n_clamped`` clamped
    outputs of one step (:func:`_clamp_sides`). When the two sides are of one kind that is the
    answer; otherwise the step is re-run with its clamp widened, which gives every value before
    the clamp. None when the step has no clamp or cannot be re-run widened."""
    from mrq.accumulators import execute_step
    from simulator.errors import SimulatorError
    from simulator.program import Step
    sides = _clamp_sides(step, node)
    if sides is None:
        return None
    low_is_activation, high_is_activation = sides
    if low_is_activation == high_is_activation:
        return (0, n_clamped) if low_is_activation else (n_clamped, 0)
    p = dict(step.params)
    wide = dict(p, out_min=_WIDE[0], out_max=_WIDE[1], out_dtype="int32")
    try:
        (u,), _ = execute_step(Step(step.kind, step.name + "/unclamped", step.inputs, step.outputs, wide),
                               *arrays)
    except (SimulatorError, ValueError, TypeError, KeyError):
        return None
    u = np.asarray(u)
    below = int(np.count_nonzero(u < p["out_min"]))
    above = int(np.count_nonzero(u > p["out_max"]))
    saturated = above if low_is_activation else below
    return saturated, below + above - saturated


class _ProfileRun:
    """One model under one profile, fed batch by batch; statistics accumulate, nothing
    per-sample is kept, so memory is bounded by the batch."""

    def __init__(self, input_graph, prof, calib=None, requantize: bool = True, role: str = "profile"):
        from mrq.pipeline import Pipeline
        self.t0 = time.perf_counter()
        self.input_graph = input_graph
        self.res = ProfileResult(profile=prof.name, description=prof.description, role=role)
        if requantize:
            hook = requantize_for_profile(input_graph, prof, calib)
        else:
            before = model_violations(input_graph, prof)
            hook = RequantOutcome(input_graph, False, "the input model as given", before, before)
        self.g = hook.graph
        self.res.requantized, self.res.note = hook.requantized, hook.note
        self.res.violations_before, self.res.violations = hook.violations_before, hook.violations_after
        self.res.weight_bytes = weight_bytes(self.g, None if hook.violations_after else prof)
        self.pipe = Pipeline(self.g, prof, layout="native")
        self.node_steps = self.pipe.node_steps()
        self.bias_bits = int(prof.bias.bits)
        self.acc_err: dict = {}
        self.single_err: dict = {}
        self.counters: dict = {}          # node -> [acc_overflow, out_saturated, range, activation]
        self.split_ok: dict = {}          # node -> the clamp split was computed for every batch
        self.agree_float = self.agree_base = self.seen = 0
        self.correct = 0
        self.cells = [0, 0, 0, 0]         # both, base_only, new_only, neither
        lowered = self.pipe.lowered
        self.out_name = lowered.program.outputs[0].name if lowered.program.outputs else None
        self.res.seconds += time.perf_counter() - self.t0

    def add_batch(self, arrays: dict, ref_in: dict, float_top, base_top, base_correct, labels):
        """Run one batch; returns this run's top-1 (None when the output is no classifier)."""
        from mrq.float_ref import FloatReference
        t0 = time.perf_counter()
        g = self.g
        result = self.pipe.run(arrays, trace=True)
        program, trace, bound = result.program, result.trace, result.bound
        ref = ref_in
        if g is not self.input_graph:
            # the re-quantized model's own reference where the input model has no such tensor;
            # the input model's float reference wherever it has (the error includes requantization)
            ref_g = FloatReference(g).run(arrays)
            ref = {**ref_g, **{k: v for k, v in ref_in.items()
                               if k in ref_g and np.shape(v) == np.shape(ref_g[k])}}
        single = _single_layer_outputs(g, program, bound, trace, ref, self.node_steps)
        steps_by_name = {s.name: s for s in program.steps}
        env = {**bound, **trace}
        for node in g.nodes:
            name = node.outputs[0]
            t = g.tensors.get(name)
            if t is None or t.qparams is None or name not in trace or name not in ref:
                continue
            self.acc_err.setdefault(node.name, _Err()).add(ref[name], trace[name], t.qparams)
            if single.get(name) is not None:
                self.single_err.setdefault(node.name, _Err()).add(ref[name], single[name], t.qparams)
            c = self.counters.setdefault(node.name, [0, 0, 0, 0])
            ok = self.split_ok.setdefault(node.name, True)
            for s in self.node_steps.get(node.name, ()):
                st = result.stats.get(s, {})
                c[0] += int(st.get("acc_overflow", 0))
                sat = int(st.get("out_saturated", 0))
                c[1] += sat
                if not sat or s not in steps_by_name:
                    continue
                step = steps_by_name[s]
                split = _clamp_split(step, [env[b] for b in step.inputs], node, sat) \
                    if all(b in env for b in step.inputs) else None
                if split is None:
                    ok = False
                else:
                    c[2] += split[0]
                    c[3] += split[1]
            self.split_ok[node.name] = ok
        top = None
        if self.out_name is not None and self.out_name in result.outputs:
            top = _top1(result.outputs[self.out_name])
            if top is not None:
                if float_top is not None:
                    self.agree_float += int(np.count_nonzero(top == float_top))
                if base_top is not None:
                    self.agree_base += int(np.count_nonzero(top == base_top))
                if labels is not None:
                    mine = top == labels
                    self.correct += int(np.count_nonzero(mine))
                    if base_correct is not None:
                        self.cells[0] += int(np.count_nonzero(mine & base_correct))
                        self.cells[1] += int(np.count_nonzero(~mine & base_correct))
                        self.cells[2] += int(np.count_nonzero(mine & ~base_correct))
                        self.cells[3] += int(np.count_nonzero(~mine & ~base_correct))
                self.seen += len(top)
        self.res.seconds += time.perf_counter() - t0
        return top

    def twin(self) -> _ProfileRun:
        """This run's statistics as a profile's that made exactly the same predictions: the
        same profile on the same model, whose simulation would repeat this one bit for bit."""
        t = _ProfileRun.__new__(_ProfileRun)
        t.__dict__.update(self.__dict__)
        t.res = ProfileResult(profile=self.res.profile, description=self.res.description,
                              note="the model satisfies the profile (the same run as the input model's)",
                              weight_bytes=self.res.weight_bytes, seconds=0.0)
        t.agree_base = self.seen
        t.cells = [self.correct, 0, 0, self.seen - self.correct]
        return t

    def _bias_max(self) -> dict:
        """node -> largest |bias code| of its conv/gemm steps (the codes the hardware holds)."""
        out = {}
        for s in self.pipe.lowered.program.steps:
            if s.kind not in ("conv", "gemm"):
                continue
            b = dict(s.params).get("bias")
            if b is None or not np.size(b):
                continue
            node = self.pipe.lowered.step_node.get(s.name, s.name)
            out[node] = max(out.get(node, 0), int(np.max(np.abs(np.asarray(b, np.int64)))))
        return out

    def _accumulator_need(self) -> dict:
        """node -> (bits its static worst-case partial sum needs, the profile's width)."""
        from mrq.accumulators import static_analysis
        out: dict = {}
        for row in static_analysis(self.pipe.lowered.program):
            node = self.pipe.lowered.step_node.get(row.layer, row.layer)
            need, width = out.get(node, (0, row.acc_bits))
            out[node] = (max(need, row.safe_bits), width)
        return out

    def finish(self, has_float_top: bool, has_base: bool, labels: bool, max_loss) -> ProfileResult:
        from mrq.mixed_precision import LayerFormats
        res = self.res
        bias = self._bias_max()
        acc_need = self._accumulator_need()
        formats = LayerFormats.of(self.g, self.pipe.profile, check=False)
        for node in self.g.nodes:
            if node.name not in self.acc_err:
                continue
            a = self.acc_err[node.name]
            s = self.single_err.get(node.name, a)
            ovf, sat, rng, act = self.counters.get(node.name, [0, 0, 0, 0])
            split = self.split_ok.get(node.name, True)
            res.layers.append(LayerRow(
                layer=node.name, op=node.op, tensor=node.outputs[0],
                sqnr_single=s.sqnr_db, sqnr_accumulated=a.sqnr_db,
                max_lsb_single=s.max_lsb, max_lsb_accumulated=a.max_lsb,
                n_diff=a.n_diff, n_elements=a.n, acc_overflow=ovf, out_saturated=sat,
                sqnr_clipping=s.clipping_db, sqnr_rounding=s.rounding_db,
                saturated_range=rng if split else None, clamped_activation=act if split else None,
                bias_max_code=bias.get(node.name), bias_bits=self.bias_bits if node.name in bias else None,
                acc_need_bits=acc_need.get(node.name, (None, None))[0],
                acc_bits=acc_need.get(node.name, (None, None))[1],
                weight_bits=formats.for_node(node.name).weights.bits if node.name in formats.kinds else None,
                activation_bits=formats.for_node(node.name).activations.bits
                if node.name in formats.kinds else None))
        res.acc_overflow = sum(r.acc_overflow for r in res.layers)
        res.out_saturated = sum(r.out_saturated for r in res.layers)
        finite = [r for r in res.layers if not math.isinf(r.sqnr_single)]
        if finite:
            res.entry_layer = min(finite, key=lambda r: r.sqnr_single).layer
        n = self.seen
        if n:
            res.top1_agreement = self.agree_float / n if has_float_top else None
            if has_base:
                res.baseline_agreement = self.agree_base / n
                res.baseline_agreement_ci = wilson_interval(self.agree_base, n)
            if labels:
                res.accuracy = self.correct / n
                res.accuracy_ci = wilson_interval(self.correct, n)
                if has_base and res.role != "baseline":
                    res.paired = PairedCounts(*self.cells)
                    res.change = res.paired.change
                    res.change_ci = paired_change_interval(res.paired)
        if res.role != "baseline" and max_loss is not None:
            if res.change_ci is not None:
                res.verdict = verdict(res.change_ci, max_loss)
                res.verdict_basis = "accuracy change vs the input model (95% paired interval)"
            elif res.baseline_agreement_ci is not None:
                # without labels each changed prediction loses at most one correct answer
                bound_ci = (-(1.0 - res.baseline_agreement_ci[0]), 0.0)
                res.verdict = PASS if verdict(bound_ci, max_loss) == PASS else INCONCLUSIVE
                res.verdict_basis = "no labels: loss bounded by the changed top-1 share (95% Wilson)"
            else:
                res.verdict = INCONCLUSIVE
                res.verdict_basis = "the output is not a classifier: no accuracy"
        out_row = _output_row(self.g, res.layers)
        if out_row is not None:
            res.output_layer = out_row.layer
            res.output_sqnr_db = out_row.sqnr_accumulated
            res.output_max_err_lsb = out_row.max_lsb_accumulated
        return res


def _output_row(graph, rows):
    """The row of the last integer tensor before the first graph output (its Dequantize input)."""
    by_tensor = {r.tensor: r for r in rows}
    for out in graph.outputs:
        if out in by_tensor:
            return by_tensor[out]
        prod = graph.producer(out)
        if prod is not None and prod.op == "Dequantize" and prod.inputs[0] in by_tensor:
            return by_tensor[prod.inputs[0]]
    return rows[-1] if rows else None


def default_baseline(model) -> str:
    """The runtime an input model's own accuracy is measured in: ONNX Runtime for ONNX models,
    LiteRT's default (XNNPACK) interpreter for TFLite models; both simulated bit-exactly (ONNX
    Runtime with the kernels it runs on this host class)."""
    if isinstance(model, str) and model.lower().endswith(".tflite"):
        return "litert-default"
    from mrq.hw_profile import onnxruntime_profile_for_host
    return onnxruntime_profile_for_host()


def check_labels(labels, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise InputDataError(f"labels: expected integer class labels, got dtype {labels.dtype}")
    labels = labels.reshape(-1)
    if labels.shape[0] != n:
        raise InputDataError(f"labels: {labels.shape[0]} labels for {n} input samples")
    return labels


def run_compare(model, profiles: list, feeds, labels=None, batch_size: int = 64,
                progress: bool = True, calib: dict | None = None, baseline=None,
                max_loss: float | None = None, argv=None, graph=None) -> CompareResult:
    """``feeds``: a dict of arrays or an input source (``.names``, ``.num_samples``,
    ``.batches(batch_size)``, see :mod:`mrq.datasets`), read once, batch by batch. ``baseline``:
    the profile whose simulation *is* the input model (default :func:`default_baseline`);
    ``max_loss``: the accuracy loss allowed, in points (0.5 = half a percentage point);
    ``graph``: ``model`` already loaded."""
    from mrq.api import resolve_profile
    from mrq.float_ref import FloatReference
    from mrq.onnx_import import load_model
    from mrq.provenance import provenance

    if graph is None:
        graph = load_model(model) if isinstance(model, str) else model
    source = _source(feeds)
    if hasattr(source, "bound_to"):
        source = source.bound_to(list(graph.inputs))   # a bare .npy: named after the model's input
    n = int(source.num_samples)
    if n == 0:
        raise InputDataError("the inputs hold no samples")
    if labels is not None:
        labels = check_labels(labels, n)
    if max_loss is not None and not (0.0 <= max_loss <= 100.0):
        raise InputDataError(f"--max-loss must be in 0..100 points, got {max_loss}")
    loss = None if max_loss is None else max_loss / 100.0
    batch_size = max(1, int(batch_size))
    base_prof = resolve_profile(baseline if baseline is not None else default_baseline(model))
    profs = [resolve_profile(p) for p in profiles]
    prov = provenance(model, [base_prof, *profs], argv)
    n_chunks = -(-n // batch_size)
    out0 = graph.outputs[0] if graph.outputs else None
    bar = _progress(n_chunks, progress, "mrq compare")
    float_correct = 0
    has_float_top = False
    try:
        base = _ProfileRun(graph, base_prof, requantize=False, role="baseline")
        # per profile: its run, replaced by a ProfileResult holding the error if it fails; a
        # profile equal to the baseline's that the model satisfies would repeat the baseline's
        # run bit for bit: it shares it (None here, filled from the baseline at the end)
        runs: list = []
        for prof in profs:
            if prof == base_prof and not base.res.violations:
                runs.append(None)
                continue
            try:
                runs.append(_ProfileRun(graph, prof, calib))
            except MrqError as exc:
                runs.append(ProfileResult(profile=prof.name, description=prof.description, error=str(exc)))
        fr = FloatReference(graph)
        start = 0
        for chunk in source.batches(batch_size):
            arrays = {k: np.asarray(v) for k, v in chunk.items()}
            m = _batch(arrays)
            lab = labels[start:start + m] if labels is not None else None
            ref = fr.run(arrays)
            float_top = _top1(ref[out0]) if out0 in ref else None
            has_float_top = has_float_top or float_top is not None
            if lab is not None and float_top is not None:
                float_correct += int(np.count_nonzero(float_top == lab))
            base_top = base.add_batch(arrays, ref, float_top, None, None, lab)
            base_correct = (base_top == lab) if (base_top is not None and lab is not None) else None
            for k, run in enumerate(runs):
                if run is None or isinstance(run, ProfileResult):
                    continue
                bar.set_postfix_str(run.res.profile)
                try:
                    run.add_batch(arrays, ref, float_top, base_top, base_correct, lab)
                except MrqError as exc:
                    runs[k] = ProfileResult(profile=run.res.profile, description=run.res.description,
                                            error=str(exc))
            start += m
            bar.update(1)
    finally:
        bar.close()
    results = [run if isinstance(run, ProfileResult) else
               (run or base.twin()).finish(has_float_top, base.seen > 0, labels is not None, loss)
               for run in runs]
    base_res = base.finish(has_float_top, False, labels is not None, None)
    for r in results:
        if r.error and loss is not None:
            r.verdict, r.verdict_basis = FAIL, "the profile could not be simulated"
    return CompareResult(model=model if isinstance(model, str) else getattr(graph, "name", "graph"),
                         n_samples=n, batch_size=batch_size, has_labels=labels is not None,
                         float_accuracy=(float_correct / n if labels is not None and has_float_top else None),
                         float_accuracy_ci=(wilson_interval(float_correct, n)
                                            if labels is not None and has_float_top else None),
                         profiles=results, baseline=base_res, max_loss=loss, provenance=prov)


# --------------------------------------------------------------------------------------------
# Text table
# --------------------------------------------------------------------------------------------


def _db(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _pct_ci(x: float | None, ci) -> str:
    """``91.80% [91.26, 92.31]``."""
    if x is None:
        return "-"
    if ci is None:
        return _pct(x)
    return f"{100 * x:.2f}% [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def _points_ci(x: float | None, ci) -> str:
    """A change in percentage points with its interval: ``-0.30 [-0.71, +0.09]``."""
    if x is None:
        return "-"
    s = f"{100 * x:+.2f}"
    return s if ci is None else f"{s} [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"


def _lsb(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _count(x: int | None) -> str:
    return "-" if x is None else str(x)


def _rows(result: CompareResult) -> list:
    """The input model first, then the profiles."""
    return ([result.baseline] if result.baseline is not None else []) + list(result.profiles)


def _label(p: ProfileResult) -> str:
    return f"{p.profile} (input model)" if p.role == "baseline" else p.profile


def format_table(result: CompareResult) -> str:
    acc_col = result.has_labels
    head = (f"{'profile':<30} {'requant':<7} {'top-1 agree':>11} "
            + (f"{'accuracy [95% CI]':>26} {'change pts [95% CI]':>24} " if acc_col else "")
            + (f"{'verdict':>12} " if result.max_loss is not None else "")
            + f"{'out SQNR dB':>11} {'error enters at':>18} {'sat':>6} {'acc ovf':>7} {'viol':>5}")
    lines = [f"{result.model}: {result.n_samples} sample(s)" + (
        f", float reference accuracy {_pct_ci(result.float_accuracy, result.float_accuracy_ci)}"
        if acc_col else "")
        + (f"; threshold: lose at most {100 * result.max_loss:g} points" if result.max_loss is not None else ""),
        head, "-" * len(head)]
    for p in _rows(result):
        if p.error:
            lines.append(f"{_label(p):<30} error: {p.error}" + (f"  {p.verdict}" if p.verdict else ""))
            continue
        sat = sum(r.saturated_range or 0 for r in p.layers)
        agree = "(itself)" if p.role == "baseline" else _pct(p.baseline_agreement)
        lines.append(f"{_label(p):<30} {'yes' if p.requantized else 'no':<7} {agree:>11} "
                     + (f"{_pct_ci(p.accuracy, p.accuracy_ci):>26} {_points_ci(p.change, p.change_ci):>24} "
                        if acc_col else "")
                     + (f"{p.verdict or '-':>12} " if result.max_loss is not None else "")
                     + f"{_db(p.output_sqnr_db):>11} {p.entry_layer[:18]:>18} {sat:>6d} "
                     f"{p.acc_overflow:>7d} {len(p.violations):>5d}")
    if result.max_loss is not None:
        lines.append(f"verdict rule: {VERDICT_RULE}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# HTML report
# --------------------------------------------------------------------------------------------


def _finite_for_plot(values, cap):
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(np.nan)
        elif math.isinf(v):
            out.append(cap if v > 0 else np.nan)
        else:
            out.append(v)
    return out


def plot_png(result: CompareResult) -> bytes:
    """Per-layer SQNR (accumulated solid, single dashed) and max |error| in LSBs, one line per
    profile, as PNG bytes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list = []
    for p in _rows(result):
        for r in p.layers:
            if r.layer not in names:
                names.append(r.layer)
    finite = [v for p in _rows(result) for r in p.layers for v in (r.sqnr_single, r.sqnr_accumulated)
              if not math.isinf(v)]
    cap = (max(finite) + 10.0) if finite else 100.0
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12.5, 7.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    x = np.arange(len(names))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # the profiles keep the colour cycle in their order; the input model is drawn in black,
    # thin and underneath, so a profile equal to it still shows in its own colour
    styled = [(p, colors[k % len(colors)], 2) for k, p in enumerate(result.profiles)]
    if result.baseline is not None:
        styled.insert(0, (result.baseline, "black", 1))
    for p, c, z in styled:
        if not p.layers:
            continue
        lw = 0.9 if z == 1 else 1.5
        pos = [names.index(r.layer) for r in p.layers]
        ax1.plot(pos, _finite_for_plot([r.sqnr_accumulated for r in p.layers], cap), "-o", color=c,
                 ms=4, lw=lw, zorder=z, label=f"{_label(p)} accumulated")
        ax1.plot(pos, _finite_for_plot([r.sqnr_single for r in p.layers], cap), "--", color=c, alpha=0.8,
                 lw=lw, zorder=z, label=f"{_label(p)} single")
        ax2.semilogy(pos, [max(r.max_lsb_accumulated, 1e-3) for r in p.layers], "-o", color=c, ms=4,
                     lw=lw, zorder=z, label=f"{_label(p)} accumulated")
        ax2.semilogy(pos, [max(r.max_lsb_single, 1e-3) for r in p.layers], "--", color=c, alpha=0.8,
                     lw=lw, zorder=z, label=f"{_label(p)} single")
    ax1.axhline(cap, color="0.8", lw=0.8, ls=":")
    ax1.set_ylabel("SQNR vs float reference (dB)")
    ax1.set_title("Per-layer SQNR: accumulated (network input, solid) vs single (reference input, dashed)")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax2.set_ylabel("max |error| (output LSB)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.set_xticks(x)
    ax2.set_xticklabels([n if len(n) <= 22 else n[:21] + "…" for n in names], rotation=60, ha="right",
                        fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin-top:22px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom;max-width:130px} td.l,th.l{text-align:left}
tr.bad td{background:#fdecea} td.warn{color:#b00020;font-weight:600} tr.base td{background:#f4f8ff}
td.pass{background:#e6f4ea;font-weight:600} td.fail{background:#fdecea;color:#b00020;font-weight:600} td.inc{background:#fff4e0;font-weight:600}
.meta{color:#555;font-size:13px} .note{font-size:13px;margin:4px 0}
img.plot{max-width:100%;border:1px solid #eee}
details{font-size:12px;margin:6px 0} code{font-size:12px}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _verdict_cell(p: ProfileResult) -> str:
    if p.verdict is None:
        return "<td>-</td>"
    cls = {PASS: "pass", FAIL: "fail"}.get(p.verdict, "inc")
    return f"<td class='{cls}' title='{_e(p.verdict_basis)}'>{p.verdict}</td>"


def _layer_differences(result: CompareResult) -> list:
    """Layers x profiles: single and accumulated SQNR, and the accumulated SQNR's change against
    the input model at the same layer (by name; a re-quantized model keeps the layer names)."""
    rows = [p for p in _rows(result) if not p.error and p.layers]
    if len(rows) < 2:
        return []
    names: list = []
    for p in rows:
        for r in p.layers:
            if r.layer not in names:
                names.append(r.layer)
    by = [{r.layer: r for r in p.layers} for p in rows]
    base = by[0] if result.baseline is not None and rows[0] is result.baseline else None
    out = [("<h2>Per-layer differences between profiles</h2><p class='note'>SQNR single / "
            "accumulated (dB) per layer; Δ: accumulated SQNR minus the input model's at the same "
            "layer (negative: this profile loses precision there). The bold single SQNR is the "
            "profile's lowest: where its error enters.</p><table><tr><th class='l'>layer</th>")]
    for p in rows:
        out.append(f"<th>{_e(_label(p))}<br>single / accumulated</th>"
                   + ("<th>Δ vs input</th>" if base is not None and p is not rows[0] else ""))
    out.append("</tr>")
    for name in names:
        cells = [f"<td class='l'>{_e(name)}</td>"]
        for p, rs in zip(rows, by):
            r = rs.get(name)
            with_delta = base is not None and p is not rows[0]
            if r is None:
                cells.append("<td>-</td>" + ("<td>-</td>" if with_delta else ""))
                continue
            single = _db(r.sqnr_single)
            if name == p.entry_layer:
                single = f"<b>{single}</b>"
            cells.append(f"<td>{single} / {_db(r.sqnr_accumulated)}</td>")
            if with_delta:
                b = base.get(name)
                if b is None or math.isinf(b.sqnr_accumulated) or math.isinf(r.sqnr_accumulated):
                    delta = "-" if b is None else ("0.00" if b.sqnr_accumulated == r.sqnr_accumulated else "-")
                    cells.append(f"<td>{delta}</td>")
                else:
                    d = r.sqnr_accumulated - b.sqnr_accumulated
                    cells.append(f"<td class='{'warn' if d < -3 else ''}'>{d:+.2f}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return out


def _provenance_html(prov: dict) -> str:
    if not prov:
        return ""
    profs = "".join(f"<li><code>{_e(p['name'])}</code> sha256 <code>{_e(p['sha256'])}</code>"
                    f" ({_e(p['source'])})</li>" for p in prov.get("profiles", []))
    return ("<h2>Provenance</h2><table>"
            f"<tr><td class='l'>mrq version</td><td class='l'>{_e(prov.get('mrq_version'))}</td></tr>"
            f"<tr><td class='l'>command</td><td class='l'><code>{_e(prov.get('command'))}</code></td></tr>"
            f"<tr><td class='l'>date (UTC)</td><td class='l'>{_e(prov.get('date'))}</td></tr>"
            f"<tr><td class='l'>model</td><td class='l'>{_e(prov.get('model'))} sha256 "
            f"<code>{_e(prov.get('model_sha256') or '-')}</code></td></tr></table>"
            f"<p class='note'>profile content hashes (the resolved profile, every default filled "
            f"in):</p><ul class='note'>{profs}</ul>")


def render_html(result: CompareResult, png: bytes | None = None) -> str:
    if png is None:
        png = plot_png(result)
    img = base64.b64encode(png).decode("ascii")
    acc_col = result.has_labels
    thr = result.max_loss is not None
    base = result.baseline
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           f"<title>mrq compare: {_e(result.model)}</title><style>{_CSS}</style></head><body>",
           f"<h1>mrq compare: {_e(result.model)}</h1>",
           f"<p class='meta'>{result.n_samples} sample(s), batch {result.batch_size}; "
           f"{len(result.profiles)} profile(s)"
           + (f"; float reference accuracy {_pct_ci(result.float_accuracy, result.float_accuracy_ci)}"
              if acc_col else "; no labels: top-1 agreement only")
           + (f"; input model: the model as given, simulated bit-exactly under "
              f"<code>{_e(base.profile)}</code> (its own runtime)" if base is not None else "")
           + "</p>"]
    if thr:
        n_pass = sum(p.verdict == PASS for p in result.profiles)
        out.append(f"<p class='note'><b>Threshold: lose at most {100 * result.max_loss:g} accuracy "
                   f"points against the input model.</b> {n_pass} of {len(result.profiles)} profile(s) "
                   f"pass. {_e(VERDICT_RULE)}</p>")
    out.append("<h2>Summary</h2><table><tr><th class='l'>profile</th><th class='l'>model used</th>"
               + ("<th>accuracy [95% CI]</th><th>change vs input model, points [95% CI]</th>" if acc_col else "")
               + "<th>top-1 agreement with the input model</th>"
               + ("<th>verdict</th>" if thr else "")
               + "<th>top-1 agreement with the float reference</th>"
               "<th>output SQNR (dB)</th><th>output max |err| (LSB)</th><th>error enters at (lowest single SQNR)</th>"
               "<th>worst layer SQNR (dB)</th><th>saturated (storage range)</th>"
               "<th>acc overflows</th><th>clamped outputs</th><th>weight memory (bytes)</th>"
               "<th>profile violations</th><th>time (s)</th></tr>")
    ncols = 14 + (2 if acc_col else 0) + (1 if thr else 0)
    for p in _rows(result):
        if p.error:
            out.append(f"<tr class='bad'><td class='l'>{_e(_label(p))}</td><td class='l' colspan='{ncols - 1}'>"
                       f"error: {_e(p.error)}{' — ' + p.verdict if p.verdict else ''}</td></tr>")
            continue
        worst = min(p.layers, key=lambda r: r.sqnr_accumulated, default=None)
        used = "re-quantized" if p.requantized else ("as is" if not p.violations else "as is (violates)")
        sat = sum(r.saturated_range or 0 for r in p.layers)
        is_base = p.role == "baseline"
        out.append(
            f"<tr class='{'base' if is_base else ''}'><td class='l'>{_e(_label(p))}</td><td class='l'>{used}</td>"
            + (f"<td>{_pct_ci(p.accuracy, p.accuracy_ci)}</td><td>"
               f"{'(reference)' if is_base else _points_ci(p.change, p.change_ci)}</td>" if acc_col else "")
            + f"<td>{'(itself)' if is_base else _pct_ci(p.baseline_agreement, p.baseline_agreement_ci)}</td>"
            + ((_verdict_cell(p) if not is_base else "<td>-</td>") if thr else "")
            + f"<td>{_pct(p.top1_agreement)}</td>"
            f"<td>{_db(p.output_sqnr_db)}</td><td>{_lsb(p.output_max_err_lsb)}</td>"
            f"<td class='l'>{_e(p.entry_layer) or '-'}</td>"
            f"<td>{_db(worst.sqnr_accumulated) + ' (' + _e(worst.layer) + ')' if worst else '-'}</td>"
            f"<td class='{'warn' if sat else ''}'>{sat}</td>"
            f"<td class='{'warn' if p.acc_overflow else ''}'>{p.acc_overflow}</td><td>{p.out_saturated}</td>"
            f"<td>{p.weight_bytes}</td><td class='{'warn' if p.violations else ''}'>{len(p.violations)}</td>"
            f"<td>{p.seconds:.2f}</td></tr>")
    out.append("</table>")
    if acc_col:
        out.append("<p class='note'>Accuracy intervals: Wilson score, 95%. Change: profile accuracy minus "
                   "the input model's on the same samples, with a 95% interval for the paired "
                   "difference (Newcombe's method 10).</p>")
    out.append("<h2>Per-layer error</h2>"
               f"<img class='plot' alt='per-layer SQNR and max error per profile' src='data:image/png;base64,{img}'>"
               "<p class='note'><b>single</b>: the layer fed its float reference input rounded onto its "
               "input grid (the error the layer itself adds). <b>accumulated</b>: the layer in the "
               "real integer execution (error that entered upstream compounds). Infinite SQNR (exact) "
               "is drawn on the dotted line.</p>")
    out.extend(_layer_differences(result))
    for p in _rows(result):
        out.append(f"<h3>{_e(_label(p))}</h3><p class='note'>{_e(p.description)}</p>")
        if p.error:
            out.append(f"<p class='note'>error: {_e(p.error)}</p>")
            continue
        out.append(f"<p class='note'>{_e(p.note)}</p>")
        if p.verdict:
            out.append(f"<p class='note'>verdict: <b>{p.verdict}</b> ({_e(p.verdict_basis)})</p>")
        if p.violations:
            items = "".join(f"<li><code>{_e(v)}</code></li>" for v in p.violations[:200])
            more = f"<li>... {len(p.violations) - 200} more</li>" if len(p.violations) > 200 else ""
            out.append(f"<details><summary>{len(p.violations)} profile violation(s) of the simulated model"
                       f"</summary><ul>{items}{more}</ul></details>")
        if p.requantized and p.violations_before:
            out.append(f"<details><summary>{len(p.violations_before)} violation(s) of the input model "
                       f"(fixed by re-quantization)</summary><ul>"
                       + "".join(f"<li><code>{_e(v)}</code></li>" for v in p.violations_before[:200])
                       + "</ul></details>")
        out.append("<table><tr><th class='l'>layer</th><th class='l'>op</th>"
                   "<th>precision (weights / output bits)</th><th>SQNR single (dB)</th>"
                   "<th>SQNR accumulated (dB)</th><th>compounding (dB)</th><th>own error: rounding SQNR (dB)</th>"
                   "<th>own error: clipping SQNR (dB)</th><th>max |err| single (LSB)</th>"
                   "<th>max |err| accumulated (LSB)</th><th>codes ≠ rounded reference</th>"
                   "<th>acc overflows</th><th>accumulator need / width (bits)</th>"
                   "<th>saturated at the storage range</th><th>clamped by ReLU/ReLU6/Clip</th><th>largest |bias| code / bias bits</th>"
                   "<th>bias headroom (bits)</th></tr>")
        for r in p.layers:
            bad = r.acc_overflow > 0 or bool(r.saturated_range)
            head = r.bias_headroom_bits
            bias = f"{r.bias_max_code} / {r.bias_bits}" if r.bias_max_code is not None else "-"
            bits = f"w{r.weight_bits} / a{r.activation_bits}" if r.weight_bits is not None else "-"
            out.append(f"<tr class='{'bad' if bad else ''}'><td class='l'>{_e(r.layer)}</td>"
                       f"<td class='l'>{_e(r.op)}</td><td>{bits}</td><td>{_db(r.sqnr_single)}</td>"
                       f"<td>{_db(r.sqnr_accumulated)}</td><td>{_db(r.compounding_db)}</td>"
                       f"<td>{_db(r.sqnr_rounding)}</td><td>{_db(r.sqnr_clipping)}</td>"
                       f"<td>{_lsb(r.max_lsb_single)}</td><td>{_lsb(r.max_lsb_accumulated)}</td>"
                       f"<td>{r.n_diff}/{r.n_elements}</td><td>{r.acc_overflow}</td>"
                       f"<td class='{'warn' if r.acc_need_bits and r.acc_need_bits > r.acc_bits else ''}'>"
                       f"{'-' if r.acc_need_bits is None else f'{r.acc_need_bits} / {r.acc_bits}'}</td>"
                       f"<td>{_count(r.saturated_range)}</td><td>{_count(r.clamped_activation)}</td>"
                       f"<td>{bias}</td><td class='{'warn' if head is not None and head <= 0 else ''}'>"
                       f"{_count(head)}</td></tr>")
        out.append("</table>")
    out.append(_provenance_html(result.provenance))
    out.append("<p class='meta'>Generated by mrq compare. Clamped outputs: requantized values clamped to the "
               "output range (the simulator's out_saturated counter), split into <b>saturated at the "
               "storage range</b> (information lost) and <b>clamped by ReLU/ReLU6/Clip</b> (a clamp side "
               "at real zero, or an explicit clamp of the layer). Own error: the single run's error "
               "split into clipping (the reference beyond the grid's range) and the rest (rounding). "
               "Bias headroom: unused magnitude bits of the bias register for the largest bias code. "
               "Weight memory: conv/gemm weights and biases at the profile's widths when the "
               "simulated model satisfies the profile, else at the model's code widths (4-bit codes "
               "packed two per byte).</p></body></html>")
    return "\n".join(out)


def write_report(result: CompareResult, path: str) -> None:
    from mrq.fileio import save_text
    save_text(path, render_html(result))
