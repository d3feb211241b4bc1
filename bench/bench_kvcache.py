"""End-to-end benchmark of kvcore.KVCache (issue 6) on a real-shaped model: Llama-3-8B
attention shapes (hidden 4096, 32 query / 8 KV heads, head_dim 128, MLP 14336), random
weights, a few layers, bf16.

For each cache (DynamicCache bf16; transformers' QuantizedCache when its quanto or hqq
backend imports; kvcore presets) at a context of --context tokens (32K):

* KV bytes after prefill (the cache's own count, and the CUDA allocator's growth across
  the prefill minus the model's activations, as a cross-check);
* decode tokens/s through ``model(...)`` one token at a time (batch --batch), with
  ``kvcore.patch`` for kvcore caches;
* the largest batch whose KV cache fits --budget-gib at that context (from the measured
  bytes per sequence), and its ratio to bf16's;
* a decode step of the static kvcore cache (``static=True``) built from the model's own
  weights, eager and under ``torch.compile`` (``mode="reduce-overhead"``: CUDA graphs on
  the GPU), checked equal to eager.

Bars (issue 6): the 2-bit cache holds >= 5x fewer KV bytes than bf16 and decodes at
least as fast; at a fixed budget it serves >= 3x the batch.

    python bench/bench_kvcache.py --json out.json            # GPU, 32K context
    python bench/bench_kvcache.py --quick --device cpu       # tiny CPU check that it runs
"""
import argparse
import datetime
import json
import math
import statistics
import time
import warnings

import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import kvcore


