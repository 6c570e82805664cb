"""accumulator_budget: choose per-output-channel weight scales (and so integer weights and bias
codes) that keep a narrow accumulator from overflowing, or that trade a measured overflow rate
on the calibration data against rounding error.

A conv/gemm channel accumulates ``bias + sum_k w_k x_k`` in the profile's ``accumulator.bits``.
Every partial sum lies inside the static bound of :func:`mrq.accumulators.bound_from_sums` (the
one ``mrq check`` reports), which depends on the channel's positive and negative weight sums
(its L1 norm, split by sign) and on the input's code range; making the channel's weight scale
``alpha`` times coarser divides both, and the bias code, by about ``alpha``. The input code
range is the one ``mrq check`` propagates: the input grid within its producer's clamp (so
post-ReLU inputs are >= 0 and only the positive weight sum bounds the top).

- ``accumulator.guarantee: proof``: each channel gets the finest scale (from the one earlier
  passes chose, made coarser in steps) whose bound fits the width for every input in that
  range, with or without calibration data. The
  bound is then an L1 budget that weight_correction's sequential rounding and every later bias
  change respect (``node.attrs['acc_budget']``), so the proof survives them.
- ``guarantee: measured`` (saturating accumulators only): per channel, the candidate scale with
  the least output error on sampled calibration rows, where the error counts both the rounding
  and the effect of every saturated partial sum, in the simulator's addition order (bias first,
  then input channel, kernel row, kernel column). Saturation that only clips an output the
  layer's clamp (ReLU/ReLU6) or its output grid would clip anyway costs nothing and is kept.

Per layer the report gets the bound before/after, the bits it needs, the overflow events seen on
the sampled rows before/after, the scale increase and the layer SQNR on those rows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mrq.accumulators import bound_from_sums, signed_bits_for, weight_sums
from mrq.grids import describe, real_range, snap_scale
from mrq.ir import QParams
from mrq.mixed_precision import LayerFormats
from mrq.passes.bias_grids import real_bias, set_bias
from mrq.passes.layer_data import patch_groups, real_weights, run_layer_hooks

# Coarser-scale candidates in the measured mode: 2**(i/4) for i = 0..MAX_STEPS (up to 16x).
# The search stops early once no sampled row overflows.
STEP = 2.0 ** 0.25
MAX_STEPS = 16
# Proof mode: coarsen until the bound fits, by this factor per step (re-rounding can move the
# bound either way, so it is checked after every step rather than predicted).
PROOF_STEP = 2.0 ** (1 / 16)
SAMPLE_ROWS = 2048  # calibration rows (output positions) per layer scored in the measured mode
# proof mode scores only for the report (the proof does not depend on data): fewer samples
REPORT_IMAGES, REPORT_ROWS = 32, 512


@dataclass(frozen=True)
class AccBudget:
    """The partial-sum budget a channel's weights and bias must keep: with zero-point-free
    inputs in ``[x_lo, x_hi]``, :func:`bound_from_sums` must stay inside ``[acc_lo[m],
    acc_hi[m]]``. Proof mode: the accumulator's range. Measured mode: the bound of the codes the
    pass chose (later passes may not make it worse)."""
    x_lo: int
    x_hi: int
    acc_lo: np.ndarray     # [M] int64
    acc_hi: np.ndarray
    # the pass put the weights on new grids (so weight_correction rounds them even when earlier
    # passes had left them alone); False: the budget only binds later rounding and biases
    regridded: bool = True

    def bias_limits(self, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bias codes each channel may have with weight sums ``pos``/``neg``."""
        lo0, hi0 = bound_from_sums(pos.astype(np.int64), neg.astype(np.int64), np.zeros(pos.shape, np.int64),
                                   self.x_lo, self.x_hi)
        return self.acc_lo - np.minimum(lo0, 0), self.acc_hi - np.maximum(hi0, 0)


