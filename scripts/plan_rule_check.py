#!/usr/bin/env python3
"""Times the decode split plan's layout rule against session 28's planner (a profiling aid).

Needs kvcore_bench_decode built with -DKVCORE_DECODE_PLAN_KNOBS=ON. "new" is the built-in
plan; "old" sets KVCORE_PLAN_UNIFORM="0 0": no uniform layout by tokens a warp, and the
uniform layout's chunk counts rounded up only (plan_splits, decode_attention_cuda.cu).
Each configuration runs plain and with one outlier a side (grid: also values only), both
planners interleaved, two rounds, bf16, Hq=32 Hkv=8; it prints the minimum time of each
(us) and the speed of each outlier variant against plain under the same planner.

    python3 scripts/plan_rule_check.py BUILD/bench/kvcore_bench_decode grid,batch,dims [--json out.json]
        [--graded "13 10" ...] [--exp 1 2 ...] [--bits 2] [--max-length 32768]

--graded adds planners "g<a>_<b>": the built-in plan with KVCORE_PLAN_GRADED="a b" (the
uniform layout's first quarter of chunks a unit (100 + a)%, its last (100 - b)%); --uniform
adds "u<a>_<b>": KVCORE_PLAN_UNIFORM="a b" (the uniform layout up to a tokens a warp); --plan
adds "p<a>_<b>_...": KVCORE_PLAN="a b ..." (the big/small layout's eight constants); --exp adds
"x<n>": the built-in plan with KVCORE_EXP=n (kernel variants of the knobs build, exp_flags);
--tickets-from adds "t<n>": tickets from n tiles a warp (KVCORE_PLAN_TICKETS_FROM);
--static adds "static": KVCORE_DECODE_DYNAMIC_TILES=0 (the value-outlier kernels' static
ranges instead of tickets; any build, with --no-old outside knobs builds).

Groups: grid (B=8, D=128, 8K-128K), batch (B = 1, 4, 16, 32, 64), dims (B=8, D = 64, 256),
d256 (B = 1-32, D = 256, short lengths), d64 (B = 1, 4, 16, 32 at D = 64),
d64b8 (B=8 at D = 64), d256long (B = 1, 4, 8 at D = 256, long), b1 (B=1 at D = 128 and 256),
short (B = 1-2 at 8K-24K, D = 64-256).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plan_sweep import time_shapes  # noqa: E402

K = 1024
GROUPS = {
    "grid": [(8, 128, [8 * K, 12 * K, 16 * K, 20 * K, 24 * K, 32 * K, 48 * K, 64 * K, 128 * K], ((0, 0), (1, 1), (0, 1)))],
    "batch": [(1, 128, [16 * K, 32 * K, 64 * K, 128 * K, 256 * K], ((0, 0), (1, 1))),
              (4, 128, [8 * K, 16 * K, 32 * K, 64 * K], ((0, 0), (1, 1))),
              (16, 128, [4 * K, 8 * K, 12 * K, 16 * K, 24 * K], ((0, 0), (1, 1))),
              (32, 128, [2 * K, 4 * K, 8 * K, 12 * K], ((0, 0), (1, 1))),
              (64, 128, [1 * K, 2 * K, 4 * K, 6 * K], ((0, 0), (1, 1)))],
    # D = 256 where the uniform layout's chunks hold 384-512 tokens a warp (session 32)
    "d256": [(1, 256, [32 * K, 64 * K, 128 * K], ((0, 0), (1, 1))),
             (4, 256, [8 * K, 16 * K, 32 * K], ((0, 0), (1, 1))),
             (8, 256, [8 * K, 12 * K, 16 * K], ((0, 0), (1, 1))),
             (16, 256, [4 * K, 6 * K, 8 * K], ((0, 0), (1, 1))),
             (32, 256, [2 * K, 3 * K, 4 * K], ((0, 0), (1, 1)))],
    # short steps at small batch, where the outlier kernels' fixed costs show (session 34)
    "short": [(1, 256, [8 * K, 16 * K, 24 * K], ((0, 0), (1, 1))),
              (2, 256, [8 * K, 16 * K], ((0, 0), (1, 1))),
              (1, 128, [8 * K, 16 * K], ((0, 0), (1, 1))),
              (1, 64, [8 * K, 16 * K], ((0, 0), (1, 1)))],
    "b1": [(1, 128, [32 * K, 64 * K, 128 * K], ((0, 0), (1, 1))),
           (1, 256, [16 * K, 32 * K, 64 * K], ((0, 0), (1, 1)))],
    # plain 4 bits D = 256 from 16K at B=8 / 128K at B=1, where the big/small layout took
    # over and the one-a-side kernel with tickets ran 7-16% faster than plain (session 35)
    "d256long": [(1, 256, [64 * K, 128 * K, 256 * K], ((0, 0), (1, 1))),
                 (4, 256, [16 * K, 32 * K, 64 * K], ((0, 0), (1, 1))),
                 (8, 256, [16 * K, 24 * K, 32 * K, 64 * K], ((0, 0), (1, 1)))],
    "d64b8": [(8, 64, [8 * K, 16 * K, 32 * K, 64 * K, 128 * K], ((0, 0), (1, 1)))],
    "d64": [(1, 64, [16 * K, 32 * K, 64 * K, 128 * K], ((0, 0), (1, 1))),
            (4, 64, [8 * K, 16 * K, 32 * K, 64 * K], ((0, 0), (1, 1))),
            (16, 64, [4 * K, 8 * K, 16 * K, 24 * K], ((0, 0), (1, 1))),
            (32, 64, [2 * K, 4 * K, 8 * K, 12 * K], ((0, 0), (1, 1)))],
    "dims": [(8, 64, [8 * K, 16 * K, 32 * K, 64 * K, 128 * K], ((0, 0), (1, 1))),
             (8, 256, [8 * K, 16 * K, 24 * K, 32 * K, 64 * K], ((0, 0), (1, 1)))],
}


def planner_env(planner):
    """The knob variables of a planner: "new" (built-in), "old", "g<a>_<b>" (graded), "u<a>_<b>"
    (uniform rule), "p<a>_..._<h>" (plan constants) or "x<n>"; several joined by "+"
    ("u0_1+p90_85_32_24_5_72_8_0": the big/small layout with those constants)."""
    if "+" in planner:
        env = {}
        for part in planner.split("+"):
            env.update(planner_env(part))
        return env
    if planner == "old":
        return {"KVCORE_PLAN_UNIFORM": "0 0"}
    if planner.startswith("g"):
        return {"KVCORE_PLAN_GRADED": planner[1:].replace("_", " ")}
    if planner.startswith("p"):
        return {"KVCORE_PLAN": planner[1:].replace("_", " ")}
    if planner.startswith("u"):
        return {"KVCORE_PLAN_UNIFORM": planner[1:].replace("_", " ")}
    if planner.startswith("x"):
        return {"KVCORE_EXP": planner[1:]}
    if planner.startswith("t"):
        return {"KVCORE_PLAN_TICKETS_FROM": planner[1:]}
    if planner == "static":
        return {"KVCORE_DECODE_DYNAMIC_TILES": "0"}
    return {}


def run(bench, bits, outl, planner, B, D, lengths):
    """Times of one bench process (us by packed length) and the plans it printed."""
    env = dict(os.environ)
    for k in ("KVCORE_PLAN", "KVCORE_PLAN_UNIFORM", "KVCORE_PLAN_GRADED", "KVCORE_EXP", "KVCORE_DECODE_DYNAMIC_TILES",
              "KVCORE_PLAN_TICKETS_FROM"):
        env.pop(k, None)
    env.update(planner_env(planner))
    cmd = [bench, "--bits", str(bits), "--bf16", "--outliers", str(outl[0]), str(outl[1])]
    times, plans = time_shapes(cmd, env, B, D, lengths)
    return times, [l[6:] for l in plans]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench")
    ap.add_argument("groups", help="comma-separated: grid, batch, dims, d256")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--graded", nargs="*", default=[], help='extra planners, each "a b"')
    ap.add_argument("--uniform", nargs="*", default=[], help='extra planners, KVCORE_PLAN_UNIFORM="a b" each')
    ap.add_argument("--combo", nargs="*", default=[], help='extra planners given whole, e.g. "u0_1+p90_85_32_24_5_72_8_0"')
    ap.add_argument("--plan", nargs="*", default=[], help='extra planners, KVCORE_PLAN="a b c d e f g h" each')
    ap.add_argument("--exp", nargs="*", default=[], help="extra planners: the built-in plan with KVCORE_EXP=n")
    ap.add_argument("--tickets-from", nargs="*", default=[],
                    help="extra planners t<n>: tickets from n tiles a warp (KVCORE_PLAN_TICKETS_FROM, knobs build)")
    ap.add_argument("--static", action="store_true",
                    help='add planner "static": KVCORE_DECODE_DYNAMIC_TILES=0 (any build)')
    ap.add_argument("--no-old", action="store_true", help='drop planner "old" (needs a knobs build)')
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 4], choices=(2, 4))
    ap.add_argument("--max-length", type=int, default=None, help="drop the groups' longer lengths")
    args = ap.parse_args()
    planners = (["new"] + ([] if args.no_old else ["old"]) + ["g" + g.replace(" ", "_") for g in args.graded]
                + ["u" + u.replace(" ", "_") for u in args.uniform]
                + ["p" + p.replace(" ", "_") for p in args.plan]
                + args.combo
                + ["x" + x for x in args.exp] + ["t" + n for n in args.tickets_from]
                + (["static"] if args.static else []))
    results = []
    for group in args.groups.split(","):
        for B, D, lengths, outls in GROUPS[group]:
            lengths = [L for L in lengths if args.max_length is None or L <= args.max_length]
            for bits in args.bits:
                t = {}
                for r in range(args.rounds):
                    for outl in outls:
                        for planner in planners:
                            times, plans = run(args.bench, bits, outl, planner, B, D, lengths)
                            for L, v in times.items():
                                t.setdefault(f"{outl[0]}{outl[1]} {planner}", {}).setdefault(L, []).append(v)
                            if r == 0:
                                print(f"B{B} D{D} b{bits} {outl} {planner} |", "; ".join(plans), flush=True)
                mins = {k: {L: min(v) for L, v in d.items()} for k, d in t.items()}
                results.append({"B": B, "D": D, "bits": bits, "min_us": mins})
                print(f"== B{B} D{D} bits {bits}; L(K):", " ".join(f"{L // K:>6}" for L in lengths))
                for k, d in mins.items():
                    print(f"   {k:10s}", " ".join(f"{d[L]:6.1f}" for L in lengths))
                for o in outls[1:]:
                    for planner in planners:
                        ko, kp = f"{o[0]}{o[1]} {planner}", f"00 {planner}"
                        print(f"   ratio {ko:10s}", " ".join(f"{mins[kp][L] / mins[ko][L]:6.3f}" for L in lengths))
                        if planner[0] in "gxsup" or "+" in planner:  # outlier variants against the built-in plain plan
                            print(f"   vs 00 new {ko:10s}", " ".join(f"{mins['00 new'][L] / mins[ko][L]:6.3f}"
                                                              for L in lengths))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
