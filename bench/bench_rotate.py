"""Benchmark of kvcore.hadamard_rotate against the plain-PyTorch rotation (signs, then
a matmul with the dense Hadamard matrix), side by side in one run on the GPU.

    python bench/bench_rotate.py [--json out.json]

Shape: [8, 8, 32768, D] bf16 for D in {64, 128, 256} (a 32K-token cache of 8 KV heads,
batch 8). GB/s counts x read once and the output written once; "vs copy" divides by
the device-to-device copy bandwidth measured in the same run.
"""
import argparse
import datetime
import json
import math

import torch

import kvcore
from kvcore import reference_corrections as rc
from timing import Timer, gpu_header


def torch_rotation(D, seed, device, dtype):
    h = (rc.hadamard(D) / math.sqrt(D)).to(device=device, dtype=dtype)
    s = rc.rotation_signs(D, seed).to(device=device, dtype=dtype)
    return lambda x: (x * s) @ h


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    timer = Timer()
    shape = (8, 8, 32768)
    header = gpu_header()
    nbytes = math.prod(shape) * 128 * 2
    copy = timer.copy_gbs(nbytes)
    print(f"GPU: {header['gpu']}  torch {header['torch']}  copy {copy:.0f} GB/s (read+write)")
    print(f"{'D':>4} {'kvcore us':>10} {'GB/s':>7} {'vs copy':>8} {'torch us':>10} {'speedup':>8}")
    rows = []
    for D in (64, 128, 256):
        x = torch.randn(*shape, D, device="cuda", dtype=torch.bfloat16)
        rot = torch_rotation(D, 3, "cuda", torch.bfloat16)
        ours = kvcore.hadamard_rotate(x, 3)
        err = (ours.float() - rot(x).float()).abs().max().item()  # guard: both compute the same rotation
        assert err <= 0.05 * x.abs().max().item(), f"D={D}: kvcore and torch rotations differ by {err}"
        t_ours = timer.median_ms(lambda: kvcore.hadamard_rotate(x, 3))
        t_torch = timer.median_ms(lambda: rot(x))
        gbs = 2 * x.numel() * 2 / (t_ours * 1e-3) / 1e9
        rows.append(dict(D=D, shape=[*shape, D], dtype="bfloat16", kvcore_us=t_ours * 1e3, torch_us=t_torch * 1e3,
                         gbs=gbs, ratio_to_copy=gbs / copy, speedup_vs_torch=t_torch / t_ours))
        print(f"{D:4d} {t_ours * 1e3:10.1f} {gbs:7.0f} {100 * gbs / copy:7.1f}% {t_torch * 1e3:10.1f} "
              f"{t_torch / t_ours:7.2f}x")
        del x
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(header, copy_gbs=copy, date=str(datetime.date.today()),
                           command="python bench/bench_rotate.py", rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