@dataclass
class LayerAccReport:
    guarantee: str
    bits_before: int            # bits the static bound (calibration input range) needs
    bits_after: int
    bound_before: int           # worst |partial sum| of that bound
    bound_after: int
    overflow_rows_before: int   # sampled (row, channel) accumulations that saturated
    overflow_rows_after: int
    sampled: int                # sampled (row, channel) accumulations
    scale_increase_median: float
    scale_increase_max: float
    channels_coarser: int
    sqnr_before_db: float       # layer output SQNR on the sampled rows vs the float target
    sqnr_after_db: float

    def as_dict(self) -> dict:
        return asdict(self)


def accumulator_budget(graph, ctx):
    if ctx.calib is None:
        return _data_free(graph, ctx)
    return run_layer_hooks(graph, ctx, [accumulator_budget_hook])


def accumulator_budget_hook(graph, ctx):
    """The per-layer step of this pass, for a calibration sweep (None without calibration data)."""
    if ctx.calib is None:
        return None
    rng = np.random.default_rng(1)
    formats = LayerFormats.of(graph, ctx.profile)

    def on_layer(node, x_new, x_old):
        x_range = input_code_range(graph, node)
        if x_range is not None:
            _budget_layer(graph, ctx, node, formats.for_node(node.name), *x_range, x_new, rng)

    return on_layer


def _data_free(graph, ctx):
    """Without calibration data only a proof is possible: over the input grid's code range."""
    formats = LayerFormats.of(graph, ctx.profile)
    if ctx.profile.accumulator.guarantee == "measured":
        ctx.report.notes.append("accumulator_budget: the measured guarantee needs calibration data (--calib); "
                                "layers were bounded by proof instead")
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm") or node.attrs.get("integer_output"):
            continue
        x_range = input_code_range(graph, node)
        if x_range is not None:
            _budget_layer(graph, ctx, node, formats.for_node(node.name), *x_range, None, None, force_proof=True)
    return graph


# ops whose output codes lie in their input's code range (followed up to a clamping producer)
_PASS_THROUGH = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")


def input_code_range(graph, node):
    """The zero-point-free code range ``(lo, hi)`` any input of ``node`` can have: its grid's
    code range within the clamp of the op that produces it (through data-movement ops), as
    ``mrq check`` propagates it. Calibration inputs lie inside it, so a bound over it is a
    proof for every input, not only the calibration set. None for a per-channel input grid."""
    x_qp = graph.tensors[node.inputs[0]].qparams
    if x_qp is None or x_qp.per_channel:
        return None
    zp, s = int(x_qp.zero_point[0]), float(x_qp.scale[0])
    lo, hi = x_qp.qmin - zp, x_qp.qmax - zp
    producer = {out: n for n in graph.nodes for out in n.outputs}
    name = node.inputs[0]
    while name in producer and producer[name].op in _PASS_THROUGH:
        name = producer[name].inputs[0]
    src = producer.get(name)
    # a graph input's quantizer clamp is not kept by the ONNX export (the written model takes any
    # code of the input grid), so a proof covers the whole grid there
    clamp = None if src is None or src.op == "Quantize" else ((src.attrs.get("lo"), src.attrs.get("hi")) if src.op == "Clamp"
                                      else src.attrs.get("clamp"))
    if clamp is not None:
        # widened to whole codes: a wider range keeps the bound a proof
        if clamp[0] is not None and np.isfinite(clamp[0]):
            lo = max(lo, int(np.floor(clamp[0] / s)))
        if clamp[1] is not None and np.isfinite(clamp[1]):
            hi = min(hi, int(np.ceil(clamp[1] / s)))
    return lo, hi


def _rows(node, w: np.ndarray) -> np.ndarray:
    return w.reshape(w.shape[0], -1) if node.op == "Conv" else w.T


def _from_rows(node, rows: np.ndarray, shape) -> np.ndarray:
    return rows.reshape(shape) if node.op == "Conv" else np.ascontiguousarray(rows.T)


def _codes(target_rows, scale, zp, qmin, qmax) -> np.ndarray:
    """Round-to-nearest zero-point-free codes [M, K] on per-row ``scale``."""
    return np.clip(np.rint(target_rows / scale[:, None]), qmin - zp[:, None], qmax - zp[:, None]).astype(np.int64)


