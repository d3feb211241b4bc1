"""``kvcore.patch(model)``: route a Hugging Face model's attention through kvcore caches,
for the duration of a ``with`` block.

transformers picks each attention module's function by name from its
``AttentionInterface`` registry (``config._attn_implementation``), and the matching
mask builder from ``AttentionMaskInterface``. Inside the block kvcore registers one more
name, ``"kvcore_<base>"`` (``base`` being the model's own implementation, ``sdpa`` or
``eager``), whose mask builder is the base's, and points the model's configs at it. The
kvcore function then:

* for keys that a :class:`kvcore.KVCache` layer just received (prefill): runs the base
  implementation on the uncompressed prompt, then lets the layer compress it;
* for one new token on a filled kvcore layer (decode): lets the layer append it and
  attend over the compressed storage (``decode_attention`` for packed caches);
* for anything else (another cache type, no cache): calls the base implementation.

On exit the configs get their previous implementation back and the registered name is
removed once no ``patch`` uses it, also when the block raises. Nothing happens at import.
"""
import contextlib
import sys
import threading
from typing import Optional

from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from .cache_layer_base import take_pending

__all__ = ["patch", "PREFIX"]

PREFIX = "kvcore_"
_BASES = ("sdpa", "eager")
_lock = threading.Lock()
_users = {}  # registered name -> number of active patches


def _base_function(module: nn.Module, base: str):
    if base == "eager":
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise RuntimeError(f"kvcore.patch: {type(module).__name__} has no eager_attention_forward")
        return fn
    return ALL_ATTENTION_FUNCTIONS[base]


def kvcore_attention(module: nn.Module, query, key, value, attention_mask, scaling: Optional[float] = None,
                     dropout: float = 0.0, **kwargs):
    """The attention function registered under ``kvcore_<base>`` (see the module doc).

    Args follow transformers' attention interface: query ``[B, Hq, L, D]``, key and value
    ``[B, Hkv, L_kv, D]`` (what the cache's ``update`` returned). Returns
    ``(out [B, L, Hq, D], None)``.
    """
    base = module.config._attn_implementation[len(PREFIX):]
    layer = take_pending(key)
    if layer is None:
        return _base_function(module, base)(module, query, key, value, attention_mask, scaling=scaling,
                                             dropout=dropout, **kwargs)
    if kwargs.get("softcap") is not None:
        raise ValueError("kvcore: attention logit soft-capping is not supported by the compressed decode path")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if not layer.prefilled:
        out = _base_function(module, base)(module, query, key, value, attention_mask, scaling=scaling,
                                           dropout=dropout, **kwargs)
        layer.prefill(query, key, value, attention_mask, scale)
        return out
    if query.shape[2] != 1:
        raise NotImplementedError(
            f"kvcore.KVCache: {query.shape[2]} new tokens on a filled cache (chunked prefill, continuing a "
            "conversation, assisted decoding) is not supported; prefill in one call, then decode one token per step")
    return layer.decode(query, key, value, scale), None


def _configs(model: nn.Module):
    seen = {}
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation_internal"):
            seen.setdefault(id(c), c)
    return list(seen.values())


@contextlib.contextmanager
def patch(model: nn.Module, cache=None):
    """Routes ``model``'s attention through kvcore cache layers inside the block.

    Args:
        model: a transformers model whose attention uses the attention registry
            (Llama, Mistral, Qwen2/3, Phi-3, Gemma 2/3, ... with ``sdpa`` or ``eager``).
        cache: optional :class:`kvcore.KVCache` the block will use; only checked against
            the model (any cache passed to the model is routed by what it is).

    Example::

        >>> cache = kvcore.KVCache(model.config, "kivi-4", max_cache_len=1024, dtype=torch.bfloat16)
        >>> with kvcore.patch(model, cache):
        ...     out = model.generate(ids, past_key_values=cache, max_new_tokens=20)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"kvcore.patch: model must be a torch.nn.Module, got {type(model).__name__}")
    configs = _configs(model)
    if not configs:
        raise ValueError("kvcore.patch: the model has no transformers config with an attention implementation")
    if cache is not None:
        from .kv_cache import KVCache
        if not isinstance(cache, KVCache):
            raise TypeError(f"kvcore.patch: cache must be a kvcore.KVCache, got {type(cache).__name__}")
        n_layers = getattr(model.config.get_text_config(decoder=True), "num_hidden_layers", None)
        if n_layers is not None and n_layers != len(cache.layers):
            raise ValueError(f"kvcore.patch: the cache has {len(cache.layers)} layers, the model {n_layers}")
    saved = [(c, c._attn_implementation_internal) for c in configs]
    names = set()
    for c, impl in saved:
        if impl is None:
            continue
        base = impl[len(PREFIX):] if impl.startswith(PREFIX) else impl
        if base not in _BASES:
            raise ValueError(f"kvcore.patch: the model's attention implementation {impl!r} is not supported; load it "
                             f"with attn_implementation='sdpa' or 'eager'")
        names.add(PREFIX + base)
    with _lock:
        for name in names:
            if _users.get(name, 0) == 0:
                AttentionInterface.register(name, kvcore_attention)
                AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[name[len(PREFIX):]])
            _users[name] = _users.get(name, 0) + 1
    try:
        for c, impl in saved:
            if impl is not None and not impl.startswith(PREFIX):
                c._attn_implementation_internal = PREFIX + impl
        yield model
    finally:
        for c, impl in saved:
            c._attn_implementation_internal = impl
        with _lock:
            for name in names:
                _users[name] -= 1
                if _users[name] == 0:
                    del _users[name]
                    AttentionInterface._global_mapping.pop(name, None)
                    AttentionMaskInterface._global_mapping.pop(name, None)
