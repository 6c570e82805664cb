"""Which layers get the higher precision: ``mrq requant --budget weight_bytes=N|P%`` or
``--budget sqnr_db=X``.

From the profile as given (its own ``layers`` included) every conv/gemm layer below
``high_bits`` is a candidate for ``high_bits`` weights and output activations (the other fields
of its formats unchanged). The search is greedy and measured, never modelled:

1. *sensitivity*: the model re-quantized with only that layer at the high precision; its
   end-to-end SQNR against the input model on the calibration samples, minus the all-low SQNR,
   is the layer's gain (dB); the extra weight bytes are its cost;
2. layers are ranked by gain per byte (higher first);
3. in that order each layer is added when the total still fits ``weight_bytes`` (skipped
   otherwise), and every such step is measured: the choice is the best measured point (for
   ``sqnr_db``: the first whose SQNR reaches the floor).

Every measurement is one re-quantization (weight correction and error folding off: the cheap
naive grids with scale selection) and one simulation on at most ``samples`` calibration inputs.
The measured points are the *frontier* (weight bytes vs SQNR) the choice was made on. The
chosen profile is then used by the full re-quantization, whose SQNR the command reports.
"""
from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field, replace

import numpy as np

from mrq.errors import MrqError
from mrq.hw_profile import LayerOverride
from mrq.mixed_precision import LayerFormats

__all__ = [
    "BUDGET_KINDS",
    "Budget",
    "FrontierPoint",
    "SearchResult",
    "parse_budget",
    "search",
    "with_high_layers",
]

BUDGET_KINDS = ("weight_bytes", "sqnr_db")
SEARCH_SAMPLES = 64      # calibration inputs per measurement: enough to rank layers


@dataclass(frozen=True)
class Budget:
    """``kind`` weight_bytes (``value`` bytes, or a percentage of the all-high model's bytes
    when ``percent``) or sqnr_db (a floor in dB)."""

    kind: str
    value: float
    percent: bool = False
    text: str = ""


def parse_budget(text: str) -> Budget:
    """``weight_bytes=N``, ``weight_bytes=P%`` or ``sqnr_db=X``."""
    m = re.fullmatch(r"\s*([a-z_]+)\s*=\s*([0-9.eE+-]+)\s*(%?)\s*", text)
    if not m or m.group(1) not in BUDGET_KINDS:
        raise MrqError(f"--budget: expected weight_bytes=N, weight_bytes=P% or sqnr_db=X; got {text!r}")
    kind, number, pct = m.group(1), m.group(2), bool(m.group(3))
    try:
        value = float(number)
    except ValueError:
        raise MrqError(f"--budget: {number!r} is not a number (in {text!r})") from None
    if not np.isfinite(value):
        raise MrqError(f"--budget: {text!r} is not a finite number")
    if kind == "sqnr_db" and pct:
        raise MrqError(f"--budget: sqnr_db is a floor in dB, not a percentage; got {text!r}")
    if kind == "weight_bytes" and (value <= 0 or (pct and value > 100)
                                   or (not pct and value != int(value))):
        raise MrqError(f"--budget: weight_bytes must be a whole number of bytes > 0 or a "
                       f"percentage in (0, 100]; got {text!r}")
    return Budget(kind, value, pct, text.strip())


@dataclass
class FrontierPoint:
    high_layers: tuple           # layer names at the high precision
    weight_bytes: int
    sqnr_db: float
    chosen: bool = False

    def as_dict(self) -> dict:
        return {"high_layers": list(self.high_layers), "weight_bytes": self.weight_bytes,
                "sqnr_db": self.sqnr_db, "chosen": self.chosen}


@dataclass
class SearchResult:
    profile: object              # the chosen HwProfile (the given one + overrides)
    budget: Budget
    high_bits: int
    limit_bytes: int | None      # the budget in bytes (weight_bytes budgets)
    low_bytes: int               # every candidate at its low precision
    high_bytes: int              # every candidate at high_bits (the percentage's 100%)
    sensitivity: list = field(default_factory=list)   # (layer, kind, gain dB, extra bytes)
    frontier: list = field(default_factory=list)      # FrontierPoint, in the greedy order
    samples: int = 0

    @property
    def chosen(self) -> FrontierPoint:
        return next(p for p in self.frontier if p.chosen)

    def as_dict(self) -> dict:
        return {"budget": self.budget.text, "high_bits": self.high_bits,
                "limit_bytes": self.limit_bytes, "low_bytes": self.low_bytes,
                "high_bytes": self.high_bytes, "samples": self.samples,
                "sensitivity": [{"layer": n, "kind": k, "gain_db": g, "extra_bytes": b}
                                for n, k, g, b in self.sensitivity],
                "frontier": [p.as_dict() for p in self.frontier],
                "chosen": list(self.chosen.high_layers)}

    def table(self) -> str:
        """The frontier as text, one line per point (``*`` marks the choice)."""
        lines = [(f"precision frontier ({self.budget.text}; {self.high_bits}-bit layers added in "
                 f"order of SQNR gain per byte, measured on {self.samples} calibration inputs):"),
                 (f"  {'':1} {'layers at ' + str(self.high_bits) + ' bits':<24} {'weight bytes':>12} "
                 f"{'% of all-high':>13} {'SQNR dB':>8}  added layer")]
        for i, p in enumerate(self.frontier):
            added = p.high_layers[-1] if p.high_layers and i else "-"
            pct = 100.0 * p.weight_bytes / self.high_bytes if self.high_bytes else float("nan")
            lines.append(f"  {'*' if p.chosen else ' '} {len(p.high_layers):<24} {p.weight_bytes:>12} "
                         f"{pct:>12.1f}% {p.sqnr_db:>8.2f}  {added}")
        return "\n".join(lines)


