"""Render bench/results/*.json as the Markdown tables of bench/RESULTS.md.

    python scripts/results_table.py quantize bench/results/quantize_h200.json
    python scripts/results_table.py decode bench/results/decode_h200.json
"""
import json
import sys
from collections import defaultdict


def quantize_table(d):
    print(f"GPU {d['gpu']}, torch {d['torch']}, shape {d['shape']}, copy bandwidth {d['copy_gbs']:.0f} GB/s "
          f"(read+write), {d['date']}; cells: % of copy bandwidth (GB/s)\n")
    groups = defaultdict(dict)
    for r in d["rows"]:
        groups[(r["dtype"], r["op"], r["axis"])][(r["bits"], r["group"])] = r
    cols = sorted({k for g in groups.values() for k in g})
    print("| dtype | op | axis | " + " | ".join(f"{b}b g{g}" for b, g in cols) + " |")
    print("|" + "---|" * (3 + len(cols)))
    for (dt, op, ax), cells in groups.items():
        vals = " | ".join(f"{100 * cells[c]['ratio_to_copy']:.0f}% ({cells[c]['gbs']:.0f})" for c in cols)
        print(f"| {dt} | {op} | {ax} | {vals} |")


def decode_table(d):
    keys = [k for k in d["rows"][0] if k not in ("B", "Hq", "Hkv", "D", "L")]
    print(f"GPU {d.get('gpu')}, torch {d.get('torch')}, {d.get('date', '')}\n")
    print("| " + " | ".join(["B", "Hq", "Hkv", "D", "L"] + keys) + " |")
    print("|" + "---|" * (5 + len(keys)))
    for r in d["rows"]:
        cells = [str(r[k]) for k in ("B", "Hq", "Hkv", "D", "L")]
        cells += [f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    data = json.load(open(path))
    (quantize_table if kind == "quantize" else decode_table)(data)
