"""Print the ratios of a pytest-benchmark JSON measured in one run: mrq / ORT time per model
group, and GMAC/s per kernel benchmark.  python bench/ratios.py BENCH.json"""
import json
import sys


def main(path):
    data = json.load(open(path))
    groups = {}
    for b in data["benchmarks"]:
        groups.setdefault(b["group"], {})[b["name"]] = b
    for group, rows in sorted(groups.items()):
        if group.startswith("kernel"):
            for name, b in sorted(rows.items()):
                gmacs = b["extra_info"]["macs"] / b["stats"]["min"] / 1e9
                print(f"{name:<45} {b['stats']['min'] * 1e3:9.2f} ms  {gmacs:7.2f} GMAC/s")
            continue
        mrq = next((b for n, b in rows.items() if "mrq" in n), None)
        ort = next((b for n, b in rows.items() if "ort" in n), None)
        if mrq and ort:
            print(f"{group:<45} mrq {mrq['stats']['min'] * 1e3:8.2f} ms  ORT {ort['stats']['min'] * 1e3:8.2f} ms  "
                  f"ratio {mrq['stats']['min'] / ort['stats']['min']:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1])
