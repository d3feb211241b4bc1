"""The method list of ``kvcore eval`` and its one interface to the cache, with the real
kvcore presets and KVCache on a tiny random Llama."""
import pytest
import torch

import kvcore
from kvcore.evaluate import methods, perplexity
from kvcore.evaluate.errors import UnknownMethodError
from test_eval_helpers import tiny_llama


def test_every_preset_is_a_method_with_its_family():
    avail = methods.available_methods()
    assert list(avail)[0] == "none" and set(avail) == set(kvcore.PRESETS)
    assert all(m.provider == "kvcore" for m in avail.values())
    for name, m in avail.items():
        cfg = kvcore.preset(name)
        want = ("baseline" if name == "none" else "composed" if cfg.quantized and cfg.evicts
                else "quantization" if cfg.quantized else "eviction")
        assert m.family == want, name
        assert (m.bytes_fraction == 1 / 8) == cfg.evicts, name   # eviction budgets target 1/8 of the bytes
        assert m.quant_bits == cfg.bits, name
    assert avail["best-2"].family == "quantization" and avail["snapkv+kivi-4"].family == "composed"


def test_resolve_methods_orders_and_validates():
    assert [m.name for m in methods.resolve_methods(["snapkv", "kivi-2", "snapkv"])] == ["none", "snapkv", "kivi-2"]
    with pytest.raises(UnknownMethodError, match="valid methods: none, kivi-2"):
        methods.resolve_methods(["kivi-3"])


def test_token_budget_hits_an_eighth_of_the_bytes():
    """An eviction budget is 1/8 of the tokens minus what decoding appends; a composed one
    keeps more tokens: as many as fit 1/8 of the allocated bytes at the preset's all-in
    bits (the exact window and sinks at 16 bits, packed capacity in whole blocks)."""
    avail = methods.available_methods()
    assert methods.token_budget(avail["snapkv"], 2048) == 256
    assert methods.token_budget(avail["snapkv"], 2048, growth=100) == 156
    comp = avail["snapkv+kivi-4"]
    m = methods.Method(**{**comp.__dict__, "bits_per_element": kvcore.preset("snapkv+kivi-4").bits_per_element(64)})
    for growth in (0, 128):
        kept = methods.token_budget(m, 2048, growth=growth)
        # what the cache allocates: the window always keeps residual - group tokens, the
        # packed capacity is the rest in whole blocks, rounded down
        packed = (kept - (m.residual - m.group) + growth) // m.group * m.group
        held_bits = (m.sinks + m.residual) * 16 + packed * m.bits_per_element
        assert held_bits <= 2048 * 16 / 8 < held_bits + 2 * m.group * m.bits_per_element
        assert kept > 256 - growth


def test_caches_are_patched_sized_and_exact_when_uncompressed():
    """`none` through KVCache scores the text as a full forward does; a composed preset
    holds about 1/8 of the uncompressed bytes; patch is undone after each method."""
    model = tiny_llama(torch.bfloat16)
    w = torch.randint(0, 256, (2, 1800), generator=torch.Generator().manual_seed(0))
    avail = methods.available_methods()
    none = perplexity.decode_perplexity(model, avail["none"], w, 1700, "cpu", torch.bfloat16)
    full = perplexity.full_sequence_perplexity(model, w, 1700, "cpu")
    assert none.ppl == pytest.approx(full, rel=2e-2)   # bf16: decode steps round differently than one forward
    comp = perplexity.decode_perplexity(model, avail["snapkv+kivi-4"], w, 1700, "cpu", torch.bfloat16)
    assert none.kv_bytes / 10 < comp.kv_bytes < none.kv_bytes / 6, (comp.kv_bytes, none.kv_bytes)
    assert model.config._attn_implementation in ("sdpa", "eager")   # patch restored
