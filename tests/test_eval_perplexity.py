"""Perplexity through the cache equals an independent full-sequence computation, and the
eviction budgets hold what they claim."""
import math

import pytest
import torch

from kvcore.evaluate import perplexity
from kvcore.evaluate.methods import Method, available_methods, token_budget
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


def test_kvcore_cache_without_compression_is_exact():
    model = tiny_llama(torch.float32)
    w = _windows(2, 100)
    res = perplexity.decode_perplexity(model, available_methods()["none"], w, context=40, device="cpu",
                                       dtype=torch.float32)
    assert res.ppl == pytest.approx(perplexity.full_sequence_perplexity(model, w, 40, "cpu"), rel=1e-5)


def test_budgets_of_methods_that_keep_everything():
    assert token_budget(Method("kivi-4", "quantization", "kvcore", quant_bits=4), 4096) is None
    assert token_budget(Method("streaming", "eviction", "kvcore", bytes_fraction=1 / 8), 4096) == 512


def test_perplexity_rejects_windows_without_decode():
    with pytest.raises(ValueError):
        perplexity.decode_perplexity(tiny_llama(), Method("none", "baseline", "transformers"), _windows(1, 10), 9,
                                     "cpu", torch.float32)


def test_compressed_cache_changes_perplexity_a_little():
    model = tiny_llama(torch.bfloat16)
    w = _windows(1, 560)
    exact = perplexity.full_sequence_perplexity(model, w, 500, "cpu")
    res = perplexity.decode_perplexity(model, available_methods()["kivi-4"], w, 500, "cpu", torch.bfloat16)
    assert res.ppl != exact and math.isfinite(res.ppl) and abs(res.ppl / exact - 1) < 0.05
    assert res.kv_bytes < 0.6 * 2 * 2 * 559 * 2 * 64 * 2    # the 128-token exact window is a fifth of 559
