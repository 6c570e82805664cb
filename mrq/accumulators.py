"""Accumulator analysis: how wide must each layer's accumulator be?

For every ``conv``/``gemm`` step of a lowered program (the steps that carry the profile's
accumulator block, ``acc_bits``/``acc_overflow``):

- **static worst case**: the range every partial sum can reach, from the integer weights and
  the input's code range. The input range is propagated statically through the program: a
  step's output range is its ``[out_min, out_max]`` clamp (which includes fused ReLU/Clip),
  range-preserving steps (maxpool, reshape, transpose, concat, clamp) pass it on, and anything
  else falls back to the storage dtype's range. Per output channel ``m`` with ``w' = w - wzp[m]``
  and ``x' = x - xzp`` in ``[a, b]`` (a <= 0 <= b, because padding and the zero point are real
  zero): ``hi = bias + sum(max(w', 0)) * b + sum(min(w', 0)) * a`` and
  ``lo = bias + sum(max(w', 0)) * a + sum(min(w', 0)) * b``. Each product lies in an interval
  that contains 0, so *every* partial sum (in any order, including the bias alone) lies in
  ``[lo, hi]``: the bound is valid for saturating accumulators too.
- **safe width**: the smallest two's-complement width holding ``[lo, hi]``.
- **observed**: the exact (64-bit) accumulator over given inputs, its extremes and the width they
  need, and the simulator's count of elements that overflowed the profile's accumulator.

Accumulators themselves come from the simulator: the step is re-executed with a copy of its
parameters where ``rq_mode='none'`` (output = accumulator, see docs/PROGRAM.md), so they are the
values the hardware's accumulator register holds before requantization (wrapped or saturated at
``acc_bits`` exactly as the profile says). The simulator files are not modified.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mrq.ir import dtype_range

ACC_KINDS = ("conv", "gemm")
# Steps whose output code range equals their (first) input's range (or the union for concat).
_PASS_THROUGH = ("maxpool", "reshape", "transpose", "concat")


def execute_step(step, *arrays):
    """Run one program step through its kind's executor (:mod:`simulator.steps`)."""
    from simulator.steps import execute_step as run_step
    outs, stats = run_step(step, *arrays)
    return tuple(outs), dict(stats or {})


def accumulator_step(step, exact: bool = False):
    """A copy of a conv/gemm ``step`` whose output is its accumulator (``rq_mode='none'``,
    int64). ``exact``: a 64-bit wrapping accumulator (the mathematically exact sum, for the
    observed range) instead of the profile's ``acc_bits``/``acc_overflow``."""
    from simulator.program import Step
    params = dict(step.params)
    params.update(rq_mode="none", out_dtype="int64", out_min=-(2 ** 63), out_max=2 ** 63 - 1)
    if exact:
        params.update(acc_bits=64, acc_overflow="wrap")
    return Step(step.kind, step.name + "/acc", step.inputs, (step.outputs[0] + "__acc",), params)


def accumulator_storage_dtype(acc_bits: int) -> str:
    return "int32" if int(acc_bits) <= 32 else "int64"


def compute_accumulator(step, input_array: np.ndarray, exact: bool = False) -> np.ndarray:
    """The accumulator of a conv/gemm step for ``input_array`` (int64)."""
    (acc,), _ = execute_step(accumulator_step(step, exact), input_array)
    return np.asarray(acc, dtype=np.int64)


