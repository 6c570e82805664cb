"""The outputs of ``mrq sweep``: the results table (CSV always, Parquet when pyarrow is
installed), a text table for the terminal, and a self-contained HTML summary (a table and a
plot of agreement with its 95 % interval per cell), each carrying the provenance (mrq version,
command, date; model and profile hashes per row). Every file is written atomically."""
from __future__ import annotations

import base64
import csv
import html
import importlib.util
import io
import math
import os

from mrq.sweep import ROW_FIELDS, SweepResult

CSV_NAME = "results.csv"
PARQUET_NAME = "results.parquet"
HTML_NAME = "summary.html"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    return str(value)


def to_csv(result: SweepResult) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(ROW_FIELDS)
    for row in result.rows:
        writer.writerow([_cell(row.get(k)) for k in ROW_FIELDS])
    return buf.getvalue()


def parquet_available() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def write_parquet(result: SweepResult, path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mrq.fileio import atomic_path
    table = pa.Table.from_pylist([{k: row.get(k) for k in ROW_FIELDS} for row in result.rows])
    table = table.replace_schema_metadata({k: str(v) for k, v in result.provenance.items()})
    with atomic_path(path, ".parquet") as tmp:
        pq.write_table(table, tmp)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _db(x) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.2f}"


def format_table(result: SweepResult) -> str:
    head = (f"{'model':<22} {'profile':<16} {'method':<8} {'dataset':<12} {'accuracy':>9} "
            f"{'agreement [95% CI]':>26} {'out SQNR':>9} {'worst layer':>26} {'acc ovf':>8}")
    lines = [head, "-" * len(head)]
    for r in result.rows:
        name = f"{r['model'][:22]:<22} {r['profile'][:16]:<16} {r['method'][:8]:<8} {r['dataset'][:12]:<12}"
        if r["status"] != "ok":
            lines.append(f"{name} failed: {r['error']}")
            continue
        ci = (f"{_pct(r['agreement'])} [{_pct(r['agreement_ci_low'])}, {_pct(r['agreement_ci_high'])}]"
              if r["agreement"] is not None else "-")
        worst = f"{_db(r['worst_layer_sqnr_db'])} ({r['worst_layer'][:14]})" if r["worst_layer"] else "-"
        lines.append(f"{name} {_pct(r['accuracy']):>9} {ci:>26} {_db(r['output_sqnr_db']):>9} "
                     f"{worst:>26} {r['acc_overflows']:>8d}")
    return "\n".join(lines)


def plot_png(result: SweepResult) -> bytes | None:
    """Agreement with the input model per cell (95 % Wilson interval as error bars), one group
    of bars per model and method, one bar per profile; None without matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result.rows if r["status"] == "ok" and r["agreement"] is not None]
    groups = list(dict.fromkeys((r["model"], r["method"], r["dataset"]) for r in ok))
    profiles = list(dict.fromkeys(r["profile"] for r in ok))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(profiles)) ** 0.5 + 3), 4.5))
    width = 0.8 / max(1, len(profiles))
    for j, prof in enumerate(profiles):
        xs, ys, lo, hi = [], [], [], []
        for i, g in enumerate(groups):
            row = next((r for r in ok if (r["model"], r["method"], r["dataset"]) == g
                        and r["profile"] == prof), None)
            if row is None:
                continue
            xs.append(i + (j - (len(profiles) - 1) / 2) * width)
            ys.append(100 * row["agreement"])
            lo.append(100 * (row["agreement"] - row["agreement_ci_low"]))
            hi.append(100 * (row["agreement_ci_high"] - row["agreement"]))
        ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=3, label=prof)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{m}\n{meth} / {d}" for m, meth, d in groups], fontsize=8)
    ax.set_ylabel("top-1 agreement with the input model (%)")
    if ok:
        bottom = min(100 * r["agreement_ci_low"] for r in ok)
        ax.set_ylim(max(0.0, bottom - 5), 100.5)
    ax.grid(True, axis="y", alpha=0.3)
    if ok:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px} table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3} td.l,th.l{text-align:left} tr.bad td{background:#fdecea}
td.warn{color:#b00020;font-weight:600} .meta{color:#555;font-size:13px} img.plot{max-width:100%}
code{font-size:12px}
"""


