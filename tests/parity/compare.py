"""Shared helpers for the ORT parity test and bench/ort_parity_count.py: call mrq (in-process API
or CLI), compare with ORT, describe mismatches, and take an inventory of ORT's optimized graph."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from mrq.hw_profile import onnxruntime_profile_for_host

REPO = Path(__file__).resolve().parents[2]
PROFILE = onnxruntime_profile_for_host()   # ORT's kernels on this host class


def api_available() -> bool:
    return (REPO / "mrq" / "api.py").exists()


def cli_available() -> bool:
    return shutil.which("mrq") is not None or any(
        (REPO / "mrq" / f).exists() for f in ("__main__.py", "cli.py"))


def simulate_api(model_path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from mrq.api import simulate_model

    return simulate_model(str(model_path), PROFILE, feeds)


def mrq_cli_argv() -> list[str]:
    exe = shutil.which("mrq")
    if exe:
        return [exe]
    if (REPO / "mrq" / "__main__.py").exists():
        return [sys.executable, "-m", "mrq"]
    return [sys.executable, "-m", "mrq.cli"]  # the console script's target, not installed


def simulate_cli(model_path, feeds: dict[str, np.ndarray], workdir=None,
                 in_process=False) -> dict[str, np.ndarray]:
    """`mrq sim MODEL --profile PROFILE --inputs IN.npz --out OUT.npz` in a subprocess, or
    through ``mrq.cli.main`` in this process (``in_process``: the same command line and files,
    without the 2 s of interpreter start and imports)."""
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        inp, out = Path(d) / "in.npz", Path(d) / "out.npz"
        np.savez(inp, **feeds)
        args = ["sim", str(model_path), "--profile", PROFILE, "--inputs", str(inp), "--out", str(out)]
        if in_process:
            from cli_in_process import mrq_in_process  # tests/ is on pytest's path

            p = mrq_in_process(*args)
            argv = ["mrq (in-process)"] + args
        else:
            argv = mrq_cli_argv() + args
            p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} -> exit {p.returncode}\n{p.stderr[-3000:]}")
        with np.load(out) as z:
            return {k: z[k] for k in z.files}


@dataclass
class OutputDiff:
    name: str
    n_elements: int
    n_mismatch: int  # value mismatches (or all elements if dtype/shape differ)
    problem: str = ""  # dtype/shape/missing problem, if any
    n_bit_mismatch: int = 0  # bit-pattern mismatches (e.g. -0.0 vs +0.0) beyond value mismatches
    examples: list = field(default_factory=list)  # (index, ort, mrq)


def diff_outputs(ort_out: dict, mrq_out: dict, n_examples: int = 8) -> list[OutputDiff]:
    diffs = []
    for name, a in ort_out.items():
        if isinstance(a, list):   # ZipMap: ORT's list of {label: value}; mrq's [N, labels] array
            a = np.asarray([list(d.values()) for d in a], np.float32)
        if name not in mrq_out:
            diffs.append(OutputDiff(name, a.size, a.size, "missing in mrq output"))
            continue
        b = np.asarray(mrq_out[name])
        if b.dtype != a.dtype or b.shape != a.shape:
            diffs.append(OutputDiff(name, a.size, a.size,
                                    f"ORT {a.dtype}{list(a.shape)} vs mrq {b.dtype}{list(b.shape)}"))
            continue
        neq = a != b
        if a.dtype.kind == "f":
            neq &= ~(np.isnan(a) & np.isnan(b))
            bits = a.view(f"u{a.itemsize}") != b.view(f"u{b.itemsize}")
            n_bits = int((bits & ~neq).sum())
        else:
            n_bits = 0
        idx = np.argwhere(neq)[:n_examples]
        ex = [(tuple(int(v) for v in i), a[tuple(i)].item(), b[tuple(i)].item()) for i in idx]
        diffs.append(OutputDiff(name, a.size, int(neq.sum()), "", n_bits, ex))
    extra = set(mrq_out) - set(ort_out)
    for name in sorted(extra):
        diffs.append(OutputDiff(name, 0, 0, "extra output in mrq"))
    return diffs


def op_key(n: onnx.NodeProto) -> str:
    return (f"{n.domain}:" if n.domain not in ("", "ai.onnx") else "") + n.op_type


def float_op_contexts(model: onnx.ModelProto) -> Counter:
    """For every op in an optimized graph that computes on float tensors (everything that is not
    Q/DQ, not an integer kernel, and not layout-only), 'Producer->Op->Consumer' strings."""
    integer_or_layout = {
        "QuantizeLinear", "DequantizeLinear", "Transpose", "Reshape", "Flatten", "MaxPool",
        "Concat", "Squeeze", "Unsqueeze", "Identity",
    }
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    inits = {i.name for i in g.initializer}
    outs = {o.name for o in g.output}
    c = Counter()
    for n in g.node:
        k = op_key(n)
        if k in integer_or_layout or k.startswith("com.microsoft:Q") or k.startswith("QLinear") \
                or k == "com.microsoft:NhwcMaxPool":
            # MaxPool/Transpose/Reshape/Flatten can run on float too (e.g. on the graph input)
            if k in ("MaxPool", "Transpose", "Reshape", "Flatten"):
                src = prod.get(n.input[0])
                if src is None and n.input[0] not in inits:
                    c[f"INPUT->{k}(float)"] += 1
                elif src is not None and src.op_type == "DequantizeLinear":
                    c[f"DQ->{k}(float)"] += 1
            continue
        p = "+".join(sorted({prod[i].op_type if i in prod else ("init" if i in inits else "INPUT")
                             for i in n.input if i and i not in inits}))
        q = "+".join(sorted({x.op_type for x in cons.get(n.output[0], [])}
                            | ({"OUTPUT"} if n.output[0] in outs else set())))
        c[f"{p}->{k}->{q}"] += 1
    return c


def describe_model(model_path, opt_model: onnx.ModelProto | None = None) -> str:
    """Short text: ORT's optimized node list (for failure reports)."""
    if opt_model is None:
        from .ort_runner import optimized_graph

        with tempfile.TemporaryDirectory() as d:
            opt_model = optimized_graph(model_path, Path(d) / "opt.onnx")
    lines = []
    for n in opt_model.graph.node:
        lines.append(f"  {op_key(n)}({', '.join(n.input)}) -> {', '.join(n.output)}")
    return "\n".join(lines)
