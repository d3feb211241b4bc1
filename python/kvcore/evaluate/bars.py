"""The quality bars of issue 7, checked on a run's result rows.

Each bar names the presets it compares in :data:`NAMES` and its thresholds in
:data:`LIMITS`, so a renamed preset or a moved threshold is a one-line change. A bar is
``pass``, ``fail``, or ``not judged`` (a method it needs was not run).

Eviction and composed methods are compared "at 1/8 of the cache's bytes": a method counts
as at that budget when its measured compression ratio is at least
``LIMITS["ratio_tolerance"]`` times the target ratio (8x).
"""
from dataclasses import dataclass

from .methods import BASELINE, TARGET_BYTES_FRACTION

NAMES = dict(kivi4="kivi-4", kivi2="kivi-2", streaming="streaming", snapkv="snapkv")
LIMITS = dict(
    kivi4_ppl_increase_pct=1.0,       # kivi-4 within +1% perplexity
    two_bit_max_bits=3.5,             # the "best 2-bit preset" holds <= 3.5 bits per element all-in
    two_bit_increase_fraction=0.5,    # ... and at most half of plain KIVI 2-bit's increase
    eviction_ppl_increase_pct=5.0,    # best eviction preset: <= 5% perplexity increase
    ratio_tolerance=0.9,              # "at 1/8 of the bytes" means a measured ratio >= 0.9 * 8
)


@dataclass
class BarOutcome:
    key: str
    text: str
    status: str    # "pass" | "fail" | "not judged"
    detail: str


def _at_budget(row) -> bool:
    return row["compression_ratio"] >= LIMITS["ratio_tolerance"] / TARGET_BYTES_FRACTION


def _best_by_needle(rows):
    """Highest needle accuracy, then lowest perplexity."""
    return max(rows, key=lambda r: (r["needle_accuracy"], -r["ppl"])) if rows else None


def _fmt(r) -> str:
    return (f"{r['method']} (ppl {r['ppl_increase_pct']:+.2f}%, needle {100 * r['needle_accuracy']:.0f}%, "
            f"{r['compression_ratio']:.2f}x, {r['bits_per_element']:.2f} bits)")


def _kivi4(by):
    r = by.get(NAMES["kivi4"])
    if r is None:
        return "not judged", f"{NAMES['kivi4']} was not run"
    ok = r["ppl_increase_pct"] <= LIMITS["kivi4_ppl_increase_pct"]
    return ("pass" if ok else "fail"), _fmt(r)


def _two_bit(by):
    plain = by.get(NAMES["kivi2"])
    if plain is None:
        return "not judged", f"{NAMES['kivi2']} was not run"
    # "all-in" bits of a packed element (codes, metadata, outliers, low-rank factors); the
    # full-precision residual window is a fixed number of tokens, not a per-element cost
    cands = [r for r in by.values() if r["family"] == "quantization" and r["method"] != NAMES["kivi2"]
             and r.get("quant_bits") == 2
             and (r.get("packed_bits_per_element") or r["bits_per_element"]) <= LIMITS["two_bit_max_bits"]]
    if not cands:
        return "not judged", f"no other 2-bit preset within {LIMITS['two_bit_max_bits']} bits per element was run"
    best = min(cands, key=lambda r: r["ppl"])
    limit = LIMITS["two_bit_increase_fraction"] * plain["ppl_increase_pct"]
    ok = best["ppl_increase_pct"] <= limit
    return ("pass" if ok else "fail"), f"best {_fmt(best)} vs {_fmt(plain)}: limit {limit:+.2f}%"


def _eviction(by):
    refs = [by.get(NAMES["streaming"]), by.get(NAMES["snapkv"])]
    if None in refs:
        return "not judged", f"{NAMES['streaming']} and {NAMES['snapkv']} must both be run"
    if not all(_at_budget(r) for r in refs):
        return "fail", "the references are not at 1/8 of the bytes: " + "; ".join(map(_fmt, refs))
    cands = [r for r in by.values() if r["family"] == "eviction" and r["method"] not in (NAMES["streaming"], NAMES["snapkv"])
             and _at_budget(r) and r["ppl_increase_pct"] <= LIMITS["eviction_ppl_increase_pct"]]
    best = _best_by_needle(cands)
    if best is None:
        return "fail", (f"no other eviction preset at 1/8 of the bytes within "
                        f"+{LIMITS['eviction_ppl_increase_pct']}% perplexity")
    ok = all(best["needle_accuracy"] > r["needle_accuracy"] for r in refs)
    return ("pass" if ok else "fail"), f"best {_fmt(best)} vs " + ", ".join(map(_fmt, refs))


def _composed(by):
    evicts = [r for r in by.values() if r["family"] == "eviction" and _at_budget(r)]
    comps = [r for r in by.values() if r["family"] == "composed" and _at_budget(r)]
    if not evicts or not comps:
        return "not judged", "needs at least one eviction and one composed preset at 1/8 of the bytes"
    # "the best eviction preset" in each metric: the lowest perplexity and the highest needle accuracy
    best_ppl = min(evicts, key=lambda r: r["ppl"])
    best_needle = _best_by_needle(evicts)

    def wins(c):
        needle_ok = (c["needle_accuracy"] > best_needle["needle_accuracy"]
                     or c["needle_accuracy"] == best_needle["needle_accuracy"] == 1.0)
        return needle_ok and c["ppl"] < best_ppl["ppl"]

    winners = [c for c in comps if wins(c)]
    comp = _best_by_needle(winners or comps)
    refs = _fmt(best_ppl) + ("" if best_ppl is best_needle else " and " + _fmt(best_needle))
    return ("pass" if winners else "fail"), f"best composed {_fmt(comp)} vs best eviction {refs}"


BARS = [
    ("kivi4", f"{NAMES['kivi4']} within +{LIMITS['kivi4_ppl_increase_pct']:g}% perplexity of the uncompressed cache", _kivi4),
    ("two_bit", f"best 2-bit preset (<= {LIMITS['two_bit_max_bits']} bits all-in) has at most "
                f"{LIMITS['two_bit_increase_fraction']:g}x the perplexity increase of {NAMES['kivi2']}", _two_bit),
    ("eviction", f"at 1/8 of the bytes, the best eviction preset beats {NAMES['streaming']} and {NAMES['snapkv']} in "
                 f"needle accuracy with <= +{LIMITS['eviction_ppl_increase_pct']:g}% perplexity", _eviction),
    ("composed", "at 1/8 of the bytes, the best composed preset beats the best eviction preset in perplexity "
                 "and in needle accuracy (lower perplexity than every eviction preset, higher accuracy than "
                 "every one, or 100% when one reaches 100%)", _composed),
]


def check_bars(rows: list) -> list:
    """One :class:`BarOutcome` per bar."""
    by = {r["method"]: r for r in rows if r["method"] != BASELINE}
    return [BarOutcome(k, text, *fn(by)) for k, text, fn in BARS]
