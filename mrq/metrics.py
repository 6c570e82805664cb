"""Per-layer fidelity of an integer execution against the float reference."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

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
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)


def quantize_reference(ref: np.ndarray, qp: QParams) -> np.ndarray:
    shape = qp.broadcast_shape(ref.ndim)
    q = np.rint(ref / qp.scale.astype(np.float64).reshape(shape)) + qp.zero_point.reshape(shape)
    return np.clip(q, qp.qmin, qp.qmax).astype(np.int64)


def layer_fidelity(graph: Graph, trace: dict, reference: dict, stats: dict,
                   node_steps: dict) -> list[LayerFidelity]:
    """One row per IR node with an integer output. ``node_steps`` maps node name -> step names."""
    rows = []
    for node in graph.nodes:
        out = node.outputs[0]
        t = graph.tensors[out]
        if t.qparams is None or out not in trace or out not in reference:
            continue
        codes = np.asarray(trace[out])
        ref = reference[out]
        deq = t.qparams.dequantize(codes)
        shape = t.qparams.broadcast_shape(codes.ndim)
        lsb = t.qparams.scale.astype(np.float64).reshape(shape)
        err = np.abs(ref - deq) / lsb
        counters = {"acc_overflow": 0, "out_saturated": 0}
        for step in node_steps.get(node.name, ()):
            for k in counters:
                counters[k] += int(stats.get(step, {}).get(k, 0))
        rows.append(LayerFidelity(
            layer=node.name, op=node.op, tensor=out, shape=tuple(codes.shape),
            sqnr_db=sqnr_db(ref, deq), max_err_lsb=float(err.max()) if err.size else 0.0,
            n_diff=int(np.count_nonzero(codes.astype(np.int64) != quantize_reference(ref, t.qparams))),
            n_elements=int(codes.size), **counters))
    return rows


def format_table(rows: list[LayerFidelity], title: Optional[str] = None) -> str:
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
