"""kvcore.KVCache on the GPU: the same checks as tests/test_kvcache_models.py with the
model and cache on CUDA (decode_attention's CUDA kernel, the device-side sealing), and
the CUDA run against the CPU run of the same cache."""
import pytest
import torch

import kvcore
from test_kvcache_models import generate, model_for, prompt, reference_logits, step_logits

pytestmark = pytest.mark.cuda


def _cuda(t):
    return t.cuda()


@pytest.mark.parametrize("arch", ["llama", "llama-mqa", "gemma3"])
def test_uncompressed_generate_equals_dynamic_cache_on_cuda(arch):
    m = model_for(arch).cuda()
    try:
        ids, mask = map(_cuda, prompt())
        want = generate(m, ids, mask)
        cache = kvcore.KVCache(m.config, "none", max_batch_size=2, max_cache_len=64, device="cuda")
        assert torch.equal(generate(m, ids, mask, cache), want)
    finally:
        m.cpu()


@pytest.mark.parametrize("name", ["kivi-4", "kivi-2", "best-2", "gear-2", "snapkv+kivi-4"])
def test_quantized_presets_on_cuda_match_cpu(name):
    """bf16 llama: the CUDA cache's logits are as close to DynamicCache's as the CPU
    cache's, and close to the CPU cache's own (the kernels differ in rounding only)."""
    m = model_for("llama", torch.bfloat16)
    ids, mask = prompt(L=110, pad=17)
    toks, want = reference_logits(m, ids, mask, 8)
    cfg = kvcore.preset(name).replace(residual_window=max(kvcore.preset(name).group_size, 32))
    cpu = step_logits(m, ids, mask, kvcore.KVCache(m.config, cfg, max_cache_len=128), toks)
    m.cuda()
    try:
        cache = kvcore.KVCache(m.config, cfg, max_cache_len=128, device="cuda", dtype=torch.bfloat16)
        got = step_logits(m, ids.cuda(), mask.cuda(), cache, toks.cuda()).cpu()
    finally:
        m.cpu()
    rel = lambda a, b: ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()  # noqa: E731
    assert rel(got, want) <= 1.5 * rel(cpu, want) + 0.02, (rel(got, want), rel(cpu, want))
    assert rel(got, cpu) < (0.05 if cfg.bits == 4 else 0.2), rel(got, cpu)