def signed_bits_for(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer in ``[lo, hi]``."""
    lo, hi = int(lo), int(hi)
    bits = 1
    if hi > 0:
        bits = max(bits, hi.bit_length() + 1)
    if lo < 0:
        bits = max(bits, (-lo - 1).bit_length() + 1)
    return bits


def value_ranges(program) -> dict:
    """Static code range ``(lo, hi)`` of every integer buffer of ``program``."""
    ranges: dict = {}
    for spec in program.inputs:
        if spec.dtype != "float32":
            ranges[spec.name] = dtype_range(spec.dtype)
    for step in program.steps:
        p = step.params
        ins = [ranges.get(n) for n in step.inputs]
        for out in step.outputs:
            r = None
            if step.kind in _PASS_THROUGH and ins and all(i is not None for i in ins):
                r = (min(i[0] for i in ins), max(i[1] for i in ins))
            elif step.kind == "clamp" and ins and ins[0] is not None:
                r = (max(ins[0][0], int(p["out_min"])), min(ins[0][1], int(p["out_max"])))
            elif step.kind == "constant":
                v = np.asarray(p["value"])
                if v.dtype.kind in "iu" and v.size:
                    r = (int(v.min()), int(v.max()))
            elif "out_min" in p and "out_max" in p and p.get("rq_mode") != "none":
                r = (int(p["out_min"]), int(p["out_max"]))
            elif "out_dtype" in p and str(p["out_dtype"]) != "float32":
                r = dtype_range(str(p["out_dtype"]))
            if r is not None:
                ranges[out] = r
    return ranges


@dataclass
class AccumulatorRow:
    layer: str                  # step name
    kind: str                   # conv | gemm
    acc_bits: int               # the profile's accumulator width
    acc_overflow: str           # wrap | saturate | error
    input_range: tuple          # static code range of the input
    input_zero_point: int
    static_min: int             # worst-case partial sum range
    static_max: int
    safe_bits: int              # smallest width that holds [static_min, static_max]
    can_overflow: bool          # safe_bits > acc_bits
    worst_channel: int          # output channel with the largest worst-case magnitude
    observed_min: int | None = None   # exact accumulator extremes over the given inputs
    observed_max: int | None = None
    observed_bits: int | None = None
    observed_overflow: int | None = None  # elements that overflowed the profile's width
    n_elements: int | None = None

    @property
    def static_magnitude(self) -> int:
        return max(abs(self.static_min), abs(self.static_max))

    @property
    def headroom_bits(self) -> int:
        return self.acc_bits - self.safe_bits

    def as_dict(self) -> dict:
        d = asdict(self)
        d["input_range"] = list(self.input_range)
        d["static_magnitude"] = self.static_magnitude
        d["headroom_bits"] = self.headroom_bits
        return d


def product_bits(acts, weights) -> int:
    """Bits of the widest single product of an activation and a weight code (zero points
    subtracted) for profile formats ``acts``/``weights``: an accumulator narrower than this
    overflows on one product, which no choice of weights can avoid."""
    def magnitude(fmt) -> int:
        if fmt.symmetric:   # zero point 0 (signed) or 2**(bits-1) (unsigned)
            return (1 << (fmt.bits - 1)) - (1 if fmt.narrow_range else 0)
        return (1 << fmt.bits) - 1   # any zero point: |code - zp| up to the code span
    p = magnitude(acts) * magnitude(weights)
    return signed_bits_for(-p, p)


def bound_from_sums(pos, neg, bias, x_lo, x_hi):
    """``(lo, hi)`` of every partial sum (bias first, then the products in any order) of a dot
    product whose zero-point-free weights have positive sum ``pos`` and negative sum ``neg``
    and whose zero-point-free inputs lie in ``[x_lo, x_hi]`` (widened to contain 0: padding and
    the zero point are real zero). Each product lies in an interval that contains 0, so every
    prefix sum lies in ``[lo, hi]``: the bound holds for saturating accumulators too. Works on
    Python ints (exact) and on numpy arrays alike."""
    a = min(x_lo, 0)
    b = max(x_hi, 0)
    hi = bias + pos * b + neg * a
    lo = bias + pos * a + neg * b
    if isinstance(hi, np.ndarray) or isinstance(bias, np.ndarray):
        return np.minimum(lo, bias), np.maximum(hi, bias)
    return min(lo, bias), max(hi, bias)


def weight_sums(weight_rows) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the sums of the positive and of the negative entries (int64)."""
    ws = np.asarray(weight_rows, np.int64)
    return np.where(ws > 0, ws, 0).sum(axis=1), np.where(ws < 0, ws, 0).sum(axis=1)


def static_range(step, x_range: tuple) -> tuple[int, int, int]:
    """``(lo, hi, worst_channel)`` of every partial sum of a conv/gemm step."""
    p = step.params
    w = np.asarray(p["weight"]).astype(np.int64)
    if step.kind == "conv":
        n_out = w.shape[0]
        w2 = w.reshape(n_out, -1)                      # [M, C/g*KH*KW]
    else:
        n_out = w.shape[1]
        w2 = w.T                                       # [N, K]
    wzp = np.broadcast_to(np.asarray(p.get("weight_zero_point", 0), np.int64).reshape(-1), (n_out,))
    bias = p.get("bias")
    bias = np.zeros(n_out, np.int64) if bias is None else \
        np.broadcast_to(np.asarray(bias, np.int64).reshape(-1), (n_out,))
    pos, neg = weight_sums(w2 - wzp[:, None])
    xzp = int(p.get("input_zero_point", 0))
    a, b = int(x_range[0]) - xzp, int(x_range[1]) - xzp
    lo = hi = None
    worst, worst_mag = 0, -1
    for m in range(n_out):
        c_lo, c_hi = bound_from_sums(int(pos[m]), int(neg[m]), int(bias[m]), a, b)
        lo = c_lo if lo is None else min(lo, c_lo)
        hi = c_hi if hi is None else max(hi, c_hi)
        mag = max(abs(c_lo), abs(c_hi))
        if mag > worst_mag:
            worst, worst_mag = m, mag
    return (lo or 0), (hi or 0), worst


def static_analysis(program) -> list[AccumulatorRow]:
    """One row per conv/gemm step: the static worst case against the profile's width."""
    ranges = value_ranges(program)
    rows = []
    for step in program.steps:
        if step.kind not in ACC_KINDS:
            continue
        p = step.params
        x = step.inputs[0]
        x_range = ranges.get(x)
        if x_range is None:
            x_range = dtype_range(str(np.asarray(p["weight"]).dtype))  # should not happen
        lo, hi, worst = static_range(step, x_range)
        bits = int(p.get("acc_bits", 32))
        safe = signed_bits_for(lo, hi)
        rows.append(AccumulatorRow(layer=step.name, kind=step.kind, acc_bits=bits,
                                   acc_overflow=str(p.get("acc_overflow", "wrap")),
                                   input_range=tuple(int(v) for v in x_range),
                                   input_zero_point=int(p.get("input_zero_point", 0)),
                                   static_min=lo, static_max=hi, safe_bits=safe,
                                   can_overflow=safe > bits, worst_channel=worst))
    return rows


def observe(rows: list[AccumulatorRow], program, trace: dict, stats: dict | None = None,
            exact_accumulators: dict | None = None) -> list[AccumulatorRow]:
    """Fill the observed columns of ``rows`` from a traced run of ``program``.

    ``trace``: every buffer of the run; ``stats``: the run's per-step counters;
    ``exact_accumulators``: step name -> exact accumulator, when the caller already has it.
    A step whose static bound fits its width has exact == hardware accumulators, so the caller's
    hardware accumulators can be passed for those."""
    steps = {s.name: s for s in program.steps}
    for row in rows:
        step = steps[row.layer]
        acc = None if exact_accumulators is None else exact_accumulators.get(row.layer)
        if acc is None:
            x = trace.get(step.inputs[0])
            if x is None:
                continue
            acc = compute_accumulator(step, np.asarray(x), exact=True)
        acc = np.asarray(acc, np.int64)
        if acc.size:
            row.observed_min, row.observed_max = int(acc.min()), int(acc.max())
            row.observed_bits = signed_bits_for(row.observed_min, row.observed_max)
        row.n_elements = int(acc.size)
        if stats is not None:
            row.observed_overflow = int(stats.get(row.layer, {}).get("acc_overflow", 0))
    return rows


def merge_observed(into: AccumulatorRow, row: AccumulatorRow) -> AccumulatorRow:
    """Widen ``into``'s observed columns by another batch's ``row`` of the same layer: the
    extremes of the extremes, the sums of the counts (a data set read in batches)."""
    if row.observed_max is not None:
        if into.observed_max is None:
            into.observed_min, into.observed_max = row.observed_min, row.observed_max
        else:
            into.observed_min = min(into.observed_min, row.observed_min)
            into.observed_max = max(into.observed_max, row.observed_max)
        into.observed_bits = signed_bits_for(into.observed_min, into.observed_max)
    if row.n_elements is not None:
        into.n_elements = (into.n_elements or 0) + row.n_elements
    if row.observed_overflow is not None:
        into.observed_overflow = (into.observed_overflow or 0) + row.observed_overflow
    return into


def tolerated(row: AccumulatorRow, guarantee: str) -> bool:
    """A possible overflow the profile accepts: ``accumulator.guarantee: measured`` on a
    saturating accumulator (the re-quantizer traded rare clamping for accuracy on data)."""
    return guarantee == "measured" and row.acc_overflow == "saturate"


def violation_lines(rows: list[AccumulatorRow], guarantee: str = "proof") -> list[str]:
    out = []
    for r in rows:
        if r.can_overflow and not tolerated(r, guarantee):
            out.append(f"{r.layer}: accumulator can overflow: worst case [{r.static_min}, {r.static_max}] "
                       f"needs {r.safe_bits} bits, the profile has {r.acc_bits} ({r.acc_overflow}); "
                       f"worst output channel {r.worst_channel}")
    return out


def format_table(rows: list[AccumulatorRow], title: str | None = None, guarantee: str = "proof") -> str:
    observed = any(r.observed_max is not None for r in rows)
    head = f"{'layer':<30} {'kind':<5} {'input range':>13} {'worst |acc|':>14} {'safe':>5} {'acc':>4} {'status':<9}"
    if observed:
        head += f" {'observed [min, max]':>27} {'bits':>4} {'ovf':>6}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for r in rows:
        name = r.layer if len(r.layer) <= 30 else "…" + r.layer[-29:]
        rng = f"[{r.input_range[0]},{r.input_range[1]}]"
        status = f"ok +{r.headroom_bits}b" if not r.can_overflow else \
            "may sat" if tolerated(r, guarantee) else "OVERFLOW"
        line = (f"{name:<30} {r.kind:<5} {rng:>13} {r.static_magnitude:>14d} {r.safe_bits:>5d} "
                f"{r.acc_bits:>4d} {status:<9}")
        if observed:
            if r.observed_max is None:
                line += f" {'-':>27} {'-':>4} {'-':>6}"
            else:
                obs = f"[{r.observed_min}, {r.observed_max}]"
                ovf = "-" if r.observed_overflow is None else str(r.observed_overflow)
                line += f" {obs:>27} {r.observed_bits:>4d} {ovf:>6}"
        lines.append(line)
    lines.append("worst |acc|: static worst-case magnitude from the integer weights and the input's "
                 "code range; safe: smallest accumulator width (bits) that cannot overflow; acc: the "
                 "profile's width" + ("; may sat: can saturate, which the profile's accumulator.guarantee "
                                      "measured accepts" if any(r.can_overflow and tolerated(r, guarantee)
                                                                for r in rows) else "")
                 + ("; observed: exact accumulator over the given inputs, the bits it "
                                      "needs and the elements that overflowed the profile's width"
                                      if observed else ""))
    return "\n".join(lines)
