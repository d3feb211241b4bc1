"""Eviction in kvcore.KVCache layers: the tokens a policy must keep are kept, budgets
hold while decoding, and the bytes really shrink."""
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig

import kvcore
from kvcore.cache_layer_base import take_pending
from kvcore.decode_math import attend_rows, attend_rows_with_mass
from kvcore.kv_cache import KVCache

B, HQ, HKV, D = 2, 4, 2, 64


def config(layers=1):
    return LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=64, num_hidden_layers=layers,
                       num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D)


def prefill(layer, q, k, v, mask=None):
    layer.update(k, v)
    assert take_pending(k) is layer
    layer.prefill(q, k, v, mask, D ** -0.5)


def decode(layer, q, k, v):
    layer.update(k, v)
    assert take_pending(k) is layer
    return layer.decode(q, k, v, D ** -0.5)


def stored_keys(layer):
    """Per row, the stored keys as a set of row tuples (to compare with the prompt's)."""
    k = layer.storage["k"].view(B * HKV, layer.capacity, D)
    return [{tuple(x.tolist()) for x in k[r, :int(layer.lengths[r])]} for r in range(B * HKV)]


def planted_prompt(L, planted, scale=6.0):
    """Window queries all point along u; the planted tokens' keys too, so every policy
    that reads attention (SnapKV, H2O) must keep them."""
    u = F.normalize(torch.randn(D), dim=0)
    q = torch.randn(B, HQ, L, D) * 0.1 + u * scale
    k = torch.randn(B, HKV, L, D) * 0.3
    k[:, :, planted] += u * scale
    return q, k, torch.randn(B, HKV, L, D)


@pytest.mark.parametrize("policy", ["snapkv", "h2o"])
def test_attention_policies_keep_the_attended_tokens(policy):
    L, planted = 200, [5, 40, 77, 120, 150]
    cfg = kvcore.CompressionConfig(evict=policy, budget=24, snapkv_window=8, snapkv_kernel=1, recent_window=4)
    layer = KVCache(config(), cfg, max_cache_len=L + 4).layers[0]
    q, k, v = planted_prompt(L, planted)
    prefill(layer, q, k, v)
    assert layer.lengths.tolist() == [24] * (B * HKV)
    kept = stored_keys(layer)
    for r in range(B * HKV):
        b, h = divmod(r, HKV)
        for t in planted + list(range(L - 8 if policy == "snapkv" else L - 4, L)):  # planted + protected window
            assert tuple(k[b, h, t].tolist()) in kept[r], (policy, r, t)


def test_l2norm_keeps_small_keys_and_sinks():
    L = 120
    cfg = kvcore.CompressionConfig(evict="l2norm", budget=20, recent_window=4, sink_tokens=2)
    layer = KVCache(config(), cfg, max_cache_len=L + 1).layers[0]
    k = torch.randn(B, HKV, L, D)
    small = [10, 33, 70]
    k[:, :, small] *= 0.01
    prefill(layer, torch.randn(B, HQ, L, D), k, torch.randn(B, HKV, L, D))
    kept = stored_keys(layer)
    for r in range(B * HKV):
        b, h = divmod(r, HKV)
        for t in small + [0, 1] + list(range(L - 4, L)):
            assert tuple(k[b, h, t].tolist()) in kept[r]
    assert layer.lengths.tolist() == [20] * (B * HKV)


def test_eviction_frees_memory_and_pyramid_budgets_decrease():
    L = 400
    q, k, v = torch.randn(B, HQ, L, D), torch.randn(B, HKV, L, D), torch.randn(B, HKV, L, D)
    full = KVCache(config(4), "none", max_cache_len=L + 8)
    snap = KVCache(config(4), kvcore.preset("snapkv"), max_cache_len=L + 8)
    pyr = KVCache(config(4), kvcore.preset("pyramidkv"), max_cache_len=L + 8)
    for cache in (full, snap, pyr):
        for layer in cache.layers:
            prefill(layer, q, k, v)
    # a quarter of the prompt kept (+ 8 tokens of growth): about 4x fewer bytes
    assert full.nbytes() == 4 * 2 * B * HKV * (L + 8) * D * 4
    assert 0.24 < snap.nbytes() / full.nbytes() < 0.28
    caps = [d["capacity_tokens"] for d in pyr.nbytes_by_layer()]
    assert caps == sorted(caps, reverse=True) and caps[0] > 2 * caps[-1]
    assert abs(pyr.nbytes() / snap.nbytes() - 1) < 0.05  # same total budget, shared differently


