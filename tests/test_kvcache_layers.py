"""kvcore.KVCache layers driven directly (no model): what each decode step attends to is
checked against an independent reference, built from the pure-PyTorch quantizer
(kvcore.reference), the reference corrections and float32 attention, over ragged rows
(left padding), GQA, sinks, and enough decode steps to seal several key blocks."""
import math

import pytest
import torch
from transformers import LlamaConfig

import kvcore
from kvcore import reference as ref
from kvcore import reference_corrections as refc
from kvcore.cache_layer_base import take_pending
from kvcore.kv_cache import KVCache

B, HQ, HKV, D = 2, 4, 2, 64
L, PAD, STEPS = 100, 13, 40


def tiny_config(**kw):
    c = dict(vocab_size=64, hidden_size=256, intermediate_size=64, num_hidden_layers=1, num_attention_heads=HQ,
             num_key_value_heads=HKV, head_dim=D)
    c.update(kw)
    return LlamaConfig(**c)


def prompt_mask(L, pad):
    """4D bool mask of a causal prompt whose row 1 is left-padded by `pad` tokens."""
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[1, :pad] = False
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    return (causal[None] & valid[:, None, :])[:, None], valid


def run_layer(layer, q, k, v, mask, scale):
    layer.update(k, v)
    assert take_pending(k) is layer
    layer.prefill(q, k, v, mask, scale)


def step_layer(layer, q, k, v, scale):
    layer.update(k, v)
    assert take_pending(k) is layer
    return layer.decode(q, k, v, scale)


def expected_kv(k, v, cfg, dtype):
    """One row's tokens [n, D] -> what a cache holding them should attend to."""
    k, v = k.to(dtype), v.to(dtype)
    if cfg.rotation:
        k = refc.hadamard_rotate(k, cfg.rotation_seed)
    n = k.shape[0]
    s = min(cfg.sink_tokens, n)
    m = n - s
    G, Rc = cfg.group_size, cfg.residual_window
    p = 0 if m < Rc else math.ceil((m - Rc + 1) / G) * G
    parts_k, parts_v = [k[:s]], [v[:s]]
    if p:
        pk, pv = k[s:s + p], v[s:s + p]
        for x, axis, grp, cnt, out in ((pk, "channel", G, cfg.key_outliers, parts_k),
                                      (pv, "token", cfg.v_group, cfg.value_outliers, parts_v)):
            if cnt:
                idx, val, dense = refc.extract_outliers(x, cnt, grp, axis)
            else:
                dense = x
            x_hat = ref.dequantize_kv(*ref.quantize_kv(dense, cfg.bits, grp, axis), cfg.bits, grp, axis, torch.float32)
            if cnt:
                x_hat = refc.apply_outliers(x_hat, idx, val)
            out.append(x_hat.to(dtype))
    parts_k.append(k[s + p:])
    parts_v.append(v[s + p:])
    return torch.cat(parts_k).float(), torch.cat(parts_v).float()