def _bias_codes(b_real, x_scale, w_scale, bias_fmt) -> np.ndarray:
    lo, hi = bias_fmt.qmin_qmax()
    s = (np.float32(x_scale) * w_scale.astype(np.float32)).astype(np.float64)
    return np.clip(np.rint(b_real / s), lo, hi).astype(np.int64)


def _bounds(codes, bias, x_lo, x_hi):
    pos, neg = weight_sums(codes)
    return bound_from_sums(pos, neg, bias, x_lo, x_hi)


def _budget_layer(graph, ctx, node, profile, x_lo, x_hi, x_new, rng, force_proof=False) -> None:
    """``profile``: the layer's own profile (per-layer overrides applied)."""
    acc = profile.accumulator
    t = graph.tensors[node.inputs[1]]
    qp = t.qparams
    fmt = profile.weights
    w_codes = _rows(node, np.asarray(t.data, np.int64))
    m = w_codes.shape[0]
    zp = np.broadcast_to(qp.zero_point, (m,)).astype(np.int64)
    scale = np.broadcast_to(qp.scale.astype(np.float64), (m,)).copy()
    a_lo, a_hi = acc.qmin_qmax()
    x_scale = float(graph.tensors[node.inputs[0]].qparams.scale[0])
    b_real = np.asarray(node.attrs.get("bias_real", real_bias(graph, node)), np.float64)
    bias0 = _bias_codes(b_real, x_scale, scale.astype(np.float32), profile.bias)
    lo0, hi0 = _bounds(w_codes - zp[:, None], bias0, x_lo, x_hi)
    fits = (lo0 >= a_lo) & (hi0 <= a_hi)
    proof = force_proof or acc.guarantee == "proof"
    if fits.all():
        # later rounding (weight_correction) and bias changes must not break what fits now
        node.attrs["acc_budget"] = AccBudget(x_lo, x_hi, np.full(m, a_lo, np.int64), np.full(m, a_hi, np.int64),
                                             regridded=False)
        return
    target = _rows(node, real_weights(ctx.original, ctx.original.node(node.name)))
    per_channel = qp.per_channel
    scorer = None
    if x_new is not None:
        sample = x_new[:REPORT_IMAGES] if proof else x_new
        scorer = _Scorer(graph, node, target, scale, zp, qp, fmt, b_real, x_scale, profile.bias, a_lo, a_hi,
                         per_channel, sample, rng, REPORT_ROWS if proof else SAMPLE_ROWS)
    stats = None
    if scorer is not None:
        err0, sat0, _ = scorer.score(1.0)
        stats = {"sampled": scorer.r * scorer.m, "ovf_before": int(sat0.sum()), "sqnr_before": scorer.sqnr(err0)}
    if proof:
        alpha = _proof_alpha(target, scale, zp, qp, fmt, b_real, x_scale, profile.bias, x_lo, x_hi,
                             a_lo, a_hi, per_channel)
        if scorer is not None:
            err, sat, _ = scorer.score(alpha)
    else:
        alpha, err, sat = scorer.choose()
    if stats is not None:
        stats.update(ovf_after=int(sat.sum()), sqnr_after=scorer.sqnr(err))
    new_scale = snap_scale(scale * alpha, fmt.scale, "up").astype(np.float64)
    codes = _codes(target, new_scale, zp, qp.qmin, qp.qmax)
    new_qp = QParams(new_scale.astype(np.float32) if per_channel else new_scale[:1].astype(np.float32),
                     qp.zero_point, qp.dtype, axis=qp.axis, narrow_range=qp.narrow_range, bits=qp.bits)
    old_desc = describe(qp)
    t.data = _from_rows(node, codes + zp[:, None], t.data.shape).astype(t.data.dtype)
    t.qparams = new_qp
    if proof:
        budget = AccBudget(x_lo, x_hi, np.full(m, a_lo, np.int64), np.full(m, a_hi, np.int64))
    else:
        lo1, hi1 = _bounds(codes, _bias_codes(b_real, x_scale, new_scale.astype(np.float32), profile.bias),
                           x_lo, x_hi)
        budget = AccBudget(x_lo, x_hi, np.minimum(lo1, a_lo).astype(np.int64), np.maximum(hi1, a_hi).astype(np.int64))
    node.attrs["acc_budget"] = budget
    saturated = set_bias(graph, node, b_real, profile)
    if saturated:
        ctx.report.bias_saturated[node.name] = ctx.report.bias_saturated.get(node.name, 0) + saturated
    bias1 = np.asarray(graph.tensors[node.inputs[2]].data, np.int64).reshape(-1) if len(node.inputs) > 2 \
        else np.zeros(m, np.int64)
    lo1, hi1 = _bounds(codes, np.broadcast_to(bias1, (m,)), x_lo, x_hi)
    ratio = np.broadcast_to(new_qp.scale.astype(np.float64), (m,)) / scale
    ctx.report.change(t.name, "weights", old_desc, describe(new_qp), False, "accumulator_budget",
                      f"{int(np.sum(ratio > 1.0 + 1e-6))} channel(s) on a coarser scale so the "
                      f"{acc.bits}-bit accumulator " + ("cannot overflow" if proof else "rarely saturates"))
    report = LayerAccReport(
        guarantee="proof" if proof else "measured",
        bits_before=signed_bits_for(int(lo0.min()), int(hi0.max())),
        bits_after=signed_bits_for(int(lo1.min()), int(hi1.max())),
        bound_before=int(max(-lo0.min(), hi0.max())), bound_after=int(max(-lo1.min(), hi1.max())),
        overflow_rows_before=stats["ovf_before"] if stats else 0,
        overflow_rows_after=stats["ovf_after"] if stats else 0,
        sampled=stats["sampled"] if stats else 0,
        scale_increase_median=float(np.median(ratio)), scale_increase_max=float(ratio.max()),
        channels_coarser=int(np.sum(ratio > 1.0 + 1e-6)),
        sqnr_before_db=stats["sqnr_before"] if stats else float("nan"),
        sqnr_after_db=stats["sqnr_after"] if stats else float("nan"))
    ctx.report.accumulators[node.name] = report.as_dict()


