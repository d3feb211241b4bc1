"""kvcore.KVCache with tiny random Hugging Face models of each supported architecture:
generation with compression off equals DynamicCache token for token (batch 2, left
padding, greedy and sampling), 8-bit logits stay close, quantized and evicting caches
run through model.generate and hold fewer bytes."""
import warnings

import pytest
import torch
from transformers import (AutoModelForCausalLM, DynamicCache, Gemma2Config, Gemma3TextConfig, LlamaConfig,
                          MistralConfig, Phi3Config, Qwen2Config, Qwen3Config)

import kvcore

COMMON = dict(vocab_size=96, hidden_size=128, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
              eos_token_id=2)
WINDOW = 24  # shorter than the prompts, so the sliding-window rings wrap


def make_config(arch):
    if arch == "llama":
        return LlamaConfig(**COMMON)
    if arch == "llama-mqa":
        return LlamaConfig(**{**COMMON, "num_key_value_heads": 1})
    if arch == "mistral":
        return MistralConfig(**COMMON, sliding_window=WINDOW)
    if arch == "qwen2":
        return Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
    if arch == "qwen3":
        return Qwen3Config(**{**COMMON, "num_attention_heads": 8})
    if arch == "phi3":
        return Phi3Config(**COMMON)
    if arch == "gemma2":
        return Gemma2Config(**{**COMMON, "head_dim": 256}, sliding_window=WINDOW, attn_logit_softcapping=None,
                            final_logit_softcapping=None)
    if arch == "gemma3":
        return Gemma3TextConfig(**{**COMMON, "head_dim": 256}, sliding_window=WINDOW,
                                layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    raise ValueError(arch)


ARCHS = ["llama", "llama-mqa", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"]
_models = {}


def model_for(arch, dtype=torch.float32):
    key = (arch, dtype)
    if key not in _models:
        torch.manual_seed(0)
        impl = "eager" if arch == "gemma2" else "sdpa"  # transformers has no SDPA path for Gemma 2
        m = AutoModelForCausalLM.from_config(make_config(arch), attn_implementation=impl).eval()
        _models[key] = m.to(dtype)
    return _models[key]


def prompt(L=50, pad=9, vocab=96):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, L), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :pad] = 0
    mask[1, :pad] = 0
    return ids, mask


def generate(model, ids, mask, cache=None, **kw):
    kw = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0, **kw}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cache is None:
            return model.generate(ids, attention_mask=mask, past_key_values=DynamicCache(config=model.config), **kw)
        with kvcore.patch(model, cache):
            return model.generate(ids, attention_mask=mask, past_key_values=cache, **kw)


@pytest.mark.parametrize("arch", ARCHS)
def test_uncompressed_generate_equals_dynamic_cache(arch):
    m = model_for(arch)
    ids, mask = prompt()
    want = generate(m, ids, mask)
    cache = kvcore.KVCache(m.config, "none", max_batch_size=2, max_cache_len=64)
    got = generate(m, ids, mask, cache)
    assert torch.equal(got, want)
    # the sliding-window layers hold their window only
    for layer in cache.layers:
        if layer.is_sliding:
            assert layer.capacity_tokens() == WINDOW


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_uncompressed_sampling_equals_dynamic_cache(arch):
    m = model_for(arch)
    ids, mask = prompt()
    torch.manual_seed(5)
    want = generate(m, ids, mask, do_sample=True, top_k=20)
    torch.manual_seed(5)
    got = generate(m, ids, mask, kvcore.KVCache(m.config, "none", max_cache_len=64), do_sample=True, top_k=20)
    assert torch.equal(got, want)


def step_logits(model, ids, mask, cache, tokens):
    """Prefill, then feed ``tokens [B, n]`` one per step (the same for every cache, so that
    a near-tie cannot make two runs diverge); logits of every step ``[n+1, B, V]``."""
    out = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctx = kvcore.patch(model, cache) if isinstance(cache, kvcore.KVCache) else _null()
        with ctx:
            r = model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
            out.append(r.logits[:, -1].float())
            for i in range(tokens.shape[1]):
                nxt = tokens[:, i:i + 1]
                mask = torch.cat([mask, torch.ones_like(nxt)], 1)
                r = model(nxt, attention_mask=mask, past_key_values=cache, use_cache=True)
                out.append(r.logits[:, -1].float())
    return torch.stack(out)


def reference_logits(model, ids, mask, steps):
    """Greedy continuation with DynamicCache and the logits of every step."""
    toks = generate(model, ids, mask, max_new_tokens=steps)[:, ids.shape[1]:]
    return toks, step_logits(model, ids, mask, DynamicCache(config=model.config), toks)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_8bit_logits_close(arch):
    """int8 (residual window of 32, so most of the 130-token context is packed)."""
    m = model_for(arch)
    ids, mask = prompt(L=110, pad=17)
    toks, want = reference_logits(m, ids, mask, 16)
    cfg = kvcore.preset("int8").replace(group_size=32, residual_window=32)
    cache = kvcore.KVCache(m.config, cfg, max_cache_len=128)
    got = step_logits(m, ids, mask, cache, toks)
    assert sum(layer.packed_len.min().item() for layer in cache.layers if hasattr(layer, "packed_len")) > 0
    err = (got - want).abs().max() / want.abs().max()
    assert err < 5e-3, err  # 8-bit codes: about 1/500 of each group's range per element


