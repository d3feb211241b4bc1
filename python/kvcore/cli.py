"""The ``kvcore`` command.

    kvcore eval [--shape llama3-8b|smollm2-135m] [--tokens N] [--device cpu|cuda]
    kvcore info

``eval`` compresses a cache of a real model's shape with each quantization
method (keys per channel, values per token, KIVI-style) and prints the bytes held
against fp16/bf16, the reconstruction error, and the time taken.
"""
import argparse
import json
import sys
import time

import torch

# Attention shapes of real models (layers, KV heads, head_dim).
MODEL_SHAPES = {
    "smollm2-135m": dict(layers=30, kv_heads=3, head_dim=64),
    "llama3-8b": dict(layers=32, kv_heads=8, head_dim=128),
}


def _kv_like(shape, dtype, device, gen):
    """Keys with per-channel outliers and values without, like real attention layers."""
    k = torch.randn(shape, generator=gen, device="cpu")
    k = k * torch.exp(0.75 * torch.randn(shape[-1], generator=gen)) + 0.5 * torch.randn(shape[-1], generator=gen)
    v = torch.randn(shape, generator=gen, device="cpu")
    return k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype)


def _rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def cmd_eval(args):
    import kvcore

    spec = MODEL_SHAPES[args.shape]
    device = args.device
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    B, H, D, T = args.batch, spec["kv_heads"], spec["head_dim"], args.tokens
    T = (T // 128) * 128  # whole key blocks of the largest group; the remainder would stay full precision
    k, v = _kv_like((B, H, T, D), dtype, device, gen)
    full_bytes_layer = 2 * k.numel() * k.element_size()
    print(f"kvcore eval: {args.shape} cache shape per layer [B={B}, H_kv={H}, T={T}, D={D}] {args.dtype} "
          f"on {device}; {spec['layers']} layers")
    print(f"{'method':22} {'bytes/layer':>12} {'vs ' + args.dtype:>9} {'K rel err':>10} {'V rel err':>10} {'quant ms':>9}")
    print(f"{args.dtype:22} {full_bytes_layer:12,d} {1.0:8.2f}x {0.0:10.4f} {0.0:10.4f} {'-':>9}")
    rows = []
    for bits in (8, 4, 2):
        for group in (128, 64, 32):
            if args.quick and group != 64:
                continue
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            kq = kvcore.quantize_kv(k, bits, group, "channel")
            vq = kvcore.quantize_kv(v, bits, group, "token")
            if device == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) * 1e3
            nbytes = sum(t.numel() * t.element_size() for t in (*kq, *vq))
            k_hat = kvcore.dequantize_kv(*kq, bits, group, "channel")
            v_hat = kvcore.dequantize_kv(*vq, bits, group, "token")
            row = dict(method=f"KIVI {bits}-bit g{group}", bytes=nbytes, ratio=full_bytes_layer / nbytes,
                       k_err=_rel_err(k_hat, k), v_err=_rel_err(v_hat, v), quant_ms=ms)
            rows.append(row)
            print(f"{row['method']:22} {nbytes:12,d} {row['ratio']:8.2f}x {row['k_err']:10.4f} {row['v_err']:10.4f} {ms:9.2f}")
    total = full_bytes_layer * spec["layers"]
    best = min(rows, key=lambda r: r["bytes"])
    print(f"whole cache: {total / 2**20:,.1f} MiB in {args.dtype}; {best['method']} holds "
          f"{best['bytes'] * spec['layers'] / 2**20:,.1f} MiB ({best['ratio']:.2f}x less)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(shape=args.shape, B=B, H=H, T=T, D=D, dtype=args.dtype, device=device, rows=rows), f, indent=1)
    return 0


def cmd_info(_args):
    import kvcore

    info = kvcore.build_info()
    info["torch_runtime"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    print(json.dumps(info, indent=1))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="kvcore", description="Compressed KV caches for LLM inference")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ev = sub.add_parser("eval", help="compress a real-shaped KV cache with each method; print bytes and error")
    ev.add_argument("--shape", choices=sorted(MODEL_SHAPES), default="llama3-8b")
    ev.add_argument("--tokens", type=int, default=4096)
    ev.add_argument("--batch", type=int, default=1)
    ev.add_argument("--dtype", choices=["float16", "bfloat16"], default="bfloat16")
    ev.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ev.add_argument("--quick", action="store_true", help="group size 64 only")
    ev.add_argument("--json", default=None, help="also write the table as JSON")
    ev.set_defaults(fn=cmd_eval)
    info = sub.add_parser("info", help="what this kvcore build contains")
    info.set_defaults(fn=cmd_info)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
