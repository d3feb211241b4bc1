"""What every kvcore cache layer shares: the transformers ``CacheLayerMixin`` surface,
the hand-off from ``update`` to the attention function, byte accounting.

How a forward step reaches the compressed storage: the model's attention module calls
``cache.update(k, v, layer_idx)`` and then its attention function with the query.
A kvcore layer's ``update`` does not store anything yet; it remembers the new keys and
values as *pending* and returns them unchanged. The attention function installed by
:func:`kvcore.patch` recognises those very tensors (by identity), takes the pending
entry, and calls the layer's :meth:`prefill` (attend to the uncompressed prompt, then
compress it) or :meth:`decode` (append the new token, attend over the packed cache).
Scores that need the query (SnapKV, H2O, HashEvict) are available at that point, and
attention never sees a dequantized cache.

A pending entry that nobody takes means the model ran without ``kvcore.patch``; the next
``update`` raises instead of letting the model attend to a single token.
"""
import threading
from typing import Dict, Optional

import torch
from torch import Tensor
from transformers.cache_utils import CacheLayerMixin

from .compression_config import CompressionConfig

__all__ = ["KVCacheLayerBase", "take_pending"]

_ROUTE = threading.local()


def take_pending(key: Tensor):
    """The kvcore layer whose ``update`` returned ``key`` (and clears it), or None."""
    pending = getattr(_ROUTE, "pending", None)
    if pending is None or pending[1] is not key:
        return None
    _ROUTE.pending = None
    layer = pending[0]
    layer._pending = None
    return layer


class KVCacheLayerBase(CacheLayerMixin):
    """Base of the kvcore cache layers (one per decoder layer).

    Rows are ``(sequence, KV head)`` pairs: ``R = B * Hkv``; every length is a ``[R]``
    int32 tensor on the cache's device, so sequences and heads may hold different
    numbers of tokens (left padding removed, per-head eviction budgets).
    """

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, cfg: CompressionConfig, layer_idx: int, num_kv_heads: int, num_heads: int, head_dim: int,
                 max_cache_len: int, device=None, dtype=None, static: bool = False):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.num_kv_heads = num_kv_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.max_cache_len = max_cache_len
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.static = static
        self.batch_size = None
        self._seen = 0  # tokens the model has fed this layer (padding included): HF's sequence length
        self._pending = None
        self.owner = None  # the KVCache holding this layer (set by it)
        self.storage: Dict[str, Tensor] = {}

    # ---- transformers CacheLayerMixin ------------------------------------------------
    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        if self.device is None:
            self.device = key_states.device
        if self.dtype is None:
            self.dtype = key_states.dtype
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        """Remembers the new keys and values for the attention function (see the module
        docstring) and returns them unchanged."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[1] != self.num_kv_heads or key_states.shape[-1] != self.head_dim:
            raise ValueError(f"kvcore.KVCache layer {self.layer_idx}: key_states {tuple(key_states.shape)} do not match "
                             f"the config ({self.num_kv_heads} KV heads, head_dim {self.head_dim})")
        prev = getattr(_ROUTE, "pending", None)
        if prev is not None and prev[0]._pending is not None:
            stale = prev[0]
            stale._pending, _ROUTE.pending = None, None  # never poison later uses (another cache, a retry)
            if stale.owner is not self.owner:
                stale = None  # left over from another cache whose forward raised: not this cache's business
        else:
            stale = None
        if stale is not None:
            raise RuntimeError(
                "kvcore.KVCache: the attention of the previous step never read the cache (layer "
                f"{stale.layer_idx}); run the model inside `with kvcore.patch(model):` so that attention goes "
                "through the compressed cache")
        self._pending = (key_states, value_states)
        _ROUTE.pending = (self, key_states)
        self._seen += key_states.shape[-2]
        return key_states, value_states

    def get_seq_length(self) -> int:
        return self._seen

    def get_mask_sizes(self, query_length: int) -> tuple:
        # The model's mask only matters at prefill (padding, causality, sliding window on
        # the uncompressed prompt); decode attends by the stored lengths.
        return self._seen + query_length, 0

    def get_max_length(self) -> int:
        return self.max_cache_len

    def reset(self) -> None:
        self.storage = {}
        self._seen = 0
        self._pending = None
        self.is_initialized = False
        self.keys = self.values = None

    def offload(self):
        raise NotImplementedError("kvcore.KVCache does not offload layers")

    def prefetch(self):
        raise NotImplementedError("kvcore.KVCache does not offload layers")

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("kvcore.KVCache does not support beam search (reorder_cache)")

    def crop(self, tokens_to_remove: int):
        raise NotImplementedError("kvcore.KVCache cannot be cropped (compressed tokens cannot be restored)")

    def batch_repeat_interleave(self, repeats: int):
        raise NotImplementedError("kvcore.KVCache does not support batch_repeat_interleave")

    def batch_select_indices(self, indices):
        raise NotImplementedError("kvcore.KVCache does not support batch_select_indices")

    # ---- kvcore ------------------------------------------------------------------
    @property
    def prefilled(self) -> bool:
        return bool(self.storage)

    def prefill(self, query: Tensor, key: Tensor, value: Tensor, attention_mask: Optional[Tensor], scale: float):
        """Stores the prompt (``[B, H, L, D]``, padded layout) compressed. The caller has
        already computed the prompt's attention on the uncompressed tensors."""
        raise NotImplementedError

    def decode(self, query: Tensor, key: Tensor, value: Tensor, scale: float) -> Tensor:
        """Appends one token per sequence and returns the attention output ``[B, 1, Hq, D]``."""
        raise NotImplementedError

    def _alloc(self, name: str, shape, dtype) -> Tensor:
        t = torch.zeros(shape, dtype=dtype, device=self.device)
        self.storage[name] = t
        if self.static and not torch.compiler.is_compiling():
            torch._dynamo.mark_static_address(t)
        return t

    def nbytes(self) -> int:
        """Bytes allocated by this layer's storage (capacity, not only what is used)."""
        return sum(t.untyped_storage().nbytes() for t in self.storage.values())

    def nbytes_parts(self) -> Dict[str, int]:
        return {k: t.untyped_storage().nbytes() for k, t in self.storage.items()}

    def used_tokens(self) -> Tensor:
        """``[B, Hkv]`` tokens held per sequence and KV head (a host synchronisation)."""
        raise NotImplementedError

    def capacity_tokens(self) -> int:
        raise NotImplementedError

    def _rows(self, x: Tensor) -> Tensor:
        """``[B, Hkv, T, D]`` -> ``[R, T, D]``."""
        return x.reshape(-1, *x.shape[2:])

    def _check_decode(self, query: Tensor):
        if not self.prefilled:
            raise RuntimeError(f"kvcore.KVCache layer {self.layer_idx}: decode before prefill")
        if query.shape[0] != self.batch_size:
            raise ValueError(f"kvcore.KVCache layer {self.layer_idx}: batch {query.shape[0]} differs from the "
                             f"prefill's {self.batch_size}")
