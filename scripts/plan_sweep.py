#!/usr/bin/env python3
"""Sweeps the decode split plan's constants on a GPU (a profiling aid, not a test).

Needs kvcore_bench_decode built with -DKVCORE_DECODE_PLAN_KNOBS=ON, which makes
plan_splits read its constants from $KVCORE_PLAN:
    "big_fp_last big_fp_first small_kb tiny_kb tiny_pct big_kb_min max_waves fp_counts"
(defaults "90 85 16 12 5 48 8 0"; the value-outlier kernel with its sums in L2
"80 75 32 16 10 48 8 0", or "85 75 32 16 10 48 8 0" for one outlier a side at 2 bits
and D = 128; the 4-bit D = 128 one with its sums in shared memory "90 85 32 24 5 72 8 0";
see plan_splits in decode_attention_cuda.cu; $KVCORE_PLAN overrides all). Since session 29
the uniform layout takes every length whose equal chunks hold few tokens a warp, whatever
the big/small knobs; set KVCORE_PLAN_UNIFORM="0 1" to sweep those lengths' big/small plans.
Group "rule" instead compares, over batch sizes and short lengths, the uniform layout's
wave count with and without the full-precision CTAs counted (fp_counts 1 / 0).
For each grid point it times the decode step (--bits, --bf16) with the swept outliers a
token (--outliers, default one a side; B=8 Hq=32 Hkv=8 D=128, group 64, L2 flushed) and
prints the time and the ratio to the plain kernel under the default plan, which is
re-timed every few points (drift check). "built-in" marks the plan the library chooses.

    python3 scripts/plan_sweep.py --bench BUILD/bench/kvcore_bench_decode [--json out.json]
"""
import argparse
import itertools
import json
import os
import re
import subprocess
import sys

ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d)\s+([\d.]+)")


BITS = 2      # --bits
BF16 = False  # --bf16


def time_shapes(cmd, env, batch, D, lengths):
    """Runs the bench command `cmd` over (batch, 32, 8, D, L + 64) for each L (+ the residual
    window) with `env` plus KVCORE_PLAN_PRINT; returns (us by L, the plans it printed)."""
    cmd = list(cmd)
    for L in lengths:
        cmd += ["--shape", str(batch), "32", "8", str(D), str(L + 64)]
    p = subprocess.run(cmd, env=dict(env, KVCORE_PLAN_PRINT="1"), capture_output=True, text=True, check=True)
    times = {}
    for line in p.stdout.splitlines():
        m = ROW.match(line)
        if m:
            times[int(m.group(5)) - 64] = float(m.group(7))
    return times, [l for l in p.stderr.splitlines() if l.startswith("plan:")]


