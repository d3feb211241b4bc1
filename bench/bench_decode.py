"""Python benchmark of kvcore.decode_attention (CUDA) against torch SDPA on a bf16 cache.

For each batch B, heads (Hq, Hkv), head_dim D and cache length L it times, side by
side on the same data:

  kvcore-2b, kvcore-4b  decode_attention on a packed cache (group 64) plus a residual
                        window of 64 tokens: packed_len = L - 64 rounded down to a
                        multiple of the group, resid_len = L - packed_len
  sdpa                  torch SDPA on the bf16 cache [B, Hkv, L, D] with q [B, Hq, 1, D]
                        and enable_gqa=True: the flash backend when it accepts the
                        shapes, else the first of cuDNN, efficient, math that does
                        (the backend used is recorded)
  deq+sdpa              kvcore.dequantize_kv of the 2-bit cache, the residual window
                        copied in, then the same SDPA

Each timed call follows a read of 4x the L2 size (timing.Timer with clean_flush), so
every call reads the cache from HBM and finds L2 clean; no rotation of copies is needed.
(Until 2026-11-26 the flush wrote 4x L2: the dirty lines' write-back then ran during
the timed call, +6 us for kvcore and +11 us for SDPA at B=8, 32K on the H100.) GB/s = minimum bytes / time:
the bf16 cache for sdpa, and for kvcore the packed codes + (scale, min) of the valid
packed tokens + the residual tokens (deq+sdpa reads the same 2-bit cache, so it is
given the 2-bit minimum); q, out and lse are counted too. "%copy" compares that with
the device-to-device copy bandwidth measured in the same run (bytes read + written).

    python bench/bench_decode.py [--quick] [--max-gb 60] [--json out.json]
"""
import argparse
import datetime
import json
import os
import sys
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(__file__))
import kvcore  # noqa: E402
from timing import Timer, gpu_header  # noqa: E402

GROUP = 64
RESID_WINDOW = 64
FULL = dict(batches=(1, 8, 32), heads=((32, 8), (32, 32), (9, 3)), head_dims=(64, 128),
            lengths=(1024, 4096, 16384, 32768, 65536, 131072))
QUICK = dict(batches=(8,), heads=((32, 8),), head_dims=(128,), lengths=(4096, 32768))
SDPA_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH)
METHODS = ("sdpa", "kvcore-2b", "kvcore-4b", "deq+sdpa")
BF16 = 2  # bytes


def configs(grid):
    for B in grid["batches"]:
        for Hq, Hkv in grid["heads"]:
            for D in grid["head_dims"]:
                for L in grid["lengths"]:
                    yield B, Hq, Hkv, D, L


def split_length(L):
    """(packed_len, resid_len) for a cache of L tokens with a 64-token residual window."""
    packed = (L - RESID_WINDOW) // GROUP * GROUP
    return packed, L - packed


def bf16_cache_bytes(B, Hkv, L, D):
    return 2 * B * Hkv * L * D * BF16  # K and V