def _e(x) -> str:
    return html.escape(str(x))


def render_html(result: SweepResult, png: bytes | None) -> str:
    p = result.provenance
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           f"<title>mrq sweep</title><style>{_CSS}</style></head><body><h1>mrq sweep</h1>",
           (f"<p class='meta'>mrq {_e(p['mrq_version'])}, {_e(p['date'])}; command: "
           f"<code>{_e(p['command'])}</code>; {len(result.rows)} cell(s), "
           f"{len(result.failed)} failed</p>"),
           ("<table><tr><th class='l'>model</th><th class='l'>profile</th><th class='l'>method</th>"
           "<th class='l'>dataset</th><th>samples</th><th>accuracy</th><th>input model accuracy</th>"
           "<th>agreement</th><th>95% CI</th><th>output SQNR (dB)</th><th class='l'>worst layer</th>"
           "<th>worst SQNR (dB)</th><th>acc overflows</th><th>bias saturations</th>"
           "<th>weight bytes</th><th>requant (s)</th><th class='l'>model sha256</th>"
           "<th class='l'>profile sha256</th></tr>")]
    for r in result.rows:
        name = (f"<td class='l'>{_e(r['model'])}</td><td class='l'>{_e(r['profile'])}</td>"
                f"<td class='l'>{_e(r['method'])}</td><td class='l'>{_e(r['dataset'])}</td>")
        if r["status"] != "ok":
            out.append(f"<tr class='bad'>{name}<td class='l' colspan='14'>failed: {_e(r['error'])}</td></tr>")
            continue
        ci = (f"{_pct(r['agreement_ci_low'])} – {_pct(r['agreement_ci_high'])}"
              if r["agreement"] is not None else "-")
        out.append(
            f"<tr>{name}<td>{r['n_samples']}</td><td>{_pct(r['accuracy'])}</td>"
            f"<td>{_pct(r['input_model_accuracy'])}</td><td>{_pct(r['agreement'])}</td><td>{ci}</td>"
            f"<td>{_db(r['output_sqnr_db'])}</td><td class='l'>{_e(r['worst_layer'])}</td>"
            f"<td>{_db(r['worst_layer_sqnr_db'])}</td>"
            f"<td class='{'warn' if r['acc_overflows'] else ''}'>{r['acc_overflows']}</td>"
            f"<td>{r['bias_saturations']}</td><td>{r['weight_bytes']}</td>"
            f"<td>{r['requant_seconds']:.2f}</td><td class='l'><code>{_e(r['model_sha256'][:16])}</code></td>"
            f"<td class='l'><code>{_e(r['profile_sha256'][:16])}</code></td></tr>")
    out.append("</table>")
    if png is not None:
        img = base64.b64encode(png).decode("ascii")
        out.append(f"<img class='plot' alt='agreement per cell' src='data:image/png;base64,{img}'>")
    else:
        out.append("<p class='meta'>No plot: matplotlib is not installed (pip install \"mrq-nna[report]\").</p>")
    out.append("<p class='meta'>Agreement: top-1 of the re-quantized model in the bit-exact simulator "
               "against the float reference of the input model; 95% Wilson score interval. Output and "
               "layer SQNR: against the same reference. Hashes: the model file and the profile with every "
               "default filled in.</p></body></html>")
    return "\n".join(out)


def write_outputs(result: SweepResult, out_dir: str) -> list:
    """The table(s) and the summary, each atomically; returns the paths written."""
    from mrq.fileio import save_text
    paths = [os.path.join(out_dir, CSV_NAME)]
    save_text(paths[0], to_csv(result))
    if parquet_available():
        paths.append(os.path.join(out_dir, PARQUET_NAME))
        write_parquet(result, paths[-1])
    paths.append(os.path.join(out_dir, HTML_NAME))
    save_text(paths[-1], render_html(result, plot_png(result)))
    return paths
