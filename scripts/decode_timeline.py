"""Summarises the CTA timeline written by `kvcore_bench_decode --timeline FILE` (kernels
built with -DKVCORE_DECODE_TIMELINE=ON): where the time of one decode step goes.

    python scripts/decode_timeline.py FILE

Per case: the split kernel's span, the gap to the merge kernel and its span; the split
CTAs' median prologue (start -> query table built), stage loop and epilogue (loop end ->
partial written); how many CTAs were resident over time; the tail, the time from
when residency fell below 90% of its peak to the last CTA's end; and when the first
wave's packed CTAs ended by their launch rank on their SM.
"""
import statistics
import sys


def read_cases(path):
    cases, cur = [], None
    for line in open(path):
        if line.startswith("#"):
            f = line[1:].split()
            cur = {"meta": dict(zip(f[0::2], f[1::2])), "rows": []}
            cases.append(cur)
        elif line.strip():
            v = [int(x) for x in line.split()]
            cur["rows"].append(v)
    return cases


def summarise(case):
    meta = case["meta"]
    nm = int(meta["merge_records"])
    merge = [r for r in case["rows"] if r[0] < nm]
    split = [r for r in case["rows"] if r[0] >= nm]
    t0 = min(r[1] for r in split)
    us = lambda ns: ns / 1000.0
    packed = [r for r in split if r[2] != 0]  # stamped their query table
    fp = [r for r in split if r[2] == 0]
    end_split = max(r[7] for r in split)
    out = [f"B={meta['B']} Hq={meta['Hq']} Hkv={meta['Hkv']} D={meta['D']} L={meta['L']} bits={meta['bits']}: "
           f"timed {meta['time_us']} us"]
    out.append(f"  split kernel: {len(packed)} packed + {len(fp)} fp CTAs, "
               f"span {us(end_split - t0):.1f} us (first start -> last end)")
    if merge:
        m0, m1 = min(r[1] for r in merge), max(r[7] for r in merge)
        out.append(f"  merge kernel: gap {us(m0 - end_split):.1f} us, span {us(m1 - m0):.1f} us; "
                   f"step {us(m1 - t0):.1f} us")
    pro = [us(r[2] - r[1]) for r in packed]
    loop = [us(max(r[3:7]) - r[2]) for r in packed]
    skew = [us(max(r[3:7]) - min(r[3:7])) for r in packed]
    epi = [us(r[7] - max(r[3:7])) for r in packed]
    tot = [us(r[7] - r[1]) for r in packed]
    med = statistics.median
    out.append(f"  packed CTA medians: total {med(tot):.2f} us = prologue {med(pro):.2f} + loop {med(loop):.2f} "
               f"+ epilogue {med(epi):.2f}; warp end skew {med(skew):.2f} (max {max(skew):.2f})")
    if fp:
        out.append(f"  fp CTAs: median {med([us(r[7] - r[1]) for r in fp]):.2f} us, "
                   f"start {us(min(r[1] for r in fp) - t0):.1f}..{us(max(r[1] for r in fp) - t0):.1f} us")
    starts = sorted(us(r[1] - t0) for r in split)
    out.append(f"  CTA starts: first wave {sum(1 for s in starts if s < 1.0)} in 1 us; last start at {starts[-1]:.1f} us")
    # residency over time in 0.5 us bins
    span = us(end_split - t0)
    nb = int(span / 0.5) + 1
    active = [0] * nb
    for r in split:
        a, b = int(us(r[1] - t0) / 0.5), int(us(r[7] - t0) / 0.5)
        for k in range(a, min(b + 1, nb)):
            active[k] += 1
    peak = max(active)
    below = next((k for k in range(nb - 1, -1, -1) if active[k] >= 0.9 * peak), 0)
    out.append(f"  resident CTAs: peak {peak}; tail (below 90% of peak) {span - (below + 1) * 0.5:.1f} us; "
               f"mean over the span {sum(active) / nb:.0f}")
    sms = {}
    for r in split:
        sms.setdefault(r[8], []).append((r[1], r[7]))
    idle = []
    for iv in sms.values():
        iv.sort()
        first, last = iv[0][0], max(e for _, e in iv)
        idle.append(us(first - t0) + us(end_split - last))
    out.append(f"  per SM: {len(sms)} SMs; idle at start+end median {med(idle):.1f} us, max {max(idle):.1f} us")
    # First-wave CTAs by launch rank on their SM (k-th of the SM's CTAs in launch order):
    # the warp scheduler favours older CTAs, so equal work ends later at higher ranks.
    first = {}
    for r in split:
        if us(r[1] - t0) < 1.0:
            first.setdefault(r[8], []).append(r)
    by_rank = {}
    for rs in first.values():
        for k, r in enumerate(sorted(rs, key=lambda r: r[0])):
            if r[2] != 0:
                by_rank.setdefault(k, []).append(r)
    ranks = "; ".join(f"{k}: {len(rs)} end {med([us(r[7] - t0) for r in rs]):.1f} "
                      f"({min(us(r[7] - t0) for r in rs):.1f}-{max(us(r[7] - t0) for r in rs):.1f})"
                      for k, rs in sorted(by_rank.items()))
    out.append(f"  first-wave packed CTAs by launch rank on their SM, end us median (range): {ranks}")
    prof = " ".join(f"{active[k]}" for k in range(0, nb, max(1, nb // 24)))
    out.append(f"  residency every {0.5 * max(1, nb // 24):.1f} us: {prof}")
    return "\n".join(out)


if __name__ == "__main__":
    for c in read_cases(sys.argv[1]):
        print(summarise(c))