def _proof_alpha(target, scale, zp, qp, fmt, b_real, x_scale, bias_fmt, x_lo, x_hi, a_lo, a_hi, per_channel):
    """Per channel, the smallest coarsening whose rounded codes and bias fit the bound."""
    m = target.shape[0]
    alpha = np.ones(m)
    for attempt in range(400):
        s = snap_scale(scale * alpha, fmt.scale, "up").astype(np.float64)
        codes = _codes(target, s, zp, qp.qmin, qp.qmax)
        lo, hi = _bounds(codes, _bias_codes(b_real, x_scale, s.astype(np.float32), bias_fmt), x_lo, x_hi)
        bad = (lo < a_lo) | (hi > a_hi)
        if not per_channel:
            bad = np.full(m, bad.any())
        if not bad.any():
            return alpha
        # jump close to the predicted fit, then step (the bound scales as 1/alpha up to rounding)
        need = np.maximum(hi / a_hi, lo / a_lo)
        if not per_channel:
            need = np.full(m, need.max())
        factor = need if attempt == 0 else np.clip(need, PROOF_STEP, 2.0)
        alpha = np.where(bad, alpha * np.maximum(factor, PROOF_STEP), alpha)
    from mrq.errors import PassError
    raise PassError(f"accumulator_budget: no weight scale makes a layer of shape {target.shape} fit the "
                    f"accumulator")


def saturating_sums(x_rows: np.ndarray, w_rows: np.ndarray, bias: np.ndarray, lo: int, hi: int):
    """The simulator's saturating accumulation of ``bias[p] + sum_k w_rows[p, k] * x_rows[p, k]``
    for every row p: the bias first (clamped), then the products in k order, clamped to
    ``[lo, hi]`` after every addition. Returns (final int64 [P], whether any partial sum left the
    range [P])."""
    acc = np.asarray(bias, np.int64).copy()
    left = (acc < lo) | (acc > hi)
    acc = np.clip(acc, lo, hi)
    x_rows = np.asarray(x_rows, np.int64)
    w_rows = np.asarray(w_rows, np.int64)
    for k in range(x_rows.shape[1]):
        acc += x_rows[:, k] * w_rows[:, k]
        left |= (acc < lo) | (acc > hi)
        np.clip(acc, lo, hi, out=acc)
    return acc, left