def reference_step(q, ks, vs, cfg, scale, dtype):
    """q [Hq, D]; ks, vs: one row per KV head, lists of [n, D] -> [Hq, D] float32."""
    g = HQ // HKV
    out = []
    for h in range(HQ):
        kk, vv = expected_kv(ks[h // g], vs[h // g], cfg, dtype)
        qq = q[h].to(dtype)
        if cfg.rotation:
            qq = refc.hadamard_rotate(qq, cfg.rotation_seed)
        p = torch.softmax((kk @ qq.float()) * scale, dim=0)
        out.append(p @ vv)
    return torch.stack(out)


CONFIGS = {
    "kivi-2": dict(bits=2, group_size=32, residual_window=64),
    "kivi-4+sinks": dict(bits=4, group_size=32, residual_window=32, sink_tokens=3),
    "int8": dict(bits=8, group_size=32, residual_window=32),
    "rotation+outliers": dict(bits=2, group_size=32, value_group_size=64, residual_window=64, rotation=True,
                              key_outliers=3, value_outliers=1, sink_tokens=1),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_quantized_layer_matches_reference(name):
    cfg = kvcore.CompressionConfig(**CONFIGS[name])
    dtype = torch.float16
    cache = KVCache(tiny_config(), cfg, max_cache_len=L + STEPS, dtype=dtype)
    layer = cache.layers[0]
    scale = D ** -0.5
    q = torch.randn(B, HQ, L, D)
    k = torch.randn(B, HKV, L, D) * 2 + torch.randn(1, HKV, 1, D)  # channel offsets, as real keys have
    v = torch.randn(B, HKV, L, D)
    mask, valid = prompt_mask(L, PAD)
    run_layer(layer, q, k, v, mask, scale)
    rows_k = [[k[b, h][valid[b]] for h in range(HKV)] for b in range(B)]
    rows_v = [[v[b, h][valid[b]] for h in range(HKV)] for b in range(B)]
    for step in range(STEPS):
        qn, kn, vn = torch.randn(B, HQ, 1, D), torch.randn(B, HKV, 1, D) * 2, torch.randn(B, HKV, 1, D)
        out = step_layer(layer, qn, kn, vn, scale)
        assert out.shape == (B, 1, HQ, D)
        for b in range(B):
            for h in range(HKV):
                rows_k[b][h] = torch.cat([rows_k[b][h], kn[b, h]])
                rows_v[b][h] = torch.cat([rows_v[b][h], vn[b, h]])
            want = reference_step(qn[b, :, 0], rows_k[b], rows_v[b], cfg, scale, dtype)
            torch.testing.assert_close(out[b, 0].float(), want, atol=3e-3, rtol=3e-3,
                                       msg=f"{name}: step {step}, sequence {b}")
    # the rows hold what was fed: padding dropped, every token accounted for
    n = layer.used_tokens()
    assert n.tolist() == [[L + STEPS] * HKV, [L - PAD + STEPS] * HKV]


def prefilled_layer(cfg, L, pad, max_cache_len, dtype, static=False):
    """A cache of tiny_config() and its first layer after a random prompt of L tokens (the
    second sequence left-padded by pad)."""
    cache = KVCache(tiny_config(), cfg, max_cache_len=max_cache_len, dtype=dtype, static=static)
    layer = cache.layers[0]
    mask, _ = prompt_mask(L, pad)
    run_layer(layer, torch.randn(B, HQ, L, D), torch.randn(B, HKV, L, D), torch.randn(B, HKV, L, D), mask, 0.125)
    return cache, layer


def test_quantized_layer_seals_blocks_in_place():
    """Storage addresses never change while decoding; lengths live on the device."""
    cfg = kvcore.CompressionConfig(bits=2, group_size=32, residual_window=32)
    cache, layer = prefilled_layer(cfg, 50, 5, 200, torch.bfloat16)
    ptrs = {n: t.data_ptr() for n, t in layer.storage.items()}
    nbytes = cache.nbytes()
    for _ in range(70):
        step_layer(layer, torch.randn(B, HQ, 1, D), torch.randn(B, HKV, 1, D), torch.randn(B, HKV, 1, D), 0.125)
    assert {n: t.data_ptr() for n, t in layer.storage.items()} == ptrs
    assert cache.nbytes() == nbytes
    assert layer.packed_len.dtype == torch.int32 and layer.packed_len.shape == (B * HKV,)
    assert (layer.packed_len % 32 == 0).all() and (layer.resid_len < 32).all()
    assert (layer.packed_len + layer.resid_len).tolist() == [120] * HKV + [115] * HKV


def test_static_layer_matches_eager_layer():
    """The branch-free decode step (static=True: sealing computed at every step) gives the
    same outputs as the eager one that skips it when no row seals."""
    cfg = kvcore.CompressionConfig(bits=4, group_size=32, residual_window=64, sink_tokens=2)
    outs = []
    for static in (False, True):
        torch.manual_seed(1)
        _, layer = prefilled_layer(cfg, 60, 7, 160, torch.float16, static=static)
        outs.append(torch.stack([step_layer(layer, torch.randn(B, HQ, 1, D), torch.randn(B, HKV, 1, D),
                                            torch.randn(B, HKV, 1, D), 0.125) for _ in range(50)]))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_capacity_overflow_raises():
    cfg = kvcore.CompressionConfig(bits=2, group_size=32, residual_window=32)
    _, layer = prefilled_layer(cfg, 60, 0, 64, torch.float16)
    with pytest.raises(ValueError, match="max_cache_len"):
        for _ in range(40):
            step_layer(layer, torch.randn(B, HQ, 1, D), torch.randn(B, HKV, 1, D), torch.randn(B, HKV, 1, D), 0.125)


@pytest.mark.parametrize("L, pad, window, group, sinks, steps", [
    (10, 3, 64, 32, 0, 90), (100, 13, 64, 32, 0, 1), (100, 0, 64, 32, 2, 31), (96, 0, 64, 32, 0, 32),
    (129, 40, 128, 32, 4, 33), (200, 7, 128, 64, 0, 100), (50, 5, 32, 32, 0, 70),
])
def test_packed_capacity_holds_a_full_cache_exactly(L, pad, window, group, sinks, steps):
    """Packed storage is sized for the tokens that can ever be sealed (the window always
    keeps min(tokens, window - group) of them): decoding up to max_cache_len never
    overflows it, in the eager and in the static (branch-free) step, and both attend alike."""
    cfg = kvcore.CompressionConfig(bits=2, group_size=group, residual_window=window, sink_tokens=sinks)
    outs = []
    for static in (False, True):
        torch.manual_seed(2)
        _, layer = prefilled_layer(cfg, L, pad, L + steps, torch.float16, static=static)
        most = max(L - sinks + steps - (window - group), 0) // group * group
        assert layer.t_cap == max(most, group)
        step_outs = [step_layer(layer, torch.randn(B, HQ, 1, D), torch.randn(B, HKV, 1, D), torch.randn(B, HKV, 1, D),
                                0.125) for _ in range(steps)]
        assert (layer.packed_len <= layer.t_cap).all()
        assert (layer.packed_len + layer.resid_len).tolist() == [L - sinks + steps] * HKV + [L - pad - sinks + steps] * HKV
        outs.append(torch.stack(step_outs))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
