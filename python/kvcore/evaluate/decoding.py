"""One forward step of a causal LM over a cache, the same way for every method.

Positions are always passed explicitly (``start .. start+q-1``), so that a cache that
evicts tokens cannot shift the rotary positions of the next ones.
"""
import inspect

import torch


def cache_keyword(model) -> str:
    """transformers 5 names the cache argument ``cache``; earlier versions ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward_step(model, ids: torch.Tensor, cache, start: int, last_only: bool = False) -> torch.Tensor:
    """Run ``ids`` ``[B, q]`` at positions ``start..start+q-1`` through ``model`` with ``cache``.

    Returns the logits ``[B, q, V]`` (``[B, 1, V]`` with ``last_only``) in float32.
    """
    B, q = ids.shape
    pos = torch.arange(start, start + q, device=ids.device).unsqueeze(0).expand(B, q)
    kwargs = {cache_keyword(model): cache, "use_cache": True, "position_ids": pos}
    if last_only:
        kwargs["logits_to_keep"] = 1
    return model(input_ids=ids, **kwargs).logits.float()


def synchronize(device) -> None:
    """Wait for queued GPU work (for timing); a no-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