def with_high_layers(profile, layers, high_bits: int):
    """``profile`` with ``layers`` (node names) at ``high_bits`` weights and activations: one
    override per layer, selected by its exact name, after the profile's own ``layers``."""
    entries = list(profile.layers)
    for name in layers:
        entries.append(LayerOverride(len(entries), None, glob.escape(name), None,
                                     replace(profile.activations, bits=high_bits),
                                     replace(profile.weights, bits=high_bits)))
    return replace(profile, layers=tuple(entries))


def search(graph, profile, calib: dict, budget: Budget, high_bits: int = 8,
           samples: int = SEARCH_SAMPLES, progress=None) -> SearchResult:
    """Choose the layers at ``high_bits`` (see the module docstring). ``progress(text)`` is
    told about each measurement. Raises MrqError for a budget no choice can meet."""
    from mrq.compare import weight_bytes
    if calib is None:
        raise MrqError("--budget needs --calib: layer sensitivities are measured on calibration data")
    small = {k: np.asarray(v)[:samples] for k, v in calib.items()}
    n = min(len(v) for v in small.values())
    formats = LayerFormats.of(graph, profile)
    candidates = [name for name, p in formats.layer_profile.items()
                  if p.weights.bits < high_bits or p.activations.bits < high_bits]
    if not candidates:
        raise MrqError(f"--budget: every conv/gemm layer of the model is already at {high_bits} "
                       f"bits or more under profile {profile.name!r}; there is nothing to choose")
    measure = _Measure(graph, small, progress)

    def cost(layers) -> int:
        return weight_bytes(graph, with_high_layers(profile, layers, high_bits))

    low_bytes, high_bytes = cost(()), cost(candidates)
    limit = None
    if budget.kind == "weight_bytes":
        limit = int(budget.value * high_bytes / 100.0) if budget.percent else int(budget.value)
        if limit < low_bytes:
            raise MrqError(f"--budget {budget.text}: {limit} bytes is below the model with every "
                           f"layer at its lowest precision ({low_bytes} bytes of weights and "
                           f"biases under {profile.name!r}; all at {high_bits} bits: {high_bytes})")
    base_sqnr = measure(profile, "all low")
    sensitivity = []
    if budget.kind == "sqnr_db" and base_sqnr >= budget.value:
        candidates = []     # the all-low model meets the floor: nothing to buy
    for name in candidates:
        gain = measure(with_high_layers(profile, [name], high_bits), name) - base_sqnr
        sensitivity.append((name, formats.kinds[name], gain, cost([name]) - low_bytes))
    # gain per byte; a layer that costs nothing extra (already wide weights) goes first
    order = sorted(sensitivity, key=lambda s: -s[2] / max(s[3], 1))
    frontier = [FrontierPoint((), low_bytes, base_sqnr)]
    selected: list = []
    for name, _, _, _ in order:
        nbytes = cost(selected + [name])
        if limit is not None and nbytes > limit:
            continue     # too wide for the budget; a cheaper layer further down may still fit
        selected.append(name)
        point = FrontierPoint(tuple(selected), nbytes, measure(
            with_high_layers(profile, selected, high_bits), f"{len(selected)} layers"))
        frontier.append(point)
        if budget.kind == "sqnr_db" and point.sqnr_db >= budget.value:
            break
    if budget.kind == "weight_bytes":
        # the best measured point within the budget (prefixes are measured, not assumed monotone)
        chosen = max(range(len(frontier)), key=lambda j: frontier[j].sqnr_db)
    else:
        reach = [j for j, p in enumerate(frontier) if p.sqnr_db >= budget.value]
        if not reach:
            best = max(p.sqnr_db for p in frontier)
            raise MrqError(f"--budget {budget.text}: no choice of {high_bits}-bit layers reaches "
                           f"{budget.value:g} dB (the best measured, with "
                           f"{len(frontier[-1].high_layers)} layers at {high_bits} bits, is "
                           f"{best:.2f} dB on {n} calibration inputs)")
        chosen = reach[0]
    frontier[chosen].chosen = True
    chosen_profile = replace(with_high_layers(profile, frontier[chosen].high_layers, high_bits),
                             name=f"{profile.name}-mixed")
    return SearchResult(chosen_profile, budget, high_bits, limit, low_bytes, high_bytes,
                        sensitivity, frontier, n)


class _Measure:
    """End-to-end SQNR (dB, worst output) of the model re-quantized for a profile, against the
    input model, on a few calibration inputs."""

    def __init__(self, graph, calib: dict, progress):
        from mrq.float_ref import FloatReference
        self.graph, self.calib, self.progress = graph, calib, progress
        self.reference = FloatReference(graph, fake_quant=True).run(calib)

    def __call__(self, profile, what: str) -> float:
        from mrq.api import simulate
        from mrq.metrics import sqnr_db
        from mrq.passes.base import Options, feeds_for_new_graph
        from mrq.requant import requantize
        if self.progress is not None:
            self.progress(what)
        new, _ = requantize(self.graph, profile, self.calib,
                            Options(weight_correction=False, error_folding=False))
        sim = simulate(new, profile, feeds_for_new_graph(self.graph, new, self.calib), fidelity=False)
        worst = np.inf
        for name in new.outputs:
            qp = new.tensors[name].qparams
            got = qp.dequantize(sim.outputs[name]) if qp is not None else \
                np.asarray(sim.outputs[name], np.float64)
            worst = min(worst, float(sqnr_db(self.reference[name], got)))
        return worst
