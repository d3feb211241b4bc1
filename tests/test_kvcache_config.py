"""CompressionConfig validation, the presets, and the bytes a quantized layer allocates."""
import pytest
import torch
from transformers import LlamaConfig

import kvcore
from kvcore.cache_layer_base import take_pending
from kvcore.kv_cache import KVCache

REQUIRED = ["none", "kivi-2", "kivi-4", "gear-2", "kvquant-2", "best-2", "snapkv", "pyramidkv", "h2o", "streaming",
            "l2norm", "qfilters", "hashevict", "snapkv+kivi-4"]


def test_presets_present_and_valid():
    for name in REQUIRED:
        cfg = kvcore.preset(name)
        assert cfg is kvcore.PRESETS[name]
        cfg.validate()
    assert not kvcore.PRESETS["none"].quantized and not kvcore.PRESETS["none"].evicts
    kivi = kvcore.preset("kivi-2")
    assert (kivi.bits, kivi.group_size, kivi.residual_window) == (2, 32, 128)
    combo = kvcore.preset("snapkv+kivi-4")
    assert combo.bits == 4 and combo.evict == "snapkv" and combo.evict_when == "prefill"


def test_preset_errors():
    with pytest.raises(ValueError, match="valid names: none, kivi-2"):
        kvcore.preset("kivi-3")
    with pytest.raises(ValueError, match="every step"):
        kvcore.preset("h2o+kivi-2")
    assert kvcore.preset("l2norm+kivi-2").bits == 2  # any prompt-time policy + any quantization


def test_bits_per_element():
    assert kvcore.preset("kivi-2").bits_per_element(128) == 3.0  # 2 + 2*16/32
    assert kvcore.preset("kivi-4").bits_per_element(128) == 5.0
    assert kvcore.CompressionConfig(bits=2, group_size=64).bits_per_element(128) == 2.5
    assert kvcore.preset("best-2").bits_per_element(64) == 3.3125  # 3 + 2*3*8/64 (keys) and 2.5 + 3*8/64 (values)
    assert kvcore.preset("best-2").bits_per_element(128) <= 3.5
    assert kvcore.preset("none").bits_per_element(128) == 16


@pytest.mark.parametrize("kw, field", [
    (dict(bits=3), "bits"), (dict(bits=2, group_size=48), "group_size"),
    (dict(bits=2, residual_window=48), "residual_window"), (dict(bits=2, key_outliers=17), "key_outliers"),
    (dict(bits=2, value_lowrank=9), "value_lowrank"), (dict(rotation=True), "rotation"),
    (dict(key_outliers=1), "key_outliers"), (dict(budget=10), "budget"), (dict(evict="lru", budget=4), "evict"),
    (dict(evict="snapkv", budget=0), "budget"), (dict(evict="snapkv", budget=1.5), "budget"),
    (dict(evict="snapkv", budget="10"), "budget"), (dict(evict="snapkv"), "budget"),
    (dict(evict="snapkv", budget=8, evict_when="often"), "evict_when"),
    (dict(bits=2, evict="l2norm", budget=8, evict_when="every_n"), "evict_when"),
    (dict(evict="hashevict", budget=8), "evict_when"), (dict(evict="snapkv", budget=8, snapkv_kernel=4), "snapkv_kernel"),
    (dict(evict="snapkv", budget=8, mass_kernel=2), "mass_kernel"),
    (dict(layer_budgets="tower"), "layer_budgets"), (dict(hash_bits=48), "hash_bits"),
])
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=f"{field}="):
        kvcore.CompressionConfig(**kw)


def test_kvcache_argument_errors():
    cfg = LlamaConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_hidden_layers=1)
    with pytest.raises(ValueError, match="max_cache_len"):
        KVCache(cfg, "kivi-2")
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        KVCache(cfg, "kivi-2", max_cache_len=8, dtype=torch.float32)
    with pytest.raises(ValueError, match="valid names"):
        KVCache(cfg, "kivi", max_cache_len=8)
    odd = LlamaConfig(hidden_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=48, num_hidden_layers=1)
    with pytest.raises(ValueError, match="head_dim=48"):
        KVCache(odd, "kivi-2", max_cache_len=8)
    cache = KVCache(cfg, "none", max_batch_size=1, max_cache_len=8)
    with pytest.raises(ValueError, match="max_batch_size"):
        cache.update(torch.zeros(2, 2, 3, 64), torch.zeros(2, 2, 3, 64), 0)


@pytest.mark.parametrize("name", ["kivi-2", "kivi-4", "best-2", "gear-2"])
def test_packed_bytes_match_bits_per_element(name):
    """What the layer allocates for its packed tokens is what bits_per_element promises."""
    B, Hkv, D, L = 1, 2, 128, 40
    cfg = kvcore.preset(name)
    mc = LlamaConfig(hidden_size=512, num_attention_heads=4, num_key_value_heads=Hkv, head_dim=D, num_hidden_layers=1)
    cache = KVCache(mc, cfg, max_cache_len=4096, dtype=torch.bfloat16)
    layer = cache.layers[0]
    k = torch.randn(B, Hkv, L, D, dtype=torch.bfloat16)
    layer.update(k, k)
    assert take_pending(k) is layer
    layer.prefill(torch.randn(B, 4, L, D, dtype=torch.bfloat16), k, k, None, D ** -0.5)
    parts = cache.nbytes_by_layer()[0]["parts"]
    full = {"k_resid", "v_resid", "k_sink", "v_sink", "packed_len", "resid_len", "sink_len"}
    packed = sum(v for n, v in parts.items() if n not in full)
    assert packed * 8 / (B * Hkv * layer.t_cap * D * 2) == pytest.approx(cfg.bits_per_element(D))
    assert cache.nbytes() == sum(parts.values())