@pytest.mark.parametrize("name", ["kivi-4", "kivi-2", "best-2", "gear-2", "kvquant-2"])
def test_quantized_presets_generate(name):
    """bf16 model; the 2/4-bit caches run decode_attention. Small random models are
    sensitive, so this checks agreement of the first logits and that 4 bits agree better
    than 2 bits, not token equality."""
    m = model_for("llama", torch.bfloat16)
    ids, mask = prompt(L=110, pad=17)
    toks, want = reference_logits(m, ids, mask, 8)
    cfg = kvcore.preset(name).replace(residual_window=max(kvcore.preset(name).group_size, 32))
    cache = kvcore.KVCache(m.config, cfg, max_cache_len=128)
    got = step_logits(m, ids, mask, cache, toks)
    rel = ((got - want).norm(dim=-1) / want.norm(dim=-1)).max().item()
    assert rel < (0.05 if cfg.bits == 4 else 0.35), rel
    assert got[0].argmax(-1).tolist() == want[0].argmax(-1).tolist()  # prefill attends to the exact prompt


def test_batch_rows_independent_of_padding():
    """A left-padded sequence decodes as it does alone: the padding is not stored (the
    logits differ only by the bf16 rounding of a batched prefill)."""
    m = model_for("llama", torch.bfloat16)
    ids, mask = prompt(L=80, pad=20)
    cfg = kvcore.preset("kivi-2").replace(residual_window=32)
    toks = generate(m, ids, mask)[:, 80:]
    both = step_logits(m, ids, mask, kvcore.KVCache(m.config, cfg, max_cache_len=100), toks)
    alone = step_logits(m, ids[1:, 20:], mask[1:, 20:], kvcore.KVCache(m.config, cfg, max_cache_len=100), toks[1:])
    rel = ((both[:, 1] - alone[:, 0]).norm(dim=-1) / alone[:, 0].norm(dim=-1)).max().item()
    assert rel < 0.03, rel


@pytest.mark.parametrize("name", ["snapkv", "snapkv-span", "snapkv-wide", "pyramidkv", "adakv", "h2o", "streaming",
                                  "l2norm", "qfilters", "hashevict", "snapkv+kivi-4", "snapkv-wide+kivi-4"])
def test_eviction_presets_generate_and_shrink(name):
    m = model_for("llama", torch.bfloat16)
    # a composed cache quantizes what it keeps: its prompt must outgrow the 128-token exact
    # window, or the uncompressed quantized cache holds it all exactly in the same bytes
    L = 110 if "+" not in name else 300
    ids, mask = prompt(L=L, pad=17)
    full = kvcore.KVCache(m.config, "none" if "+" not in name else name.split("+")[1], max_cache_len=L + 18)
    generate(m, ids, mask, full)
    cache = kvcore.KVCache(m.config, name, max_cache_len=L + 18)
    out = generate(m, ids, mask, cache)
    assert out.shape == (2, L + 12)
    assert cache.nbytes() < full.nbytes(), (cache.nbytes(), full.nbytes())
    for d in cache.nbytes_by_layer():
        assert d["used_tokens"] <= d["capacity_tokens"]


def test_mass_kernel_changes_decode_time_evictions_only():
    """snapkv-span's two pooling widths: the prompt vote (snapkv_kernel) and the mass when
    evicting again while decoding (mass_kernel). Changing the second changes which tokens
    survive the decode-time evictions, not the prompt selection."""
    from kvcore.evaluate.decoding import cache_keyword

    m = model_for("llama", torch.bfloat16)
    ids, mask = prompt(L=110, pad=17)
    after_prompt, after_decode = {}, {}
    for width in (1, 7):
        cfg = kvcore.preset("snapkv-span").replace(budget=40, mass_kernel=width, evict_every=4)
        cache = kvcore.KVCache(m.config, cfg, max_cache_len=140)
        with torch.no_grad(), kvcore.patch(m, cache):
            m(input_ids=ids, attention_mask=mask, use_cache=True, **{cache_keyword(m): cache})
        after_prompt[width] = cache.layers[0].storage["pos"].clone()
        cache = kvcore.KVCache(m.config, cfg, max_cache_len=140)
        generate(m, ids, mask, cache, max_new_tokens=24)
        after_decode[width] = cache.layers[0].storage["pos"].clone()
    assert torch.equal(after_prompt[1], after_prompt[7])
    assert not torch.equal(after_decode[1], after_decode[7])