def model_config(quick: bool, layers: int):
    if quick:
        return LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1 << 17)
    return LlamaConfig(vocab_size=4096, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=1 << 17,
                       rope_theta=500000.0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def allocated(device):
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def dynamic_bytes(cache):
    return sum(layer.keys.untyped_storage().nbytes() + layer.values.untyped_storage().nbytes()
               for layer in cache.layers if layer.keys is not None)


def hf_quantized_cache(model, bits):
    """transformers' QuantizedCache with the first backend that imports, or (None, reason)."""
    from transformers.cache_utils import QuantizedCache
    for backend, module in (("quanto", "optimum.quanto"), ("hqq", "hqq")):
        try:
            __import__(module)
        except Exception as e:  # noqa: BLE001
            reason = f"{backend}: {type(e).__name__}: {e}"
            continue
        try:
            return QuantizedCache(backend, model.config, nbits=bits, q_group_size=64, residual_length=128), backend
        except Exception as e:  # noqa: BLE001
            reason = f"{backend}: {type(e).__name__}: {e}"
    return None, reason


def run_cache(model, name, make_cache, ids, steps, device, kv_only_bytes=None):
    """Prefill + `steps` greedy decode steps; bytes and decode tokens/s."""
    B, L = ids.shape
    cache = make_cache()
    is_kv = isinstance(cache, kvcore.KVCache)
    ctx = kvcore.patch(model, cache) if is_kv else _Null()
    with torch.no_grad(), warnings.catch_warnings(), ctx:
        warnings.simplefilter("ignore")
        torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
        before = allocated(device)
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1:].argmax(-1)
        del out
        sync(device)
        grown = allocated(device) - before - nxt.numel() * 8
        kv_bytes = cache.nbytes() if is_kv else dynamic_bytes(cache) if isinstance(cache, DynamicCache) else None
        # warm-up step, then time
        out = model(nxt, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(nxt, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
        sync(device)
        dt = time.perf_counter() - t0
    row = {"cache": name, "batch": B, "context": L, "kv_bytes": kv_bytes, "allocator_growth_bytes": grown,
           "decode_tokens_per_s": B * steps / dt, "decode_ms_per_step": 1e3 * dt / steps}
    if is_kv:
        row["bits_per_element"] = cache.compression.bits_per_element(model.config.head_dim)
        row["per_layer"] = [{k: v for k, v in d.items() if k != "parts"} for d in cache.nbytes_by_layer()]
    del cache
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def static_decode_step(model, cache, hidden, cos, sin):
    """One decode step of a Llama model written over its own modules, with the kvcore
    layers' decode in place of HF attention: what torch.compile / CUDA graphs capture."""
    for dl, layer in zip(model.model.layers, cache.layers):
        attn = dl.self_attn
        h = dl.input_layernorm(hidden)
        B = h.shape[0]
        q = attn.q_proj(h).view(B, 1, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(B, 1, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(B, 1, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        o = layer.decode(q, k, v, attn.scaling)  # [B, 1, Hq, D]
        hidden = hidden + attn.o_proj(o.reshape(B, 1, -1))
        hidden = hidden + dl.mlp(dl.post_attention_layernorm(hidden))
    return model.lm_head(model.model.norm(hidden))


def compiled_static_step(model, preset, ids, device, iters):
    """Eager vs torch.compile(reduce-overhead) decode step on a static kvcore cache."""
    res = {"preset": preset}
    B, L = ids.shape
    caches = []
    for _ in range(2):  # one cache per mode, same prompt
        cache = kvcore.KVCache(model.config, preset, max_cache_len=L + 4 * iters + 16, dtype=torch.bfloat16,
                               static=True)
        with torch.no_grad(), kvcore.patch(model, cache), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        caches.append(cache)
    g = torch.Generator(device="cpu").manual_seed(0)
    hid = [torch.randn(B, 1, model.config.hidden_size, generator=g).to(device, torch.bfloat16) * 0.1
           for _ in range(iters)]
    pos = torch.full((B, 1), L, device=device)
    with torch.no_grad():
        cos, sin = model.model.rotary_emb(hid[0], pos)

        def eager(i):
            return static_decode_step(model, caches[0], hid[i], cos, sin)
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        step = torch.compile(lambda h: static_decode_step(model, caches[1], h, cos, sin), mode=mode)
        outs_e, outs_c = [], []
        t0 = time.perf_counter()
        for i in range(iters):
            outs_e.append(eager(i))
        sync(device)
        t_eager = (time.perf_counter() - t0) / iters
        times = []
        for i in range(iters):
            t0 = time.perf_counter()
            y = step(hid[i])
            outs_c.append(y.clone())
            sync(device)
            times.append(time.perf_counter() - t0)
    warm = max(1, iters // 2)
    diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(outs_e, outs_c))
    scale = max(a.float().abs().max().item() for a in outs_e)
    res.update(mode=mode, eager_ms=1e3 * t_eager, compiled_ms=1e3 * statistics.median(times[warm:]),
               first_compiled_call_s=times[0], max_abs_diff_vs_eager=diff, logits_scale=scale,
               equal_to_eager=diff <= 1e-2 * max(scale, 1.0))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="tiny model and context (checks that it runs)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--context", type=int, default=None, help="prompt tokens (default 32768; 256 with --quick)")
    ap.add_argument("--batch", type=int, default=None, help="decode batch (default 4; 2 with --quick)")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 4; 2 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="timed decode steps (default 32; 4 with --quick)")
    ap.add_argument("--budget-gib", type=float, default=16.0, help="KV memory budget for the batch question")
    ap.add_argument("--presets", default="none,kivi-4,kivi-2,best-2,snapkv+kivi-2")
    args = ap.parse_args()
    device = torch.device(args.device)
    q = args.quick
    L = args.context or (256 if q else 32768)
    B = args.batch or (2 if q else 4)
    layers = args.layers or (2 if q else 4)
    steps = args.steps or (4 if q else 32)
    torch.manual_seed(0)
    cfg = model_config(q, layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(device, torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (B, L), device=device)
    header = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": str(device),
              "torch": torch.__version__, "kvcore": kvcore.build_info(), "context": L, "batch": B, "layers": layers,
              "steps": steps, "model": {k: getattr(cfg, k) for k in ("hidden_size", "num_attention_heads",
                                                                     "num_key_value_heads", "head_dim",
                                                                     "intermediate_size")}}
    if device.type == "cuda":
        header["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(header))
    rows = [run_cache(model, "DynamicCache bf16", lambda: DynamicCache(config=model.config), ids, steps, device)]
    print(json.dumps(rows[-1]))
    hfq, why = hf_quantized_cache(model, 2)
    if hfq is not None:
        rows.append(run_cache(model, f"QuantizedCache {why} 2-bit",
                              lambda: hf_quantized_cache(model, 2)[0], ids, steps, device))
        print(json.dumps(rows[-1]))
    else:
        header["hf_quantized_cache"] = f"skipped ({why})"
        print(f"# transformers QuantizedCache skipped: {why}")
    for name in args.presets.split(","):
        mk = lambda name=name: kvcore.KVCache(model.config, name, max_batch_size=B, max_cache_len=L + steps + 8,  # noqa: E731
                                              dtype=torch.bfloat16)
        rows.append(run_cache(model, f"kvcore {name}", mk, ids, steps, device))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_layer"}))
    # the batch question: bytes per sequence at this context, budget / bytes
    base = rows[0]
    budget = args.budget_gib * 2**30
    for r in rows:
        if r["kv_bytes"]:
            per_seq = r["kv_bytes"] / B
            r["max_batch_in_budget"] = int(budget // per_seq)
            r["kv_bytes_ratio_vs_bf16"] = base["kv_bytes"] / r["kv_bytes"]
            r["batch_ratio_vs_bf16"] = r["max_batch_in_budget"] / max(base["max_batch_in_budget"], 1) \
                if "max_batch_in_budget" in base else None
            r["decode_speed_vs_bf16"] = r["decode_tokens_per_s"] / base["decode_tokens_per_s"]
    base["batch_ratio_vs_bf16"] = 1.0
    for r in rows[1:]:
        if r.get("max_batch_in_budget") is not None:
            r["batch_ratio_vs_bf16"] = r["max_batch_in_budget"] / max(base["max_batch_in_budget"], 1)
    compiled = []
    for name in ("kivi-2", "kivi-4"):
        try:
            compiled.append(compiled_static_step(model, name, ids[:, : min(L, 4096)], device, 6 if q else 20))
        except Exception as e:  # noqa: BLE001  (report, do not hide)
            compiled.append({"preset": name, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(compiled[-1]))
    two_bit = next((r for r in rows if r["cache"] == "kvcore kivi-2"), None)
    bars = {}
    if two_bit:
        bars = {"2bit_kv_bytes_5x_fewer": two_bit["kv_bytes_ratio_vs_bf16"] >= 5,
                "2bit_decodes_at_least_as_fast": two_bit["decode_speed_vs_bf16"] >= 1.0,
                "2bit_serves_3x_batch": (two_bit["batch_ratio_vs_bf16"] or 0) >= 3}
    print("\n| cache | KV bytes | vs bf16 | allocator growth | decode tok/s | vs bf16 | max batch in "
          f"{args.budget_gib:g} GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cache']} | {r['kv_bytes']} | {r.get('kv_bytes_ratio_vs_bf16', float('nan')):.2f}x | "
              f"{r['allocator_growth_bytes']} | {r['decode_tokens_per_s']:.1f} | "
              f"{r.get('decode_speed_vs_bf16', float('nan')):.2f}x | {r.get('max_batch_in_budget')} |")
    print("bars:", json.dumps(bars))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows, "compiled_static_step": compiled, "bars": bars}, f, indent=1)


if __name__ == "__main__":
    main()
