"""Per-layer fidelity of an integer execution against the float reference."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from mrq.ir import Graph, QParams


@dataclass
class LayerFidelity:
    layer: str
    op: str
    tensor: str
    shape: tuple
    sqnr_db: float            # 10*log10(signal power / error power) of the dequantized output
    max_err_lsb: float        # max |float reference - integer result| in output LSBs
    n_diff: int               # output codes that differ from the float reference rounded onto the grid
    n_elements: int
    acc_overflow: int = 0
    out_saturated: int = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    signal = float(np.sum(np.square(reference, dtype=np.float64)))
    noise = float(np.sum(np.square(reference - actual, dtype=np.float64)))
    return _sqnr_from_powers(signal, noise)


def _sqnr_from_powers(signal: float, noise: float) -> float:
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)


def quantize_reference(ref: np.ndarray, qp: QParams) -> np.ndarray:
    shape = qp.broadcast_shape(ref.ndim)
    q = np.rint(ref / qp.scale.astype(np.float64).reshape(shape)) + qp.zero_point.reshape(shape)
    return np.clip(q, qp.qmin, qp.qmax).astype(np.int64)


class ExactSum:
    """The correctly rounded sum of every float added, whatever the grouping (Shewchuk's
    partials, as in :func:`math.fsum`): a data set summed batch by batch gives the same bits as
    summed at once."""

    def __init__(self):
        self._partials: list = []

    def add(self, values) -> None:
        partials = self._partials
        for x in np.asarray(values, dtype=np.float64).reshape(-1).tolist():
            i = 0
            for y in partials:
                if abs(x) < abs(y):
                    x, y = y, x
                hi = x + y
                lo = y - (hi - x)
                if lo:
                    partials[i] = lo
                    i += 1
                x = hi
            partials[i:] = [x]

    @property
    def value(self) -> float:
        return math.fsum(self._partials)


def _per_sample_sum_sq(x: np.ndarray) -> np.ndarray:
    """Sum of squares of each sample (leading axis) in float64. One sample's sum depends only on
    its own values, never on which batch it came in, so the totals are batching-invariant."""
    flat = np.asarray(x, dtype=np.float64).reshape(x.shape[0] if x.ndim else 1, -1)
    return np.sum(np.square(flat), axis=1)


@dataclass
class _LayerTotals:
    layer: str
    op: str
    tensor: str
    sample_shape: tuple
    samples: int = 0
    signal: ExactSum = field(default_factory=ExactSum)
    noise: ExactSum = field(default_factory=ExactSum)
    max_err_lsb: float = 0.0
    n_diff: int = 0
    n_elements: int = 0
    acc_overflow: int = 0
    out_saturated: int = 0


class FidelityAccumulator:
    """Per-layer fidelity accumulated batch by batch: running exact sums of signal and noise
    power (SQNR), running max of the error in LSBs, and counts of differing codes, accumulator
    overflows and saturated outputs. :meth:`rows` gives the same numbers for any batching of
    the same samples. ``node_steps`` maps node name -> step names."""

    def __init__(self, graph: Graph, node_steps: dict):
        self.graph = graph
        self.node_steps = node_steps
        self._totals: dict = {}

    def add(self, trace: dict, reference: dict, stats: dict) -> None:
        """One batch: ``trace`` (the integer run's buffers), the float ``reference`` of the same
        samples and the run's per-step ``stats``."""
        for node in self.graph.nodes:
            out = node.outputs[0]
            t = self.graph.tensors[out]
            if t.qparams is None or out not in trace or out not in reference:
                continue
            codes = np.asarray(trace[out])
            ref = reference[out]
            deq = t.qparams.dequantize(codes)
            shape = t.qparams.broadcast_shape(codes.ndim)
            lsb = t.qparams.scale.astype(np.float64).reshape(shape)
            err = np.abs(ref - deq) / lsb
            tot = self._totals.get(node.name)
            if tot is None:
                tot = self._totals[node.name] = _LayerTotals(node.name, node.op, out,
                                                             tuple(codes.shape[1:]))
            tot.samples += codes.shape[0] if codes.ndim else 1
            tot.signal.add(_per_sample_sum_sq(np.asarray(ref)))
            tot.noise.add(_per_sample_sum_sq(np.asarray(ref) - deq))
            if err.size:
                # np.maximum keeps a NaN, like the max over the whole array would
                tot.max_err_lsb = float(np.maximum(tot.max_err_lsb, err.max()))
            tot.n_diff += int(np.count_nonzero(codes.astype(np.int64) != quantize_reference(ref, t.qparams)))
            tot.n_elements += int(codes.size)
            for step in self.node_steps.get(node.name, ()):
                counters = stats.get(step, {})
                tot.acc_overflow += int(counters.get("acc_overflow", 0))
                tot.out_saturated += int(counters.get("out_saturated", 0))

    def rows(self) -> list[LayerFidelity]:
        return [LayerFidelity(layer=t.layer, op=t.op, tensor=t.tensor,
                              shape=(t.samples,) + t.sample_shape,
                              sqnr_db=_sqnr_from_powers(t.signal.value, t.noise.value),
                              max_err_lsb=t.max_err_lsb, n_diff=t.n_diff, n_elements=t.n_elements,
                              acc_overflow=t.acc_overflow, out_saturated=t.out_saturated)
                for t in self._totals.values()]


def layer_fidelity(graph: Graph, trace: dict, reference: dict, stats: dict,
                   node_steps: dict) -> list[LayerFidelity]:
    """One row per IR node with an integer output, for one batch (see
    :class:`FidelityAccumulator` for many). ``node_steps`` maps node name -> step names."""
    acc = FidelityAccumulator(graph, node_steps)
    acc.add(trace, reference, stats)
    return acc.rows()


def format_table(rows: list[LayerFidelity], title: str | None = None) -> str:
    header = f"{'layer':<34} {'op':<17} {'SQNR dB':>8} {'max|err| LSB':>12} {'differ':>14} {'acc ovf':>7} {'sat':>7}"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for r in rows:
        sq = "inf" if np.isinf(r.sqnr_db) and r.sqnr_db > 0 else f"{r.sqnr_db:8.2f}"
        diff = f"{r.n_diff}/{r.n_elements}"
        name = r.layer if len(r.layer) <= 34 else "…" + r.layer[-33:]
        lines.append(f"{name:<34} {r.op:<17} {sq:>8} {r.max_err_lsb:12.2f} {diff:>14} "
                     f"{r.acc_overflow:7d} {r.out_saturated:7d}")
    return "\n".join(lines)
