"""Perplexity through the cache equals an independent full-sequence computation, and the
stand-in caches hold what they claim."""
import math

import pytest
import torch

from kvcore.evaluate import perplexity
from kvcore.evaluate.methods import Method, token_budget
from kvcore.evaluate.standins import StandInCache
from test_eval_helpers import tiny_llama


def _windows(B=2, L=200):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (B, L), generator=g)


def test_decode_ppl_of_exact_cache_equals_full_forward():
    model = tiny_llama(torch.float32)
    w = _windows(2, 120)
    base = Method("none", "baseline", "transformers")
    res = perplexity.decode_perplexity(model, base, w, context=64, device="cpu", dtype=torch.float32)
    ref = perplexity.full_sequence_perplexity(model, w, context=64, device="cpu")
    assert res.tokens == 2 * 55
    assert res.ppl == pytest.approx(ref, rel=1e-5)
    # and by hand: mean NLL of tokens 65..119 given their prefixes
    with torch.no_grad():
        logits = model(input_ids=w[:, :-1]).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[:, 64:].reshape(-1, 256), w[:, 65:].reshape(-1))
    assert res.nll == pytest.approx(nll.item(), rel=1e-5)
    assert len(res.token_nll) == 55 and res.decode_tokens_per_s > 0
    assert res.kv_bytes == 2 * 2 * (2 * 2 * 119 * 64 * 4)   # layers x (K,V) x B*Hkv*T*D*4 bytes


def test_standin_without_compression_is_exact():
    model = tiny_llama(torch.float32)
    w = _windows(2, 100)
    exact = Method("standin-exact", "baseline", "stand-in")
    res = perplexity.decode_perplexity(model, exact, w, context=40, device="cpu", dtype=torch.float32)
    assert res.ppl == pytest.approx(perplexity.full_sequence_perplexity(model, w, 40, "cpu"), rel=1e-5)


def test_streaming_standin_keeps_budget_and_positions():
    cache = StandInCache(1, budget=10, sinks=2)
    k = torch.arange(30, dtype=torch.float32).view(1, 1, 30, 1).expand(1, 1, 30, 32).contiguous()
    cache.update(k[:, :, :25], k[:, :, :25], 0)
    for t in range(25, 30):
        cache.update(k[:, :, t:t + 1], k[:, :, t:t + 1], 0)
    layer = cache.layers[0]
    assert layer.get_seq_length() == 30 and layer.held() == 10
    assert layer.keys[0, 0, :, 0].tolist() == [0, 1] + list(range(22, 30))   # sinks + most recent
    assert cache.nbytes() == 2 * 10 * 32 * 4


def test_standin_quantization_matches_kvcore_ops():
    import kvcore

    B, H, D, g = 1, 2, 64, 32
    cache = StandInCache(1, bits=4, group=g, residual=32)
    x = torch.randn(B, H, 100, D)
    cache.update(x, x, 0)
    layer = cache.layers[0]
    # 100 tokens, residual 32, group 32: blocks sealed while >= 64 unsealed: 2 blocks (64 tokens)
    assert layer.n_quantized == 64
    k_ref = kvcore.ops.dequantize_kv(*kvcore.ops.quantize_kv(x[:, :, 32:64].contiguous(), 4, g, "channel"), 4, g, "channel")
    assert torch.equal(layer.keys[:, :, 32:64], k_ref)
    assert torch.equal(layer.keys[:, :, 64:], x[:, :, 64:])
    per_tok = B * H * (D // 2 + 2 * D * 4 // g) + B * H * (D // 2 + 2 * (D // g) * 4)   # K and V codes + metadata
    assert cache.nbytes() == 64 * per_tok + 36 * 2 * B * H * D * 4


@pytest.mark.parametrize("name", ["standin-streaming", "standin-streaming+kivi-4"])
def test_budgets_hold_an_eighth_of_the_bytes(name):
    m = Method(name, "composed" if "+" in name else "eviction", "stand-in", bytes_fraction=1 / 8,
               quant_bits=4 if "+" in name else None)
    T = 4096
    n = token_budget(m, T, dtype_bits=16)
    if m.quant_bits is None:
        assert n == T // 8
    else:
        exact = m.sinks + m.residual + m.group // 2
        bits = exact * 16 + (n - exact) * (4 + 32 / m.group)
        assert bits / (T * 16) == pytest.approx(1 / 8, rel=1e-3)
    assert token_budget(Method("kivi-4", "quantization", "stand-in", quant_bits=4), T) is None


def test_perplexity_rejects_windows_without_decode():
    with pytest.raises(ValueError):
        perplexity.decode_perplexity(tiny_llama(), Method("none", "baseline", "transformers"), _windows(1, 10), 9,
                                     "cpu", torch.float32)


def test_compressed_cache_changes_perplexity_a_little():
    model = tiny_llama(torch.float32)
    w = _windows(1, 260)
    exact = perplexity.full_sequence_perplexity(model, w, 200, "cpu")
    q4 = Method("standin-kivi-4", "quantization", "stand-in", quant_bits=4, group=32, residual=32)
    res = perplexity.decode_perplexity(model, q4, w, 200, "cpu", torch.float32)
    assert res.ppl != exact and math.isfinite(res.ppl) and abs(res.ppl / exact - 1) < 0.05
    assert res.kv_bytes < 2 * 2 * 259 * 2 * 64 * 4
