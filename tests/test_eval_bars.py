"""The issue's bars, judged on made-up result rows."""
from kvcore.evaluate.bars import check_bars


def row(name, family, ppl_pct, needle=0.0, ratio=1.0, quant_bits=None, provider="kvcore"):
    return dict(method=name, family=family, provider=provider, ppl=10 * (1 + ppl_pct / 100), ppl_increase_pct=ppl_pct,
                needle_accuracy=needle, compression_ratio=ratio, bits_per_element=16 / ratio, quant_bits=quant_bits)


def good_rows():
    return [
        row("none", "baseline", 0.0, 1.0),
        row("kivi-4", "quantization", 0.8, 1.0, 3.6, 4),
        row("kivi-2", "quantization", 10.0, 0.8, 6.4, 2),
        row("gear-2", "quantization", 4.0, 1.0, 4.7, 2),       # 3.4 bits: within the 3.5-bit cap
        row("kvquant-2", "quantization", 1.0, 1.0, 4.0, 2),    # 4 bits: over the cap, ignored
        row("streaming", "eviction", 30.0, 0.2, 8.0),
        row("snapkv", "eviction", 6.0, 0.6, 8.0),
        row("l2norm", "eviction", 9.0, 0.9, 8.0),              # over +5%: not a candidate
        row("h2o", "eviction", 4.5, 0.7, 7.9),
        row("snapkv+kivi-4", "composed", 3.0, 0.95, 8.1, 4),
    ]


def status(rows):
    return {b.key: b.status for b in check_bars(rows)}


def test_all_bars_pass():
    assert status(good_rows()) == dict(kivi4="pass", two_bit="pass", eviction="pass", composed="pass")


def test_bars_fail():
    rows = good_rows()
    rows[1] = row("kivi-4", "quantization", 1.2, 1.0, 3.6, 4)
    rows[3] = row("gear-2", "quantization", 5.1, 1.0, 4.7, 2)
    rows[8] = row("h2o", "eviction", 4.5, 0.6, 7.9)           # ties snapkv: not better
    rows[9] = row("snapkv+kivi-4", "composed", 5.0, 0.95, 8.1, 4)   # h2o has the lower perplexity (+4.5%)
    s = status(rows)
    assert s["kivi4"] == "fail" and s["two_bit"] == "fail" and s["eviction"] == "fail"
    assert s["composed"] == "fail"
    rows[9] = row("snapkv+kivi-4", "composed", 3.0, 0.9, 8.1, 4)    # ties l2norm's needle accuracy
    assert status(rows)["composed"] == "fail"


def test_composed_must_win_on_both():
    rows = good_rows()
    rows[9] = row("snapkv+kivi-4", "composed", 4.6, 0.95, 8.1, 4)   # needle better, ppl worse than h2o's
    assert status(rows)["composed"] == "fail"
    rows.append(row("h2o+kivi-4", "composed", 4.0, 0.95, 8.0, 4))  # another composed preset wins
    assert status(rows)["composed"] == "pass"
    rows = [r for r in good_rows() if r["family"] != "eviction" or r["method"] == "snapkv"]
    rows[-1] = row("snapkv+kivi-4", "composed", 3.0, 1.0, 8.1, 4)
    rows[-2] = row("snapkv", "eviction", 6.0, 1.0, 8.0)                 # both at 100%: a tie at the top counts
    assert status(rows)["composed"] == "pass"


def test_budget_off_target_is_not_at_an_eighth():
    rows = good_rows()
    rows[9] = row("snapkv+kivi-4", "composed", 3.0, 0.8, 5.0, 4)     # 5x: holds more than 1/8 of the bytes
    assert status(rows)["composed"] == "not judged"


def test_missing_rows_are_not_judged():
    rows = [r for r in good_rows() if r["method"] not in ("kivi-4", "snapkv")]
    s = status(rows)
    assert s["kivi4"] == "not judged" and s["eviction"] == "not judged"
