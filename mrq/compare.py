"""Compare a model under several hardware profiles (``mrq compare``).

For every profile the model is (re-quantized where needed, see :func:`requantize_for_profile`)
simulated bit-exactly on the evaluation inputs, in batches, and measured against the float
reference of the *input* model:

- top-1 agreement of the outputs with the float reference (and accuracy with ``labels``),
- per layer: SQNR and max |error| in output LSBs, both **accumulated** (the layer fed the
  network's own integer input, i.e. the real execution) and **single** (the layer fed its float
  reference input rounded onto its input grid, so only the layer's own error shows). Where the
  single error is small but the accumulated error is large, error compounds from upstream;
  where the single error drops, the layer itself loses precision.
- accumulator overflow and output saturation counts, weight memory in bytes.

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
from typing import Optional

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


def requantize_for_profile(graph, profile, calib: Optional[dict] = None) -> RequantOutcome:
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
# Error bookkeeping
# --------------------------------------------------------------------------------------------


class _Err:
    """Running SQNR / max-LSB / differing-code counts of one tensor over batches."""

    __slots__ = ("signal", "noise", "max_lsb", "n_diff", "n")

    def __init__(self):
        self.signal = 0.0
        self.noise = 0.0
        self.max_lsb = 0.0
        self.n_diff = 0
        self.n = 0

    def add(self, ref: np.ndarray, codes: np.ndarray, qp) -> None:
        from mrq.metrics import quantize_reference
        codes = np.asarray(codes)
        deq = qp.dequantize(codes)
        lsb = qp.scale.astype(np.float64).reshape(qp.broadcast_shape(codes.ndim))
        e = ref - deq
        self.signal += float(np.sum(np.square(ref, dtype=np.float64)))
        self.noise += float(np.sum(np.square(e, dtype=np.float64)))
        if e.size:
            self.max_lsb = max(self.max_lsb, float(np.max(np.abs(e) / lsb)))
        self.n_diff += int(np.count_nonzero(codes.astype(np.int64) != quantize_reference(ref, qp)))
        self.n += int(codes.size)

    @property
    def sqnr_db(self) -> float:
        if self.noise == 0.0:
            return float("inf")
        if self.signal == 0.0:
            return float("-inf")
        return 10.0 * math.log10(self.signal / self.noise)


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

    @property
    def compounding_db(self) -> float:
        """How much worse the accumulated SQNR is than the single one (dB)."""
        a, s = self.sqnr_accumulated, self.sqnr_single
        if math.isinf(a) and math.isinf(s):
            return 0.0
        return s - a


@dataclass
class ProfileResult:
    profile: str
    description: str = ""
    requantized: bool = False
    note: str = ""
    violations_before: list = field(default_factory=list)
    violations: list = field(default_factory=list)
    layers: list = field(default_factory=list)       # LayerRow
    top1_agreement: Optional[float] = None
    accuracy: Optional[float] = None
    output_sqnr_db: Optional[float] = None
    output_max_err_lsb: Optional[float] = None
    output_layer: str = ""
    acc_overflow: int = 0
    out_saturated: int = 0
    weight_bytes: int = 0
    seconds: float = 0.0
    error: Optional[str] = None

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["layers"] = [dict(r.__dict__, compounding_db=r.compounding_db) for r in self.layers]
        return d


@dataclass
class CompareResult:
    model: str
    n_samples: int
    batch_size: int
    has_labels: bool
    float_accuracy: Optional[float]
    profiles: list                                   # ProfileResult

    def as_dict(self) -> dict:
        return {"model": self.model, "n_samples": self.n_samples, "batch_size": self.batch_size,
                "has_labels": self.has_labels, "float_accuracy": self.float_accuracy,
                "profiles": [p.as_dict() for p in self.profiles]}


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _batch(feeds) -> int:
    return int(next(iter(feeds.values())).shape[0]) if feeds else 0


def _chunks(feeds: dict, batch_size: int):
    n = _batch(feeds)
    for start in range(0, n, batch_size):
        yield {k: v[start:start + batch_size] for k, v in feeds.items()}


def _top1(x: np.ndarray) -> Optional[np.ndarray]:
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[-1] < 2:
        return None
    return np.argmax(x.reshape(x.shape[0], -1) if x.ndim > 2 else x, axis=-1)


def weight_bytes(graph, profile=None) -> int:
    """Bytes of the conv/gemm weights and biases. With ``profile`` (for a model that satisfies
    it) at the profile's weight and bias widths, else at the model's code widths; sub-byte codes
    are packed (two 4-bit weights per byte), each tensor rounded up to whole bytes."""
    from mrq.ir import dtype_range
    total = 0
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm"):
            continue
        for role, name in zip(("weights", "bias"), node.inputs[1:3]):
            t = graph.tensors.get(name)
            if t is None or t.data is None:
                continue
            if profile is not None:
                bits = profile.bias.bits if role == "bias" else profile.weights.bits
            else:
                try:
                    lo, hi = dtype_range(t.dtype)
                except KeyError:
                    lo, hi = dtype_range(np.asarray(t.data).dtype.name)
                bits = int(round(math.log2(hi - lo + 1)))
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


def _single_layer_outputs(graph, lowered, program, bound, trace, ref, node_steps) -> dict:
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


def run_profile(graph, profile, feeds: dict, batch_size: int, ref_outputs: list, labels,
                calib=None, bar=None) -> ProfileResult:
    """Simulate ``graph`` under ``profile`` batch by batch; ``ref_outputs``: the float reference
    output (first graph output) per batch of the input model."""
    from mrq.api import resolve_profile
    from mrq.float_ref import FloatReference
    from mrq.pipeline import Pipeline

    prof = resolve_profile(profile)
    res = ProfileResult(profile=prof.name, description=prof.description)
    t0 = time.perf_counter()
    hook = requantize_for_profile(graph, prof, calib)
    g = hook.graph
    res.requantized, res.note = hook.requantized, hook.note
    res.violations_before, res.violations = hook.violations_before, hook.violations_after
    res.weight_bytes = weight_bytes(g, None if hook.violations_after else prof)
    pipe = Pipeline(g, prof, layout="native")
    lowered = pipe.lowered
    node_steps = pipe.node_steps()
    acc_err: dict = {}
    single_err: dict = {}
    counters: dict = {}
    agree = correct = seen = 0
    out_name = lowered.program.outputs[0].name if lowered.program.outputs else None
    for i, chunk in enumerate(_chunks(feeds, batch_size)):
        result = pipe.run(chunk, trace=True)
        program, trace, bound = result.program, result.trace, result.bound
        arrays = {k: np.asarray(v) for k, v in chunk.items()}
        ref = FloatReference(graph).run(arrays)
        if g is not graph:
            # The re-quantized model's own reference where the input model has no such tensor;
            # the input model's float reference wherever it has (the error includes requantization).
            ref_g = FloatReference(g).run(arrays)
            ref = {**ref_g, **{k: v for k, v in ref.items() if k in ref_g and np.shape(v) == np.shape(ref_g[k])}}
        single = _single_layer_outputs(g, lowered, program, bound, trace, ref, node_steps)
        for node in g.nodes:
            name = node.outputs[0]
            t = g.tensors.get(name)
            if t is None or t.qparams is None or name not in trace or name not in ref:
                continue
            acc_err.setdefault(node.name, _Err()).add(ref[name], trace[name], t.qparams)
            if single.get(name) is not None:
                single_err.setdefault(node.name, _Err()).add(ref[name], single[name], t.qparams)
            c = counters.setdefault(node.name, [0, 0])
            for s in node_steps.get(node.name, ()):
                st = result.stats.get(s, {})
                c[0] += int(st.get("acc_overflow", 0))
                c[1] += int(st.get("out_saturated", 0))
        if out_name is not None and out_name in result.outputs:
            sim_top = _top1(result.outputs[out_name])
            ref_top = _top1(ref_outputs[i]) if ref_outputs[i] is not None else None
            if sim_top is not None:
                if ref_top is not None:
                    agree += int(np.count_nonzero(sim_top == ref_top))
                if labels is not None:
                    lab = np.asarray(labels[i * batch_size:i * batch_size + len(sim_top)]).reshape(-1)
                    correct += int(np.count_nonzero(sim_top == lab))
                seen += len(sim_top)
        if bar is not None:
            bar.update(1)
    for node in g.nodes:
        if node.name not in acc_err:
            continue
        a, s = acc_err[node.name], single_err.get(node.name, acc_err[node.name])
        ovf, sat = counters.get(node.name, [0, 0])
        res.layers.append(LayerRow(layer=node.name, op=node.op, tensor=node.outputs[0],
                                   sqnr_single=s.sqnr_db, sqnr_accumulated=a.sqnr_db,
                                   max_lsb_single=s.max_lsb, max_lsb_accumulated=a.max_lsb,
                                   n_diff=a.n_diff, n_elements=a.n, acc_overflow=ovf, out_saturated=sat))
    res.acc_overflow = sum(r.acc_overflow for r in res.layers)
    res.out_saturated = sum(r.out_saturated for r in res.layers)
    if seen:
        res.top1_agreement = agree / seen if any(r is not None for r in ref_outputs) else None
        res.accuracy = correct / seen if labels is not None else None
    out_row = _output_row(g, res.layers)
    if out_row is not None:
        res.output_layer = out_row.layer
        res.output_sqnr_db = out_row.sqnr_accumulated
        res.output_max_err_lsb = out_row.max_lsb_accumulated
    res.seconds = time.perf_counter() - t0
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


def run_compare(model, profiles: list, feeds: dict, labels=None, batch_size: int = 64,
                progress: bool = True, calib: Optional[dict] = None) -> CompareResult:
    from mrq.api import resolve_profile
    from mrq.float_ref import FloatReference
    from mrq.onnx_import import load_model

    graph = load_model(model) if isinstance(model, str) else model
    n = _batch(feeds)
    if n == 0:
        raise InputDataError("the inputs hold no samples")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != n:
            raise InputDataError(f"labels: {labels.shape[0]} labels for {n} input samples")
    batch_size = max(1, int(batch_size))
    profs = [resolve_profile(p) for p in profiles]
    n_chunks = -(-n // batch_size)
    # float reference of the input model, per batch (first graph output)
    ref_outputs = []
    float_correct = 0
    out0 = graph.outputs[0] if graph.outputs else None
    bar = _progress(n_chunks * (len(profs) + 1), progress, "mrq compare")
    try:
        fr = FloatReference(graph)
        for i, chunk in enumerate(_chunks(feeds, batch_size)):
            ref = fr.run({k: np.asarray(v) for k, v in chunk.items()})
            r = ref.get(out0)
            ref_outputs.append(r)
            if labels is not None and r is not None and _top1(r) is not None:
                lab = labels[i * batch_size:i * batch_size + r.shape[0]]
                float_correct += int(np.count_nonzero(_top1(r) == lab))
            bar.update(1)
        results = []
        for prof in profs:
            bar.set_postfix_str(prof.name)
            try:
                results.append(run_profile(graph, prof, feeds, batch_size, ref_outputs, labels, calib, bar))
            except MrqError as exc:
                results.append(ProfileResult(profile=prof.name, description=prof.description,
                                             error=str(exc)))
    finally:
        bar.close()
    return CompareResult(model=model if isinstance(model, str) else getattr(graph, "name", "graph"),
                         n_samples=n, batch_size=batch_size, has_labels=labels is not None,
                         float_accuracy=(float_correct / n if labels is not None else None),
                         profiles=results)


# --------------------------------------------------------------------------------------------
# Text table
# --------------------------------------------------------------------------------------------


def _db(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.2f}"


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _lsb(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_table(result: CompareResult) -> str:
    acc_col = result.has_labels
    head = (f"{'profile':<18} {'requant':<7} {'top-1 agree':>11} " + (f"{'accuracy':>9} " if acc_col else "")
            + f"{'out SQNR dB':>11} {'out max|err| LSB':>16} {'worst layer SQNR':>26} {'acc ovf':>8} "
            f"{'sat':>8} {'weight B':>9} {'viol':>5}")
    lines = [f"{result.model}: {result.n_samples} sample(s)" + (
        f", float reference accuracy {_pct(result.float_accuracy)}" if acc_col else ""), head, "-" * len(head)]
    for p in result.profiles:
        if p.error:
            lines.append(f"{p.profile:<18} error: {p.error}")
            continue
        worst = min(p.layers, key=lambda r: r.sqnr_accumulated, default=None)
        worst_s = f"{_db(worst.sqnr_accumulated)} ({worst.layer[:14]})" if worst else "-"
        lines.append(f"{p.profile:<18} {'yes' if p.requantized else 'no':<7} {_pct(p.top1_agreement):>11} "
                     + (f"{_pct(p.accuracy):>9} " if acc_col else "")
                     + f"{_db(p.output_sqnr_db):>11} {_lsb(p.output_max_err_lsb):>16} {worst_s:>26} "
                     f"{p.acc_overflow:>8d} {p.out_saturated:>8d} {p.weight_bytes:>9d} {len(p.violations):>5d}")
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
    for p in result.profiles:
        for r in p.layers:
            if r.layer not in names:
                names.append(r.layer)
    finite = [v for p in result.profiles for r in p.layers for v in (r.sqnr_single, r.sqnr_accumulated)
              if not math.isinf(v)]
    cap = (max(finite) + 10.0) if finite else 100.0
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12.5, 7.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    x = np.arange(len(names))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, p in enumerate(result.profiles):
        if not p.layers:
            continue
        c = colors[k % len(colors)]
        pos = [names.index(r.layer) for r in p.layers]
        ax1.plot(pos, _finite_for_plot([r.sqnr_accumulated for r in p.layers], cap), "-o", color=c,
                 ms=4, label=f"{p.profile} accumulated")
        ax1.plot(pos, _finite_for_plot([r.sqnr_single for r in p.layers], cap), "--", color=c, alpha=0.8,
                 label=f"{p.profile} single")
        ax2.semilogy(pos, [max(r.max_lsb_accumulated, 1e-3) for r in p.layers], "-o", color=c, ms=4,
                     label=f"{p.profile} accumulated")
        ax2.semilogy(pos, [max(r.max_lsb_single, 1e-3) for r in p.layers], "--", color=c, alpha=0.8,
                     label=f"{p.profile} single")
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
tr.bad td{background:#fdecea} td.warn{color:#b00020;font-weight:600}
.meta{color:#555;font-size:13px} .note{font-size:13px;margin:4px 0}
img.plot{max-width:100%;border:1px solid #eee}
details{font-size:12px;margin:6px 0} code{font-size:12px}
"""


