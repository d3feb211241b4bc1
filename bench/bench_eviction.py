"""Benchmark of the eviction primitives on the GPU (issue 5): hamming_scores against the
signature bytes it must read (bar: >= 80% of copy bandwidth), side by side with the
same scores computed by torch operators; topk_select against torch.topk on [64, L]
rows with k = L/8, L in {4K, 16K, 64K, 128K} (bar: >= 3x faster), float32 and int32.

    python bench/bench_eviction.py [--json out.json]

Shape: B=8, Hq=32, Hkv=8, T in {32768, 131072} cached tokens, nbits in {64, 128, 256}.
GB/s counts the key signatures read and the int32 scores written; "% of copy" divides
by the device-to-device copy bandwidth of the same run (67 MB), "% of a copy of the same
bytes" by a copy that moves as many bytes as the kernel (small transfers pay the same
launch and ramp-up time in both).
"""
import argparse
import datetime
import json

import torch

import kvcore
from timing import Timer, gpu_header


def torch_hamming(q, k, lengths):
    """Same scores with torch operators (bitwise_xor, a byte-popcount table, sums)."""
    B, Hq, W = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    table = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32, device=q.device)
    x = q.reshape(B, Hkv, Hq // Hkv, 1, W) ^ k[:, :, None]
    diff = table[x.view(torch.uint8).long()].sum((-1, 2))
    score = (Hq // Hkv) * 32 * W - diff
    valid = torch.arange(T, device=q.device)[None, None] < lengths.reshape(B, 1, 1)
    return torch.where(valid, score, -1).int()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    timer = Timer()
    timer.warm_up()
    header = gpu_header()
    B, Hq, Hkv = 8, 32, 8
    copy = timer.copy_gbs(B * Hkv * 32768 * 32)
    print(f"GPU: {header['gpu']}  torch {header['torch']}  copy {copy:.0f} GB/s (read+write, 67 MB)")
    rows = []
    for T in (32768, 131072):
        for nbits in (64, 128, 256):
            W = nbits // 32
            q = torch.randint(-2**31, 2**31 - 1, (B, Hq, W), dtype=torch.int32, device="cuda")
            k = torch.randint(-2**31, 2**31 - 1, (B, Hkv, T, W), dtype=torch.int32, device="cuda")
            lengths = torch.full((B,), T, dtype=torch.int32, device="cuda")
            ours = kvcore.hamming_scores(q, k, lengths)
            assert torch.equal(ours, torch_hamming(q, k, lengths)), "kvcore and torch scores differ"
            t = timer.median_ms(lambda: kvcore.hamming_scores(q, k, lengths))
            t_torch = timer.median_ms(lambda: torch_hamming(q, k, lengths), iters=5)
            moved = k.numel() * 4 + ours.numel() * 4
            gbs = moved / (t * 1e-3) / 1e9
            # the ceiling for moving these bytes: a copy that reads and writes as many in total
            copy_same = timer.copy_gbs(moved // 2)
            rows.append(dict(op="hamming_scores", nbits=nbits, B=B, Hq=Hq, Hkv=Hkv, T=T, kvcore_us=t * 1e3,
                             torch_us=t_torch * 1e3, gbs=gbs, ratio_to_copy=gbs / copy,
                             copy_same_bytes_gbs=copy_same, ratio_to_copy_same_bytes=gbs / copy_same,
                             speedup_vs_torch=t_torch / t))
            print(f"hamming_scores T={T:6d} nbits={nbits:3d}: {t * 1e3:8.1f} us  {gbs:6.0f} GB/s  "
                  f"{100 * gbs / copy:5.1f}% of copy, {100 * gbs / copy_same:5.1f}% of a copy of the same bytes"
                  f"  torch {t_torch * 1e3:8.1f} us ({t_torch / t:.1f}x)")
            del q, k, ours
    for dtype in (torch.float32, torch.int32):
        for L in (4096, 16384, 65536, 131072):
            R, k = B * Hkv, L // 8
            if dtype == torch.float32:
                scores = torch.randn(R, L, device="cuda")
            else:  # Hamming-like integers: many ties
                scores = torch.randint(0, 4 * 128, (R, L), dtype=torch.int32, device="cuda")
            lengths = torch.full((R,), L, dtype=torch.int32, device="cuda")
            idx, count = kvcore.topk_select(scores, k, lengths)
            # guard: the same selected values as torch.topk (positions may differ on ties)
            ours_v = scores.gather(1, idx.long()).sort(dim=-1).values
            assert torch.equal(ours_v, torch.topk(scores, k, dim=-1).values.sort(dim=-1).values), \
                "kvcore and torch.topk select different values"
            assert torch.equal(idx.cpu(), kvcore.topk_select(scores.cpu(), k, lengths.cpu())[0])
            t = timer.median_ms(lambda: kvcore.topk_select(scores, k, lengths))
            t_torch = timer.median_ms(lambda: torch.topk(scores, k, dim=-1))
            rows.append(dict(op="topk_select", dtype=str(dtype).split(".")[-1], R=R, L=L, k=k, kvcore_us=t * 1e3,
                             torch_us=t_torch * 1e3, speedup_vs_torch=t_torch / t))
            print(f"topk_select {str(dtype).split('.')[-1]:7s} R={R} L={L:6d} k={k:5d}: {t * 1e3:8.1f} us"
                  f"  torch.topk {t_torch * 1e3:8.1f} us  ({t_torch / t:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(header, copy_gbs=copy, date=str(datetime.date.today()),
                           command="python bench/bench_eviction.py", rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
