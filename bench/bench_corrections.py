"""Benchmark of kvcore.extract_outliers and kvcore.lowrank_error against the same
algorithms written with PyTorch operators (float32), side by side in one run on the GPU.

    python bench/bench_corrections.py [--json out.json] [--tokens 32768]

Shape: [8, 8, T, 128] bf16 (a T-token cache of 8 KV heads, batch 8), group 64.
GB/s counts x read once and every output written once; "vs copy" divides by the
device-to-device copy bandwidth measured in the same run.
"""
import argparse
import datetime
import json
import math

import torch

import kvcore
from timing import Timer, gpu_header


def torch_outliers(x, count, group_size, axis):
    """extract_outliers with torch operators: median/MAD per group, top-count z per token."""
    *lead, T, D = x.shape
    if axis == "channel":
        g = x.float().reshape(*lead, T // group_size, group_size, D)
        red = -2
    else:
        g = x.float().reshape(*lead, T, D // group_size, group_size)
        red = -1
    med = g.median(red, keepdim=True).values
    dev = (g - med).abs()
    mad = dev.median(red, keepdim=True).values.clamp_min(2.0 ** -126)
    z = (dev / mad).reshape(*lead, T, D)
    idx = z.topk(count, dim=-1).indices.sort(dim=-1).values
    val = x.gather(-1, idx)
    dense = x.clone()
    dense.scatter_(-1, idx, med.expand_as(g).reshape(*lead, T, D).gather(-1, idx).to(x.dtype))
    return idx.to(torch.uint8), val, dense


def torch_lowrank(residual, rank, group_size, iters):
    """lowrank_error with torch operators: batched subspace iteration with QR."""
    *lead, T, D = residual.shape
    r = residual.float().reshape(*lead, T // group_size, group_size, D)
    omega = torch.ones(D, rank, device=residual.device)
    omega[1::2] = -1.0
    y = r @ omega
    for _ in range(iters):
        q, _ = torch.linalg.qr(y)
        y = r @ (r.transpose(-1, -2) @ q)
    q, _ = torch.linalg.qr(y)
    return q.half(), (r.transpose(-1, -2) @ q).half()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--tokens", type=int, default=32768)
    args = ap.parse_args()
    timer = Timer()
    D, G = 128, 64
    shape = (8, 8, args.tokens, D)
    header = gpu_header()
    nbytes = math.prod(shape) * 2
    copy = timer.copy_gbs(nbytes)
    print(f"GPU: {header['gpu']}  torch {header['torch']}  copy {copy:.0f} GB/s (read+write)")
    print(f"{'op':>34} {'kvcore us':>10} {'GB/s':>7} {'vs copy':>8} {'torch us':>10} {'speedup':>8}")
    rows = []
    torch.manual_seed(0)
    x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)

    def report(name, t_ours, t_torch, moved, **extra):
        gbs = moved / (t_ours * 1e-3) / 1e9
        rows.append(dict(op=name, shape=list(shape), dtype="bfloat16", kvcore_us=t_ours * 1e3,
                         torch_us=t_torch * 1e3, gbs=gbs, ratio_to_copy=gbs / copy,
                         speedup_vs_torch=t_torch / t_ours, **extra))
        print(f"{name:>34} {t_ours * 1e3:10.1f} {gbs:7.0f} {100 * gbs / copy:7.1f}% {t_torch * 1e3:10.1f} "
              f"{t_torch / t_ours:7.2f}x")

    for axis in ("channel", "token"):
        for count in (1, 2, 4):
            idx, val, dense = kvcore.extract_outliers(x, count, G, axis)
            # guard: both pick entries with the same scores (ties may pick different channels)
            ti, tv, td = torch_outliers(x, count, G, axis)
            agree = (idx == ti).float().mean().item()
            assert agree > 0.99, f"{axis} count={count}: kvcore and torch outliers agree on {agree:.3f}"
            t_ours = timer.median_ms(lambda: kvcore.extract_outliers(x, count, G, axis), iters=10)
            t_torch = timer.median_ms(lambda: torch_outliers(x, count, G, axis), warmup=1, iters=5)
            moved = 2 * nbytes + x.numel() // D * count * 3  # x in, dense out, (uint8, bf16) per outlier
            report(f"extract_outliers {axis} c={count}", t_ours, t_torch, moved, axis=axis, count=count)
            del idx, val, dense, ti, tv, td

    for rank in (1, 2, 4, 8):
        a, b = kvcore.lowrank_error(x, rank, G, 3)
        err = lambda aa, bb: (x.float().reshape(*shape[:2], -1, G, D) - aa.float() @ bb.float().transpose(-1, -2)).norm()
        t_ours = timer.median_ms(lambda: kvcore.lowrank_error(x, rank, G, 3), iters=10)
        moved = nbytes + (x.numel() // D) * rank * 2 + (x.numel() // G) * rank * 2
        t_torch = float("nan")
        if rank in (1, 8):  # the torch baseline takes seconds a call: time it at two ranks only
            ta, tb = torch_lowrank(x, rank, G, 3)
            # guard: same approximation quality (the bases may differ by sign or rotation)
            e_ours, e_torch = err(a, b).item(), err(ta, tb).item()
            assert e_ours <= 1.01 * e_torch, f"rank {rank}: kvcore residual {e_ours} > torch {e_torch}"
            t_torch = timer.median_ms(lambda: torch_lowrank(x, rank, G, 3), warmup=0, iters=2)
            del ta, tb
        report(f"lowrank_error r={rank} iters=3", t_ours, t_torch, moved, rank=rank, iters=3)
        del a, b

    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(header, copy_gbs=copy, date=str(datetime.date.today()),
                           command="python bench/bench_corrections.py", rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
