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
        seen, placed = set(), {}
        for r in rows:
            color, marker = FAMILY_STYLE.get(r["family"], ("gray", "x"))
            y = 100 * r[key] if key == "needle_accuracy" else r[key]
            ax.scatter(r["compression_ratio"], y, color=color, marker=marker, s=60, zorder=3,
                       label=r["family"] if r["family"] not in seen else None)
            seen.add(r["family"])
            spot = (round(r["compression_ratio"], 1), round(y, 0))
            k = placed[spot] = placed.get(spot, -1) + 1   # points on top of each other: labels stacked
            ax.annotate(r["method"], (r["compression_ratio"], y), textcoords="offset points",
                        xytext=(5, 4 - 10 * k), fontsize=7)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_xlabel("compression ratio (uncompressed KV bytes / method's KV bytes)")
        ax.set_ylabel(label)
        ax.margins(x=0.12)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_ylim(-5, 105)
    title = (f"kvcore eval: {report['model']['name']} on {report['device']['type']}, "
             f"text: {report['text']['name']}")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