class _Scorer:
    """Scores weight-scale candidates of one layer on sampled calibration rows: per channel, the
    squared error of the layer's clamped output against the float target (the input model's
    weights on the new model's inputs), with the accumulator saturating exactly as the simulator
    does, and the (row, channel) accumulations that saturated."""

    def __init__(self, graph, node, target, scale, zp, qp, fmt, b_real, x_scale, bias_fmt, a_lo, a_hi,
                 per_channel, x_new, rng, max_rows=SAMPLE_ROWS):
        patches = patch_groups(graph, node, x_new, rng)              # [G, R, K] real
        g, r, k = patches.shape
        if r > max_rows:
            patches = patches[:, rng.choice(r, max_rows, replace=False)]
            r = max_rows
        m = target.shape[0]
        self.g, self.r, self.k, self.m, self.mg = g, r, k, m, m // g
        self.group_of = np.arange(m) // self.mg
        self.xc = np.rint(patches.astype(np.float64) / x_scale)     # zero-point-free codes
        self.xp, self.xn = np.maximum(self.xc, 0), np.minimum(self.xc, 0)
        self.y_lo, self.y_hi = _output_limits(graph, node)
        y = self._mm(self.xc * x_scale, target.reshape(g, self.mg, k)) + b_real
        self.y_target = np.clip(y, self.y_lo, self.y_hi)
        self.signal = np.sum(np.square(self.y_target), axis=0)
        self.target, self.scale, self.zp, self.qp, self.fmt = target, scale, zp, qp, fmt
        self.b_real, self.x_scale, self.bias_fmt = b_real, x_scale, bias_fmt
        self.a_lo, self.a_hi, self.per_channel = a_lo, a_hi, per_channel

    def _mm(self, xa, wa):
        return np.einsum("grk,gmk->grm", xa, wa).transpose(1, 0, 2).reshape(self.r, self.m)

    def score(self, alpha):
        """(error [M], saturated accumulations [M], whether any row could overflow)."""
        s = snap_scale(self.scale * alpha, self.fmt.scale, "up").astype(np.float64)
        codes = _codes(self.target, s, self.zp, self.qp.qmin, self.qp.qmax)
        bias = _bias_codes(self.b_real, self.x_scale, s.astype(np.float32), self.bias_fmt)
        q = codes.reshape(self.g, self.mg, self.k).astype(np.float64)
        q_pos, q_neg = np.maximum(q, 0), np.minimum(q, 0)
        acc = self._mm(self.xc, q) + bias
        # per (row, channel): the sums of the positive and of the negative products bound every
        # partial sum; only rows whose bound leaves the range are accumulated step by step
        pos = self._mm(self.xp, q_pos) + self._mm(self.xn, q_neg)
        neg = self._mm(self.xp, q_neg) + self._mm(self.xn, q_pos)
        risk = (bias + pos > self.a_hi) | (bias + neg < self.a_lo)
        saturated = np.zeros(self.m)
        if risk.any():
            rows, chans = np.nonzero(risk)
            final, left = saturating_sums(self.xc[self.group_of[chans], rows], codes[chans], bias[chans],
                                          self.a_lo, self.a_hi)
            acc[rows, chans] = final
            np.add.at(saturated, chans, left)
        unit = (np.float32(self.x_scale) * s.astype(np.float32)).astype(np.float64)
        err = np.sum(np.square(np.clip(acc * unit, self.y_lo, self.y_hi) - self.y_target), axis=0)
        if not self.per_channel:
            err = np.full(self.m, err.sum())
        return err, saturated, bool(risk.any())

    def sqnr(self, err) -> float:
        e = float(err.sum()) if self.per_channel else float(err[0])
        return float("inf") if e == 0 else 10 * np.log10(max(float(self.signal.sum()), 1e-300) / e)

    def choose(self):
        """Per channel, the candidate coarsening with the least error."""
        best_err = best_alpha = best_sat = None
        for a in STEP ** np.arange(MAX_STEPS + 1):
            err, saturated, risky = self.score(a)
            if best_err is None:
                best_err, best_alpha, best_sat = err, np.full(self.m, a), saturated
            else:
                better = err < best_err
                best_err = np.where(better, err, best_err)
                best_alpha = np.where(better, a, best_alpha)
                best_sat = np.where(better, saturated, best_sat)
            if not risky:
                break      # coarser scales only add rounding error
        return best_alpha, best_err, best_sat


