"""The model's prefill of a prompt, run once and replayed into every method's cache.

Under ``kvcore.patch`` a prompt's attention always runs on the uncompressed keys and
values; the cache layer only stores (compresses) them afterwards. So the model's
forward over a prompt, and the query/key/value each layer hands to its cache, are the
same for every kvcore method. The first kvcore cache to see a prompt records, per layer,
what its ``prefill`` received and the prompt's last logits; later caches get the same
tensors through ``cache.update`` and ``layer.prefill`` without running the model again.
The result is identical (the tests check it against a real prefill), and the eval
skips one forward pass over every prompt for every method but the first.
"""
import contextlib
from typing import Dict

import torch

from .decoding import forward_step


class PrefillReplay:
    """Records of prompts' prefills, by the prompt's token ids.

    Example::

        replay = PrefillReplay()
        logits = replay.prefill(model, ids, cache)        # runs the model, records
        logits = replay.prefill(model, ids, other_cache)  # the same ids: replays
    """

    def __init__(self):
        self._records: Dict[tuple, tuple] = {}  # key -> ({layer_idx: (q, k, v, mask, scale)}, logits)

    def clear(self) -> None:
        self._records.clear()

    def prefill(self, model, ids: torch.Tensor, cache) -> torch.Tensor:
        """Prefill ``ids [B, L]`` (positions 0..L-1) into ``cache``; returns the last
        position's logits ``[B, 1, V]`` float32, as ``forward_step(..., last_only=True)``.
        Caches other than kvcore's always run the model."""
        if not _is_kvcore(cache):
            return forward_step(model, ids, cache, 0, last_only=True)
        key = (tuple(ids.shape), ids.cpu().numpy().tobytes())
        if key in self._records:
            layer_args, logits = self._records[key]
            _replay(cache, layer_args)
            return logits
        layer_args = {}
        with _recording(cache, layer_args):
            logits = forward_step(model, ids, cache, 0, last_only=True)
        self._records[key] = (layer_args, logits)
        return logits


def prefill_prompt(model, ids: torch.Tensor, cache, replay: "PrefillReplay" = None) -> torch.Tensor:
    """The prompt's prefill through ``replay`` when given, else the model's own forward."""
    if replay is None:
        return forward_step(model, ids, cache, 0, last_only=True)
    return replay.prefill(model, ids, cache)


def _is_kvcore(cache) -> bool:
    import kvcore

    return isinstance(cache, kvcore.KVCache)


@contextlib.contextmanager
def _recording(cache, out: dict):
    """Each layer's ``prefill`` arguments go to ``out[layer_idx]`` (the layers still run)."""
    for layer in cache.layers:
        original = layer.prefill

        def record(query, key, value, attention_mask, scale, _original=original, _i=layer.layer_idx):
            out[_i] = (query, key, value, attention_mask, scale)
            return _original(query, key, value, attention_mask, scale)

        layer.prefill = record  # an instance attribute: shadows the method until deleted
    try:
        yield
    finally:
        for layer in cache.layers:
            layer.__dict__.pop("prefill", None)


def _replay(cache, layer_args: dict) -> None:
    """What the model's prefill does to each layer of a kvcore cache, from the record."""
    from kvcore.cache_layer_base import take_pending

    for i, layer in enumerate(cache.layers):
        query, key, value, mask, scale = layer_args[i]
        cache.update(key, value, i)
        if take_pending(key) is not layer:
            raise RuntimeError(f"kvcore eval: replaying the prefill of layer {i} reached another layer")
        layer.prefill(query, key, value, mask, scale)