def test_adaptive_head_budgets_share_the_layer_budget():
    L = 160
    cfg = kvcore.CompressionConfig(evict="snapkv", budget=40, head_budgets="adaptive", snapkv_window=8)
    layer = KVCache(config(), cfg, max_cache_len=L + 1).layers[0]
    q, k, v = planted_prompt(L, [3, 50])
    k[:, 1] = torch.randn(B, L, D) * 0.01  # head 1: attention spread evenly -> wants more tokens
    prefill(layer, q, k, v)
    n = layer.lengths.view(B, HKV)
    assert (n[:, 1] > n[:, 0]).all(), n
    assert (n.sum(1) <= 2 * 40 + 2 * 8).all()


@pytest.mark.parametrize("policy", ["streaming", "h2o", "hashevict"])
def test_every_step_policies_hold_their_budget(policy):
    L, steps, budget = 64, 40, 16
    cfg = kvcore.CompressionConfig(evict=policy, budget=budget, evict_when="every_step", sink_tokens=4,
                                   recent_window=4)
    cache = KVCache(config(), cfg, max_cache_len=L + steps)
    layer = cache.layers[0]
    prefill(layer, torch.randn(B, HQ, L, D), torch.randn(B, HKV, L, D), torch.randn(B, HKV, L, D))
    nbytes = cache.nbytes()
    for _ in range(steps):
        out = decode(layer, torch.randn(B, HQ, 1, D), torch.randn(B, HKV, 1, D), torch.randn(B, HKV, 1, D))
        assert torch.isfinite(out).all()
        assert (layer.lengths == budget).all()
    assert cache.nbytes() == nbytes and layer.capacity == budget
    pos = layer.storage["pos"][:, :budget].sort(-1).values
    n = L + steps
    assert (pos[:, :4] == torch.arange(4)).all()  # sinks never evicted
    assert (pos[:, -4:] == torch.arange(n - 4, n)).all()  # nor the recent window
    if policy == "streaming":  # a rolling window: sinks + the newest tokens
        assert (pos == torch.cat([torch.arange(4), torch.arange(n - budget + 4, n)])).all()


def test_every_n_compacts_back_to_budget():
    L, budget, N = 50, 20, 8
    cfg = kvcore.CompressionConfig(evict="l2norm", budget=budget, evict_when="every_n", evict_every=N,
                                   recent_window=2)
    layer = KVCache(config(), cfg, max_cache_len=200).layers[0]
    prefill(layer, torch.randn(B, HQ, L, D), torch.randn(B, HKV, L, D), torch.randn(B, HKV, L, D))
    assert layer.capacity == budget + N
    for step in range(1, 3 * N + 1):
        small = torch.randn(B, HKV, 1, D) * (0.01 if step == 3 else 1.0)  # one strongly kept token
        decode(layer, torch.randn(B, HQ, 1, D), small, torch.randn(B, HKV, 1, D))
        want = budget if step % N == 0 else budget + step % N
        assert layer.lengths.tolist() == [want] * (B * HKV), step
        if step == 3:
            keep = small
    kept = stored_keys(layer)
    for r in range(B * HKV):
        assert tuple(keep.view(B * HKV, D)[r].to(layer.storage["k"].dtype).tolist()) in kept[r]


def test_attention_mass_helper_against_float64():
    R, g, T = 4, 3, 30
    q, k, v = torch.randn(R, g, D), torch.randn(R, T, D), torch.randn(R, T, D)
    n = torch.tensor([30, 1, 17, 0], dtype=torch.int32)
    mass = torch.ones(R, T)
    out = attend_rows_with_mass(q, k, v, n, 0.2, mass)
    for r in range(R):
        m = int(n[r])
        p = torch.softmax((q[r].double() @ k[r, :m].double().T) * 0.2, -1) if m else torch.zeros(g, 0, dtype=torch.float64)
        want = p @ v[r, :m].double() if m else torch.zeros(g, D, dtype=torch.float64)
        torch.testing.assert_close(out[r].double(), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mass[r, :m].double(), 1 + p.sum(0), atol=1e-5, rtol=1e-5)
        assert (mass[r, m:] == 1).all()
    torch.testing.assert_close(attend_rows(q, k, v, n, 0.2, 2), out, atol=1e-5, rtol=1e-5)
