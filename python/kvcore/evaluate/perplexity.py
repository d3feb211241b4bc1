"""Perplexity of real text scored token by token through a (compressed) cache.

Each of ``B`` windows of ``context + decode + 1`` tokens is prefilled with its first
``context`` tokens (prefill attention sees the exact prompt, as in serving); then the
next ``decode`` tokens are fed one at a time as decode steps, and the logits of step
``i`` (input token ``context + i``) score token ``context + i + 1``. So every scored
token is predicted by attention over the cache as the method stores it, and the
cache keeps growing (and evicting) exactly as in generation.
"""
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .decoding import forward_step, synchronize
from .memory import PeakMemory
from .methods import cache_nbytes, open_cache
from .prefill_replay import prefill_prompt


@dataclass
class PerplexityResult:
    """Perplexity of the scored tokens and what decoding them cost."""
    ppl: float
    nll: float                 # mean negative log-likelihood, nats per token
    tokens: int                # tokens scored (batch x decode)
    prefill_s: float           # prompt into the cache (the model's forward too, unless replayed)
    decode_s: float
    decode_tokens_per_s: float  # tokens decoded per second, all sequences together
    kv_bytes: int              # bytes the cache holds after the last step
    peak_kv_bytes: int         # most bytes it held after any step
    peak_memory_bytes: int = None  # device memory high-water mark (CUDA only)
    token_nll: list = field(default_factory=list, repr=False)  # per step, mean over the batch


def decode_perplexity(model, method, windows: torch.Tensor, context: int, device, dtype, tick=None,
                      replay=None) -> PerplexityResult:
    """Score ``windows[:, context+1:]`` by decoding through ``method``'s cache.

    Args:
        windows: ``[B, context + decode + 1]`` token ids.
        context: tokens prefilled before decoding starts.
        tick: called with 1 after each decode step (progress).
        replay: a :class:`PrefillReplay` shared across methods (the model's prefill of
            the windows then runs once; ``prefill_s`` is the cache's own share).
    """
    B, L = windows.shape
    decode = L - context - 1
    if decode < 1:
        raise ValueError(f"windows of {L} tokens leave nothing to decode after a context of {context}")
    ids = windows.to(device)
    nll_sum, step_nll, peak_kv = 0.0, [], 0
    with torch.inference_mode(), PeakMemory(device) as mem, \
            open_cache(method, model, B, L - 1, device, dtype, prompt_len=context) as cache:
        t0 = time.perf_counter()
        prefill_prompt(model, ids[:, :context], cache, replay)
        synchronize(device)
        t1 = time.perf_counter()
        for i in range(decode):
            logits = forward_step(model, ids[:, context + i:context + i + 1], cache, context + i)
            nll = F.cross_entropy(logits[:, -1], ids[:, context + i + 1], reduction="none")
            step_nll.append(nll)
            peak_kv = max(peak_kv, cache_nbytes(cache))
            if tick:
                tick(1)
        synchronize(device)
        t2 = time.perf_counter()
        kv_bytes = cache_nbytes(cache)
    nll_all = torch.stack(step_nll, 1).double()   # [B, decode]
    nll_sum = nll_all.sum().item()
    mean = nll_sum / (B * decode)
    return PerplexityResult(ppl=math.exp(mean), nll=mean, tokens=B * decode, prefill_s=t1 - t0, decode_s=t2 - t1,
                            decode_tokens_per_s=B * decode / (t2 - t1), kv_bytes=kv_bytes, peak_kv_bytes=peak_kv,
                            peak_memory_bytes=mem.peak_bytes, token_nll=nll_all.mean(0).tolist())


def full_sequence_perplexity(model, windows: torch.Tensor, context: int, device) -> float:
    """Independent check: the same tokens scored by one forward pass over each whole
    window, with no cache (equal to ``decode_perplexity`` with an exact cache)."""
    ids = windows.to(device)
    with torch.inference_mode():
        logits = model(input_ids=ids[:, :-1], use_cache=False).logits.float()
    target = ids[:, context + 1:]
    nll = F.cross_entropy(logits[:, context:].reshape(-1, logits.shape[-1]), target.reshape(-1))
    return math.exp(nll.item())
