"""The terminal table and the JSON and CSV files of a run."""
import csv
import json
import math
from pathlib import Path

CSV_COLUMNS = ["method", "family", "provider", "compression_ratio", "bits_per_element", "kv_bytes", "peak_kv_bytes",
               "ppl", "ppl_increase_pct", "needle_accuracy", "needle_trials", "decode_tokens_per_s", "prefill_s",
               "peak_memory_bytes", "seconds"]


def _mib(n):
    return "-" if n is None else f"{n / 2**20:.2f}"


def format_table(report: dict) -> str:
    """The results as a fixed-width table, with the run's description and the bars."""
    s = report["settings"]
    dev = report["device"]
    lines = []
    lines.append(f"kvcore eval: {report['model']['name']} ({report['model']['dtype']}) on {dev['type']} "
                 f"({dev['name']}); text: {report['text']['name']}")
    lines.append(f"perplexity: {s['ppl_batch']} windows x ({s['context']} prefilled + {s['decode_tokens']} decoded "
                 f"and scored); needles: lengths {', '.join(map(str, s['needle_lengths']))} x depths "
                 f"{', '.join(f'{d:g}' for d in s['needle_depths'])} x {s['needles_per_depth']}; "
                 f"KV bytes after the perplexity run")
    peak_col = "peak MiB" if dev["type"] == "cuda" else "peakKV MiB"
    head = (f"{'method':28} {'family':12} {'ratio':>6} {'bits':>5} {'KV MiB':>8} {'ppl':>8} {'dppl%':>7} "
            f"{'needle':>7} {'tok/s':>7} {peak_col:>10}")
    lines += [head, "-" * len(head)]
    for r in report["rows"]:
        peak = r["peak_memory_bytes"] if dev["type"] == "cuda" else r["peak_kv_bytes"]
        ratio = "inf" if math.isinf(r["compression_ratio"]) else f"{r['compression_ratio']:.2f}"
        lines.append(f"{r['method']:28} {r['family']:12} {ratio:>6} {r['bits_per_element']:5.2f} "
                     f"{_mib(r['kv_bytes']):>8} {r['ppl']:8.3f} {r['ppl_increase_pct']:+7.2f} "
                     f"{100 * r['needle_accuracy']:6.1f}% {r['decode_tokens_per_s']:7.1f} {_mib(peak):>10}")
    if report.get("bars"):
        lines += ["", "bars:"]
        for b in report["bars"]:
            lines.append(f"  [{b['status']:^10}] {b['text']}")
            lines.append(f"               {b['detail']}")
    lines.append(f"\n{len(report['rows'])} methods in {report['runtime_s']:.0f} s")
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> Path:
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return path


def write_csv(report: dict, path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in report["rows"]:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    return path
