"""Print the tables of a pytest-benchmark JSON (bench/bench_models.py, bench/bench_kernels.py),
every ratio computed from figures of that one run:

    python bench/ratios.py BENCH.json [BENCH2.json ...] [--markdown]

Models: the simulator (1 thread) vs its peer (ORT for ONNX models, LiteRT default for TFLite),
the speed-up over LiteRT's reference kernels, and the 1 -> 2 thread speed-up. Kernels: GMAC/s
per engine and requantization arithmetic. Times are the minimum over the rounds.
"""
import json
import sys


def _load(paths):
    rows = []
    for path in paths:
        with open(path) as fh:
            rows.extend(json.load(fh)["benchmarks"])
    return rows


def _table(header, rows, markdown):
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        fmt = "  ".join("{:<%d}" % w for w in widths)
        lines = [fmt.format(*header)] + [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def model_table(rows, markdown=False):
    by = {}
    for b in rows:
        info = b.get("extra_info", {})
        if "model" not in info:
            continue
        key = (info["model"], info["batch"])
        engine = info["engine"] + ("_2t" if info.get("threads") == 2 else "")
        by.setdefault(key, {})[engine] = b["stats"]["min"]
    out = []
    for (model, batch), t in sorted(by.items()):
        mrq = t.get("mrq")
        peer_name = "ort" if "ort" in t else "litert"
        peer = t.get(peer_name)
        ms = lambda v: "-" if v is None else f"{v * 1e3:.2f}"  # noqa: E731
        ratio = f"{mrq / peer:.2f}x" if mrq and peer else "-"
        vs_ref = f"{t['litert_ref'] / mrq:.1f}x" if mrq and "litert_ref" in t else "-"
        scaling = f"{mrq / t['mrq_2t']:.2f}x" if mrq and "mrq_2t" in t else "-"
        comp = t.get("mrq_compiled")
        comp_ratio = f"{comp / peer:.2f}x" if comp and peer else "-"
        comp_ref = f"{t['litert_ref'] / comp:.1f}x" if comp and "litert_ref" in t else "-"
        out.append([model, str(batch), ms(mrq), f"{peer_name} {ms(peer)}", ratio,
                    ms(t.get("litert_ref")), vs_ref, ms(comp), comp_ratio, comp_ref,
                    ms(t.get("mrq_2t")), scaling])
    header = ["model", "batch", "mrq ms (1 thr)", "peer ms", "mrq/peer", "LiteRT REF ms",
              "REF/mrq", "compiled ms", "compiled/peer", "REF/compiled", "mrq ms (2 thr)",
              "1->2 thr"]
    return _table(header, out, markdown)


def kernel_table(rows, markdown=False):
    out = []
    for b in sorted(rows, key=lambda b: (b["group"], b["extra_info"].get("engine", ""),
                                         b["extra_info"].get("rq", ""))):
        info = b.get("extra_info", {})
        if "macs" not in info:
            continue
        gmacs = info["macs"] / b["stats"]["min"] / 1e9
        out.append([b["group"].replace("kernel ", ""), info.get("engine", "mrq"),
                    info.get("rq", ""), f"{b['stats']['min'] * 1e3:.2f}", f"{gmacs:.2f}"])
    return _table(["kernel", "engine", "requantization", "ms", "GMAC/s"], out, markdown)


def main(argv):
    markdown = "--markdown" in argv
    rows = _load([a for a in argv if not a.startswith("--")])
    if any("model" in b.get("extra_info", {}) for b in rows):
        print(model_table(rows, markdown))
        print()
    if any("macs" in b.get("extra_info", {}) for b in rows):
        print(kernel_table(rows, markdown))


if __name__ == "__main__":
    main(sys.argv[1:])