def _output_limits(graph, node) -> tuple[float, float]:
    """The real range a layer's output can take: its fused clamp within its output grid."""
    lo, hi = -np.inf, np.inf
    out_qp = graph.tensors[node.outputs[0]].qparams
    if out_qp is not None and not out_qp.per_channel:
        r_lo, r_hi = real_range(out_qp)
        lo, hi = float(r_lo[0]), float(r_hi[0])
    clamp = node.attrs.get("clamp")
    if clamp is not None:
        if clamp[0] is not None:
            lo = max(lo, float(clamp[0]))
        if clamp[1] is not None:
            hi = min(hi, float(clamp[1]))
    return lo, hi


def budget_bias_limits(graph, node):
    """(lo, hi) bias codes per channel that keep ``node``'s accumulator budget, or None."""
    budget = node.attrs.get("acc_budget")
    if budget is None:
        return None
    t = graph.tensors[node.inputs[1]]
    codes = _rows(node, np.asarray(t.data, np.int64))
    zp = np.broadcast_to(t.qparams.zero_point, (codes.shape[0],)).astype(np.int64)
    pos, neg = weight_sums(codes - zp[:, None])
    return budget.bias_limits(pos, neg)



def record_simulated_overflow(report, sim) -> None:
    """Per layer, the accumulator elements that left the width when the bit-exact simulator ran
    the re-quantized model on the calibration data (``sim``: :class:`mrq.api.SimResult`)."""
    step_node = sim.lowered.step_node
    for step, stats in (sim.stats or {}).items():
        count = int((stats or {}).get("acc_overflow", 0))
        node = step_node.get(step, step)
        if count or node in report.accumulators:
            entry = report.accumulators.setdefault(node, {})
            entry["saturated_on_calibration"] = entry.get("saturated_on_calibration", 0) + count


def format_report(rows: dict) -> str:
    """The per-layer accumulator table of ``mrq requant``."""
    head = (f"{'layer':<30} {'guarantee':<9} {'bound bits':>10} {'|bound| before -> after':>24} "
            f"{'sampled ovf before -> after':>28} {'scale x med/max':>16} {'SQNR dB before -> after':>24} "
            f"{'sim ovf':>8}")
    lines = ["accumulator budget per layer:", head, "-" * len(head)]
    for name, r in rows.items():
        short = name if len(name) <= 30 else "…" + name[-29:]
        sim = r.get("saturated_on_calibration")
        sim = "-" if sim is None else str(sim)
        if "guarantee" not in r:       # a layer the pass left alone that still overflowed
            lines.append(f"{short:<30} {'-':<9} {'-':>10} {'-':>24} {'-':>28} {'-':>16} {'-':>24} {sim:>8}")
            continue
        lines.append(
            f"{short:<30} {r['guarantee']:<9} {r['bits_before']:>4} -> {r['bits_after']:<3} "
            f"{r['bound_before']:>10} -> {r['bound_after']:<10} "
            f"{r['overflow_rows_before']:>8} -> {r['overflow_rows_after']:<6} of {r['sampled']:<8} "
            f"{r['scale_increase_median']:>6.2f}/{r['scale_increase_max']:<6.2f} "
            f"{r['sqnr_before_db']:>9.2f} -> {r['sqnr_after_db']:<9.2f} {sim:>8}")
    lines.append("bound: static worst-case partial sum over the input's code range (mrq check's); sampled "
                 "ovf: (row, channel) accumulations that saturated on sampled calibration rows (measured "
                 "guarantee); scale x: weight-scale increase per channel; SQNR: layer output on those rows "
                 "vs the float target; sim ovf: accumulator elements the simulator saturated on the whole "
                 "calibration set after every pass")
    return "\n".join(lines)
