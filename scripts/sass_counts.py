#!/usr/bin/env python3
"""Summarises ncu source-page CSVs (SASS, per instruction): executed warp instructions by
opcode, and the hottest addresses, of a kernel and optionally against a baseline.

    python3 scripts/sass_counts.py BASE.csv [OTHER.csv] [--top 40]

The CSVs come from `ncu -i REPORT --page source --csv --print-source sass` (a report with
the SourceCounters section); scripts/ncu_sass_counts.sh makes them. Addresses match the
SASS of the same build (`cuobjdump -sass` of the object; `nvdisasm -g` adds source lines
where the build has -lineinfo, as kvcore's does).
"""
import argparse
import csv
import re
import sys


def read(path):
    """[(address, sass text, executed warp instructions)] of one CSV."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head_i = next((i for i, r in enumerate(rows) if any("Source" == c.strip() for c in r)), None)
    if head_i is None:
        sys.exit(f"{path}: no header with a 'Source' column (ncu's output: {rows[:3]})")
    head = [c.strip() for c in rows[head_i]]
    src = head.index("Source")
    addr = next((i for i, c in enumerate(head) if "Address" in c), None)
    execs = [i for i, c in enumerate(head) if "Instructions Executed" in c and "Thread" not in c
             and "Predicated" not in c]
    if not execs:
        sys.exit(f"{path}: no 'Instructions Executed' column in {head}")
    ex = execs[0]
    out = []
    for r in rows[head_i + 1:]:
        if len(r) <= max(src, ex):
            continue
        try:
            n = float(r[ex].replace(",", "") or 0)
        except ValueError:
            continue
        a = r[addr].strip() if addr is not None else str(len(out))
        out.append((a, r[src].strip(), n))
    return out


def opcode(sass):
    toks = sass.split()
    if not toks:
        return "?"
    op = toks[1] if toks[0].startswith("@") and len(toks) > 1 else toks[0]
    return re.split(r"[.]", op)[0]


def by_opcode(rows):
    d = {}
    for _, s, n in rows:
        d[opcode(s)] = d.get(opcode(s), 0) + n
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("other", nargs="?")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    base = read(args.base)
    other = read(args.other) if args.other else None
    b_tot = sum(n for *_, n in base)
    print(f"{args.base}: {b_tot:.0f} warp instructions executed, {len(base)} SASS lines")
    ob = by_opcode(base)
    if other is None:
        for op, n in sorted(ob.items(), key=lambda x: -x[1])[:args.top]:
            print(f"  {op:10s} {n:12.0f} {100 * n / b_tot:5.1f}%")
        return
    o_tot = sum(n for *_, n in other)
    print(f"{args.other}: {o_tot:.0f} ({100 * (o_tot / b_tot - 1):+.1f}%), {len(other)} SASS lines")
    oo = by_opcode(other)
    print("  opcode        base        other        diff")
    for op in sorted(set(ob) | set(oo), key=lambda k: -(oo.get(k, 0) - ob.get(k, 0))):
        dlt = oo.get(op, 0) - ob.get(op, 0)
        if abs(dlt) >= 0.002 * b_tot:
            print(f"  {op:10s} {ob.get(op, 0):11.0f} {oo.get(op, 0):11.0f} {dlt:+11.0f}")
    print(f"  hottest {args.top} lines of {args.other}:")
    for a, s, n in sorted(other, key=lambda x: -x[2])[:args.top]:
        print(f"  {a:>8s} {n:10.0f}  {s[:90]}")


if __name__ == "__main__":
    main()