def run(bench, lengths, outliers, knobs, batch=8):
    env = dict(os.environ)
    if knobs is not None:
        env["KVCORE_PLAN"] = " ".join(map(str, knobs))
    cmd = [bench, "--bits", str(BITS), "--outliers", str(outliers[0]), str(outliers[1])] + (["--bf16"] if BF16 else [])
    return time_shapes(cmd, env, batch, 128, lengths)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", required=True)
    ap.add_argument("--json")
    ap.add_argument("--repeats", type=int, default=2, help="re-runs of the best points")
    ap.add_argument("--groups", nargs="+", default=["long", "short"], help="long, mid, short, rule")
    ap.add_argument("--knobs", nargs="+", default=["90 85 16 12 5 48 8 0"], help="group rule: the plans to compare")
    ap.add_argument("--bits", type=int, default=2, choices=(2, 4))
    ap.add_argument("--bf16", action="store_true", help="a bf16 cache (default fp16)")
    ap.add_argument("--outliers", type=int, nargs=2, default=(1, 1), help="KC VC swept (default: one a side)")
    ap.add_argument("--long-grid", choices=("s18", "wide"), default="s18",
                    help="wide: big share 70-90, small 16-48 KB, tiny 8-24 KB (big_fp_first fixed at 85: the long "
                         "lengths never put the full-precision CTAs first)")
    args = ap.parse_args()
    global BITS, BF16
    BITS, BF16 = args.bits, args.bf16
    swept = tuple(args.outliers)
    results = []

    def point(group, lengths, outliers, knobs, plain):
        times, plans = run(args.bench, lengths, outliers, knobs)
        r = {"group": group, "outliers": outliers, "knobs": knobs or "built-in", "times": times,
             "ratio": {L: plain[L] / t for L, t in times.items()}, "plans": plans}
        results.append(r)
        print(group, outliers, r["knobs"], " ".join(f"{L}:{t:.1f}us {r['ratio'][L]:.3f}x" for L, t in times.items()),
              "|", "; ".join(p[6:] for p in plans), flush=True)
        return r

    grids = {
        # the one-wave-of-big-CTAs layout (32K, 128K)
        "long": ([16384, 32768, 65536, 131072],
                 [(b, f, s, t, p, 48, 8) for b, f, s, t, p in
                  itertools.product((60, 65, 70, 75, 80), (75, 85), (24, 32, 48), (12, 16, 24), (5, 10))]
                 if args.long_grid == "s18" else
                 [(b, 85, s, t, p, 48, 8) for b, s, t, p in
                  itertools.product((70, 75, 80, 85, 90), (16, 24, 32, 48), (8, 12, 16, 24), (5, 10)) if t < s]),
        # 12K-24K, where the full-precision CTAs go first or last depending on big_kb_min
        # (session 28: the built-in plans lost 4-7% at 16K and 20K; 4 bits at 12K is still
        # below the bar)
        "mid": ([12288, 16384, 20480, 24576],
                [(b, f, s, t, p, m, 8) for b, f, s, t, p, m in
                 itertools.product((85, 90), (70, 75, 80), (32, 48), (16, 24), (5, 10), (48, 72))]),
        # 8K: the uniform layout (max_waves) and the big layout allowed down to 8 KB a warp
        "short": ([8192], [(90, 85, 16, 12, 5, 48, w) for w in range(1, 9)] +
                  [(b, b, s, t, p, 8, 8) for b, s, t, p in
                   itertools.product((80, 85, 90), (6, 8, 12), (4, 6), (0, 5, 10))]),
    }
    if "rule" in args.groups:
        lengths = [1024, 2048, 4096, 8192, 16384]
        for rep in range(args.repeats):
            for batch in (1, 4, 8, 32):
                for outl in ((0, 0), (1, 1)):
                    base, plans = run(args.bench, lengths, outl, None, batch)
                    print("rule", batch, outl, "default", base, "|", "; ".join(p[6:] for p in plans), flush=True)
                    for k in args.knobs:
                        knobs = tuple(int(x) for x in k.split())
                        t, plans = run(args.bench, lengths, outl, knobs, batch)
                        results.append({"group": "rule", "batch": batch, "outliers": outl, "knobs": knobs, "times": t,
                                        "base": base, "plans": plans})
                        print("rule", batch, outl, knobs, " ".join(f"{L}:{t[L]:.1f}us {base[L] / t[L]:.3f}x" for L in t),
                              "|", "; ".join(p[6:] for p in plans), flush=True)
    for group in args.groups:
        if group == "rule":
            continue
        lengths, knob_list = grids[group]
        plain, _ = run(args.bench, lengths, (0, 0), None)
        print(group, "plain (default plan)", plain, flush=True)
        point(group, lengths, swept, None, plain)
        for i, knobs in enumerate(knob_list):
            if i and i % 16 == 0:
                plain2, _ = run(args.bench, lengths, (0, 0), None)
                print(group, "plain again", plain2, flush=True)
                plain = {L: min(plain[L], plain2[L]) for L in lengths}
            point(group, lengths, swept, knobs, plain)
        mine = [r for r in results if r["group"] == group and r["outliers"] == swept]
        best = sorted(mine, key=lambda r: -sum(r["ratio"].values()))[:5]
        candidates = [None] + [r["knobs"] for r in best if r["knobs"] != "built-in"]
        print(group, "re-runs of the default and the best points", flush=True)
        for _ in range(args.repeats):
            plain, _ = run(args.bench, lengths, (0, 0), None)
            for knobs in candidates:
                for outl in dict.fromkeys((swept, (1, 1), (0, 1), (2, 2))):
                    point(group + "-rerun", lengths, outl, knobs, plain)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