def _e(x) -> str:
    return html.escape(str(x))


def render_html(result: CompareResult, png: Optional[bytes] = None) -> str:
    if png is None:
        png = plot_png(result)
    img = base64.b64encode(png).decode("ascii")
    acc_col = result.has_labels
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           f"<title>mrq compare: {_e(result.model)}</title><style>{_CSS}</style></head><body>",
           f"<h1>mrq compare: {_e(result.model)}</h1>",
           f"<p class='meta'>{result.n_samples} sample(s), batch {result.batch_size}; "
           f"{len(result.profiles)} profile(s)"
           + (f"; float reference accuracy {_pct(result.float_accuracy)}" if acc_col else
              "; no labels: top-1 agreement with the float reference") + "</p>",
           "<h2>Summary</h2><table><tr><th class='l'>profile</th><th class='l'>model used</th>"
           "<th>top-1 agreement</th>" + ("<th>accuracy</th>" if acc_col else "") +
           "<th>output SQNR (dB)</th><th>output max |err| (LSB)</th><th>worst layer SQNR (dB)</th>"
           "<th>acc overflows</th><th>clamped outputs</th><th>weight memory (bytes)</th>"
           "<th>profile violations</th><th>time (s)</th></tr>"]
    for p in result.profiles:
        if p.error:
            out.append(f"<tr class='bad'><td class='l'>{_e(p.profile)}</td><td class='l' colspan='11'>"
                       f"error: {_e(p.error)}</td></tr>")
            continue
        worst = min(p.layers, key=lambda r: r.sqnr_accumulated, default=None)
        used = "re-quantized" if p.requantized else ("as is" if not p.violations else "as is (violates)")
        out.append(
            f"<tr><td class='l'>{_e(p.profile)}</td><td class='l'>{used}</td>"
            f"<td>{_pct(p.top1_agreement)}</td>" + (f"<td>{_pct(p.accuracy)}</td>" if acc_col else "") +
            f"<td>{_db(p.output_sqnr_db)}</td><td>{_lsb(p.output_max_err_lsb)}</td>"
            f"<td>{_db(worst.sqnr_accumulated) + ' (' + _e(worst.layer) + ')' if worst else '-'}</td>"
            f"<td class='{'warn' if p.acc_overflow else ''}'>{p.acc_overflow}</td><td>{p.out_saturated}</td>"
            f"<td>{p.weight_bytes}</td><td class='{'warn' if p.violations else ''}'>{len(p.violations)}</td>"
            f"<td>{p.seconds:.2f}</td></tr>")
    out.append("</table>")
    out.append("<h2>Per-layer error</h2>"
               f"<img class='plot' alt='per-layer SQNR and max error per profile' src='data:image/png;base64,{img}'>"
               "<p class='note'><b>single</b>: the layer fed its float reference input rounded onto its "
               "input grid (the error the layer itself adds). <b>accumulated</b>: the layer in the "
               "real integer execution (error that entered upstream compounds). Infinite SQNR (exact) "
               "is drawn on the dotted line.</p>")
    for p in result.profiles:
        out.append(f"<h3>{_e(p.profile)}</h3><p class='note'>{_e(p.description)}</p>")
        if p.error:
            out.append(f"<p class='note'>error: {_e(p.error)}</p>")
            continue
        out.append(f"<p class='note'>{_e(p.note)}</p>")
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
        out.append("<table><tr><th class='l'>layer</th><th class='l'>op</th><th>SQNR single (dB)</th>"
                   "<th>SQNR accumulated (dB)</th><th>compounding (dB)</th><th>max |err| single (LSB)</th>"
                   "<th>max |err| accumulated (LSB)</th><th>codes ≠ rounded reference</th>"
                   "<th>acc overflows</th><th>clamped outputs</th></tr>")
        for r in p.layers:
            bad = r.acc_overflow > 0
            out.append(f"<tr class='{'bad' if bad else ''}'><td class='l'>{_e(r.layer)}</td>"
                       f"<td class='l'>{_e(r.op)}</td><td>{_db(r.sqnr_single)}</td>"
                       f"<td>{_db(r.sqnr_accumulated)}</td><td>{_db(r.compounding_db)}</td>"
                       f"<td>{_lsb(r.max_lsb_single)}</td><td>{_lsb(r.max_lsb_accumulated)}</td>"
                       f"<td>{r.n_diff}/{r.n_elements}</td><td>{r.acc_overflow}</td>"
                       f"<td>{r.out_saturated}</td></tr>")
        out.append("</table>")
    out.append("<p class='meta'>Generated by mrq compare. Clamped outputs: requantized values clamped to the "
               "output range (the simulator's out_saturated counter; it includes fused ReLU/Clip "
               "clamping). Weight memory: conv/gemm weights and biases at the profile's widths when the "
               "simulated model satisfies the profile, else at the model's code widths (4-bit codes "
               "packed two per byte).</p></body></html>")
    return "\n".join(out)


def write_report(result: CompareResult, path: str) -> None:
    from mrq.fileio import save_text
    save_text(path, render_html(result))
