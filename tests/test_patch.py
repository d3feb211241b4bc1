"""kvcore.patch: what it changes inside the block, that everything is restored on exit
(also after an exception), that nothing is patched at import, and that a KVCache used
without it fails loudly instead of attending to one token."""
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import kvcore


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def registry_state():
    return (dict(ALL_ATTENTION_FUNCTIONS._global_mapping), dict(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping))


def test_import_patches_nothing(model):
    assert not any(k.startswith("kvcore") for k in ALL_ATTENTION_FUNCTIONS._global_mapping)
    assert model.config._attn_implementation == "sdpa"


def test_patch_routes_and_restores(model):
    before = registry_state()
    with kvcore.patch(model) as m:
        assert m is model
        assert model.config._attn_implementation == "kvcore_sdpa"
        assert "kvcore_sdpa" in ALL_ATTENTION_FUNCTIONS and "kvcore_sdpa" in ALL_MASK_ATTENTION_FUNCTIONS
    assert model.config._attn_implementation == "sdpa"
    assert registry_state() == before


def test_patch_restores_on_exception(model):
    before = registry_state()
    with pytest.raises(KeyError, match="boom"):
        with kvcore.patch(model):
            raise KeyError("boom")
    assert model.config._attn_implementation == "sdpa"
    assert registry_state() == before


def test_nested_patches_restore_in_order(model):
    with kvcore.patch(model):
        with kvcore.patch(model):
            assert model.config._attn_implementation == "kvcore_sdpa"
        assert model.config._attn_implementation == "kvcore_sdpa"
        assert "kvcore_sdpa" in ALL_ATTENTION_FUNCTIONS
    assert "kvcore_sdpa" not in ALL_ATTENTION_FUNCTIONS._global_mapping


def test_other_caches_unchanged_under_patch(model):
    """A DynamicCache (or no cache) inside the block goes to the model's own attention."""
    ids = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        want = model(ids, past_key_values=DynamicCache(config=model.config), use_cache=True).logits
        plain = model(ids, use_cache=False).logits
        with kvcore.patch(model):
            got = model(ids, past_key_values=DynamicCache(config=model.config), use_cache=True).logits
            got_plain = model(ids, use_cache=False).logits
    assert torch.equal(got, want) and torch.equal(got_plain, plain)


def test_kvcache_without_patch_raises(model):
    cache = kvcore.KVCache(model.config, "none", max_cache_len=32)
    with torch.no_grad(), warnings.catch_warnings(), pytest.raises(RuntimeError, match="kvcore.patch"):
        warnings.simplefilter("ignore")
        model(torch.randint(0, 64, (1, 8)), past_key_values=cache, use_cache=True)
    # the failed forward leaves nothing behind: a new cache works inside the block
    fresh = kvcore.KVCache(model.config, "none", max_cache_len=32)
    with torch.no_grad(), warnings.catch_warnings(), kvcore.patch(model, fresh):
        warnings.simplefilter("ignore")
        model(torch.randint(0, 64, (1, 8)), past_key_values=fresh, use_cache=True)
    assert fresh.get_seq_length() == 8 and fresh.layers[1].prefilled


def test_patch_argument_errors(model):
    with pytest.raises(TypeError, match="model"):
        with kvcore.patch("not a model"):
            pass
    with pytest.raises(TypeError, match="cache"):
        with kvcore.patch(model, DynamicCache()):
            pass
    other = LlamaConfig(vocab_size=64, hidden_size=128, num_hidden_layers=5, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=64)
    with pytest.raises(ValueError, match="layers"):
        with kvcore.patch(model, kvcore.KVCache(other, "none", max_cache_len=8)):
            pass
    model.config._attn_implementation_internal = "flex_attention"
    try:
        with pytest.raises(ValueError, match="sdpa"):
            with kvcore.patch(model):
                pass
    finally:
        model.config._attn_implementation_internal = "sdpa"
