"""The PNG: quality against compression ratio, one point per method (perplexity increase
on the left, needle accuracy on the right), coloured by family."""
import math
from pathlib import Path

FAMILY_STYLE = {
    "baseline": ("black", "*"),
    "quantization": ("tab:blue", "o"),
    "eviction": ("tab:orange", "s"),
    "composed": ("tab:green", "D"),
}


def plot_quality_vs_compression(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = [r for r in report["rows"] if not math.isinf(r["compression_ratio"])]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    panels = [("ppl_increase_pct", "perplexity increase over the uncompressed cache (%)"),
              ("needle_accuracy", "needle-in-a-haystack accuracy (%)")]
    for ax, (key, label) in zip(axes, panels):
        seen, labels = set(), []
        for r in rows:
            color, marker = FAMILY_STYLE.get(r["family"], ("gray", "x"))
            y = 100 * r[key] if key == "needle_accuracy" else r[key]
            ax.scatter(r["compression_ratio"], y, color=color, marker=marker, s=60, zorder=3,
                       label=r["family"] if r["family"] not in seen else None)
            seen.add(r["family"])
            labels.append((r["compression_ratio"], y, r["method"]))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_xlabel("compression ratio (uncompressed KV bytes / method's KV bytes)")
        ax.set_ylabel(label)
        ax.margins(x=0.12)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        if key == "needle_accuracy":
            ax.set_ylim(-5, 105)
        ax.autoscale_view()
        _place_labels(ax, fig, labels)
    title = (f"kvcore eval: {report['model']['name']} on {report['device']['type']}, "
             f"text: {report['text']['name']}")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _place_labels(ax, fig, labels, fontsize=7):
    """Annotates each (x, y, text) beside its point, moving a label up or down (nearest
    free slot first) where it would cover one already placed: at 1/8 of the bytes many
    methods share almost the same point."""
    to_pt = 72.0 / fig.dpi
    width, height = 0.62 * fontsize, 1.3 * fontsize  # points per character, per line
    placed = []
    for x, y, text in sorted(labels, key=lambda t: (-t[1], t[0])):
        px, py = (v * to_pt for v in ax.transData.transform((x, y)))
        w = width * len(text)
        for dy in [4 - 10 * (k // 2) * (1 if k % 2 else -1) for k in range(1, 40)]:
            box = (px + 5, py + dy, px + 5 + w, py + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, dy), fontsize=fontsize)