def packed_bytes(B, Hkv, T, D, bits):
    """Bytes of a packed K + V cache of T tokens: codes and both (scale, min) layouts."""
    heads = B * Hkv
    codes = 2 * heads * T * D * bits // 8
    k_meta = 2 * heads * (T // GROUP) * D * BF16
    v_meta = 2 * heads * T * (D // GROUP) * BF16
    return codes + k_meta + v_meta


def io_bytes(B, Hq, D):
    return 2 * B * Hq * D * BF16 + B * Hq * 4  # q, out, lse


def min_bytes(method, B, Hq, Hkv, D, L):
    """The least each method must move: what it reads of the cache, plus q and the outputs."""
    if method == "sdpa":
        return bf16_cache_bytes(B, Hkv, L, D) + io_bytes(B, Hq, D)
    bits = 4 if method == "kvcore-4b" else 2
    packed, resid = split_length(L)
    return packed_bytes(B, Hkv, packed, D, bits) + bf16_cache_bytes(B, Hkv, resid, D) + io_bytes(B, Hq, D)


def peak_bytes(B, Hkv, D, L):
    """Device memory the benchmark of one configuration holds at most (bf16 cache + both packed caches)."""
    return bf16_cache_bytes(B, Hkv, L, D) + packed_bytes(B, Hkv, L, D, 2) + packed_bytes(B, Hkv, L, D, 4)


def random_cache(B, Hkv, L, D):
    """bf16 K (per-channel scales and offsets, like real keys) and V, [B, Hkv, L, D]."""
    k = torch.randn(B, Hkv, L, D, device="cuda", dtype=torch.bfloat16)
    k.mul_(torch.exp(0.75 * torch.randn(B, Hkv, 1, D, device="cuda")).to(torch.bfloat16))
    k.add_((0.5 * torch.randn(B, Hkv, 1, D, device="cuda")).to(torch.bfloat16))
    v = torch.randn(B, Hkv, L, D, device="cuda", dtype=torch.bfloat16)
    return k, v


def packed_cache(k, v, bits):
    """decode_attention's cache arguments for k, v [B, Hkv, L, D]: all L tokens quantized
    (capacity L), of which the first packed_len are used; the last resid_len tokens
    also go to the residual in bf16."""
    B, _, L, _ = k.shape
    packed, resid = split_length(L)
    k_codes, k_scale, k_mn = kvcore.ops.quantize_kv(k, bits, GROUP, "channel")
    v_codes, v_scale, v_mn = kvcore.ops.quantize_kv(v, bits, GROUP, "token")
    lengths = dict(device="cuda", dtype=torch.int32)
    return dict(k_codes=k_codes, k_scale=k_scale, k_mn=k_mn, v_codes=v_codes, v_scale=v_scale, v_mn=v_mn,
                k_resid=k[:, :, packed:].contiguous(), v_resid=v[:, :, packed:].contiguous(),
                packed_len=torch.full((B,), packed, **lengths), resid_len=torch.full((B,), resid, **lengths),
                bits=bits, group_size=GROUP)


def sdpa_call(backend, q4, k, v):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q4, k, v, enable_gqa=True)


def pick_sdpa_backend(q4, k, v):
    """The first backend of SDPA_BACKENDS (flash first) that runs these shapes."""
    for backend in SDPA_BACKENDS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "flash attention does not support ..." notes
                sdpa_call(backend, q4, k, v)
            torch.cuda.synchronize()
            return backend
        except RuntimeError:
            continue
    raise RuntimeError("no SDPA backend accepts these shapes")


def dequant_sdpa(backend, q4, cache):
    """Dequantize the whole packed cache to bf16, copy the residual window in, then SDPA."""
    bits, packed = cache["bits"], cache["k_codes"].shape[2] - cache["k_resid"].shape[2]
    k = kvcore.ops.dequantize_kv(cache["k_codes"], cache["k_scale"], cache["k_mn"], bits, GROUP, "channel")
    v = kvcore.ops.dequantize_kv(cache["v_codes"], cache["v_scale"], cache["v_mn"], bits, GROUP, "token")
    k[:, :, packed:] = cache["k_resid"]
    v[:, :, packed:] = cache["v_resid"]
    return sdpa_call(backend, q4, k, v)


def check_same(out, expected, what):
    """Guard against timing a broken path: kvcore against SDPA over the same dequantized cache.
    A coarse bound on purpose: the bf16 SDPA it compares with rounds the dequantized cache and
    P to bf16 (its error grows with L and batch); kvcore's precision is tested against a
    float64 reference in tests/test_decode_attention.py."""
    err = (out.float() - expected.float()).abs().max().item()
    tol = 0.05 + 0.05 * expected.float().abs().max().item()
    assert err <= tol, f"{what}: kvcore differs from dequantize+SDPA by {err:.3g} (> {tol:.3g})"


def bench_config(timer, B, Hq, Hkv, D, L):
    """Times the four methods on one configuration; returns (sdpa backend name, {method: ms})."""
    k, v = random_cache(B, Hkv, L, D)
    caches = {2: packed_cache(k, v, 2), 4: packed_cache(k, v, 4)}
    q = torch.randn(B, Hq, D, device="cuda", dtype=torch.bfloat16)
    q4 = q.unsqueeze(2)  # [B, Hq, 1, D]
    backend = pick_sdpa_backend(q4, k, v)
    ms = {"sdpa": timer.median_ms(lambda: sdpa_call(backend, q4, k, v))}
    for bits in (2, 4):
        ms[f"kvcore-{bits}b"] = timer.median_ms(lambda: kvcore.ops.decode_attention(q, **caches[bits]))
    del k, v  # make room for the bf16 cache that deq+sdpa materialises
    torch.cuda.empty_cache()
    ms["deq+sdpa"] = timer.median_ms(lambda: dequant_sdpa(backend, q4, caches[2]))
    check_same(kvcore.ops.decode_attention(q, **caches[2])[0], dequant_sdpa(backend, q4, caches[2])[:, :, 0],
               f"B={B} Hq={Hq} Hkv={Hkv} D={D} L={L}")
    return backend.name, ms


def skip_reason(B, Hkv, D, L, max_gb):
    cache_gb = bf16_cache_bytes(B, Hkv, L, D) / 1e9
    if cache_gb > max_gb:
        return f"bf16 cache {cache_gb:.1f} GB > --max-gb {max_gb:g}"
    need_gb, free_gb = peak_bytes(B, Hkv, D, L) / 1e9, torch.cuda.mem_get_info()[0] / 1e9
    if need_gb > 0.95 * free_gb:
        return f"needs {need_gb:.1f} GB, {free_gb:.1f} GB free"
    return None


def result_rows(B, Hq, Hkv, D, L, backend, ms, copy_gbs):
    packed, resid = split_length(L)
    rows = []
    for method in METHODS:
        nbytes = min_bytes(method, B, Hq, Hkv, D, L)
        gbs = nbytes / (ms[method] * 1e-3) / 1e9
        rows.append(dict(B=B, Hq=Hq, Hkv=Hkv, D=D, L=L, packed_len=packed, resid_len=resid, method=method,
                         sdpa_backend=backend, time_us=ms[method] * 1e3, speedup_vs_sdpa=ms["sdpa"] / ms[method],
                         min_bytes=nbytes, gbs=gbs, ratio_to_copy=gbs / copy_gbs))
    return rows


def print_table(rows):
    """One line per configuration: time (us), speedup over SDPA and % of copy bandwidth per method."""
    by_config = {}
    for r in rows:
        by_config.setdefault((r["B"], r["Hq"], r["Hkv"], r["D"], r["L"]), {})[r["method"]] = r
    head = f"{'B':>3} {'Hq':>3} {'Hkv':>3} {'D':>4} {'L':>7} {'backend':>15}"
    for m in METHODS:
        head += f" | {m + ' us':>13} {'x':>5} {'%cp':>4}"
    print(head)
    for (B, Hq, Hkv, D, L), methods in by_config.items():
        line = f"{B:3d} {Hq:3d} {Hkv:3d} {D:4d} {L:7d} {methods['sdpa']['sdpa_backend']:>15}"
        for m in METHODS:
            r = methods[m]
            line += f" | {r['time_us']:13.1f} {r['speedup_vs_sdpa']:5.2f} {100 * r['ratio_to_copy']:4.0f}"
        print(line)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="B=8, (Hq, Hkv)=(32, 8), D=128, L in {4K, 32K}")
    ap.add_argument("--max-gb", type=float, default=60.0, help="skip configurations whose bf16 cache exceeds this")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="only these batch sizes")
    ap.add_argument("--lengths", type=int, nargs="+", default=None, help="only these context lengths")
    ap.add_argument("--bar-shape", action="store_true", help="only (Hq, Hkv) = (32, 8) and D = 128 (issue 3's bar)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_decode.py needs a CUDA device")
    timer = Timer(clean_flush=True)
    head = gpu_header()
    copy_gbs = timer.copy_gbs(1 << 30)
    print(f"GPU: {head['gpu']}  torch {head['torch']}  copy {copy_gbs:.0f} GB/s (read+write)  "
          f"group {GROUP}, residual window {RESID_WINDOW}")
    rows, skipped = [], []
    for B, Hq, Hkv, D, L in configs(QUICK if args.quick else FULL):
        if args.batches is not None and B not in args.batches:
            continue
        if args.lengths is not None and L not in args.lengths:
            continue
        if args.bar_shape and (Hq, Hkv, D) != (32, 8, 128):
            continue
        name = f"B={B} Hq={Hq} Hkv={Hkv} D={D} L={L}"
        reason = skip_reason(B, Hkv, D, L, args.max_gb)
        if reason is None:
            try:
                backend, ms = bench_config(timer, B, Hq, Hkv, D, L)
            except torch.cuda.OutOfMemoryError:
                reason = "out of memory"
            torch.cuda.empty_cache()
        if reason is not None:
            skipped.append(dict(B=B, Hq=Hq, Hkv=Hkv, D=D, L=L, reason=reason))
            print(f"{name}: skipped ({reason})", flush=True)
            continue
        rows += result_rows(B, Hq, Hkv, D, L, backend, ms, copy_gbs)
        print(f"{name}: " + "  ".join(f"{m} {ms[m] * 1e3:.1f} us" for m in METHODS) + f"  [{backend}]", flush=True)
    print()
    print_table(rows)
    if skipped:
        print(f"{len(skipped)} configuration(s) skipped (see above)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(head, copy_gbs=copy_gbs, group=GROUP, resid_window=RESID_WINDOW,
                           date=datetime.date.today().isoformat(), command=" ".join(sys.argv), rows=rows,
                           skipped=skipped), f, indent=1)


if __name__ == "__main__":
    main()
