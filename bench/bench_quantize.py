"""Python benchmark of kvcore.quantize_kv / dequantize_kv on large real shapes.

Reports achieved GB/s ((bytes read + bytes written) / time, each byte counted once)
and the ratio to the device-to-device copy bandwidth measured in the same run.

    python bench/bench_quantize.py [--shape 8 8 32768 128] [--json out.json]
"""
import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import kvcore  # noqa: E402
from timing import Timer, gpu_header  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=4, default=[8, 8, 32768, 128], metavar=("B", "H", "T", "D"))
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16", "float32"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    timer = Timer()
    head = gpu_header()
    n = 1
    for s in args.shape:
        n *= s
    copy = timer.copy_gbs(2 * n)
    print(f"GPU: {head['gpu']}  torch {head['torch']}  shape {args.shape}  copy {copy:.0f} GB/s (read+write)")
    print(f"{'dtype':9} {'op':10} {'axis':8} {'bits':>4} {'group':>5} {'ms':>8} {'GB/s':>7} {'vs copy':>8}")
    rows = []
    for dname in args.dtypes:
        dtype = getattr(torch, dname)
        x = torch.randn(args.shape, device="cuda", dtype=dtype)
        for axis in ("token", "channel"):
            for bits in (2, 4, 8):
                for group in (32, 64, 128):
                    codes, scale, mn = kvcore.quantize_kv(x, bits, group, axis)
                    moved = x.numel() * x.element_size() + codes.numel() + 2 * scale.numel() * scale.element_size()
                    tq = timer.median_ms(lambda: kvcore.quantize_kv(x, bits, group, axis))
                    td = timer.median_ms(lambda: kvcore.dequantize_kv(codes, scale, mn, bits, group, axis))
                    # guard against timing a broken path
                    err = (kvcore.dequantize_kv(codes, scale, mn, bits, group, axis).float() - x.float()).abs()
                    assert (err <= scale.float().max() * 0.51 + 0.05).all(), "round trip failed"
                    for op, t in (("quantize", tq), ("dequantize", td)):
                        gbs = moved / (t * 1e-3) / 1e9
                        rows.append(dict(dtype=dname, op=op, axis=axis, bits=bits, group=group, time_ms=t,
                                         gbs=gbs, ratio_to_copy=gbs / copy))
                        print(f"{dname:9} {op:10} {axis:8} {bits:4d} {group:5d} {t:8.3f} {gbs:7.0f} {100 * gbs / copy:7.1f}%")
        del x
    worst = min(r["ratio_to_copy"] for r in rows)
    print(f"worst ratio to copy bandwidth: {100 * worst:.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(head, shape=args.shape, copy_gbs=copy, date=datetime.date.today().isoformat(),
                           command=" ".join(sys.argv), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
