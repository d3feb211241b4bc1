"""``kvcore.KVCache``: a transformers ``Cache`` whose layers hold keys and values
compressed (quantized, evicted, or both) and attend with kvcore's kernels.

Use it inside :func:`kvcore.patch`, which routes the model's attention through the
cache layers (docs/KVCACHE.md).
"""
from typing import List, Optional, Sequence, Union

import torch
from transformers.cache_utils import Cache, get_layer_types_and_kwargs

from .cache_layer_full import FullPrecisionLayer, SlidingWindowLayer
from .cache_layer_quantized import QuantizedLayer
from .compression_config import CompressionConfig
from .presets import preset
from .prompt_selection import layer_budget_scales

__all__ = ["KVCache"]


def _text_config(config):
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


class KVCache(Cache):
    """A compressed KV cache for a Hugging Face causal LM (transformers >= 5 Cache API).

    Full-attention layers are quantized (``cfg.bits``) and/or evicted (``cfg.evict``);
    sliding-window layers (Mistral, Gemma 2/3, Qwen2 with ``use_sliding_window``) keep
    their window in a full-precision ring. KV heads are stored once (GQA/MQA), rows are
    left-aligned per sequence (left padding removed). Storage is allocated at prefill,
    sized to the kept prompt plus ``max_cache_len - prompt_len`` tokens of growth, and
    appended in place.

    Args:
        config: the model's config (``model.config``).
        compression: a :class:`CompressionConfig` or a preset name (``kvcore.PRESETS``).
        max_batch_size: batch size the cache will serve (checked at prefill); None: any.
        max_cache_len: longest sequence (padded prompt + generated tokens) per row.
        device, dtype: storage device and dtype (default: those of the first keys).
            Packed 2/4-bit caches need float16 or bfloat16 (queries are cast).
        qfilter_directions: per layer ``[Hq, D]`` Q-Filters directions (from
            :func:`kvcore.eviction.qfilters_calibrate`); default: calibrated on each
            prompt's own queries.
        static: run every decode step as one fixed sequence of tensor ops (always
            compute the sealing work, no host-side shortcuts, lengths updated in
            place), for ``torch.compile`` and CUDA graphs.

    Example::

        >>> cache = kvcore.KVCache(model.config, "kivi-2", max_batch_size=2, max_cache_len=512,
        ...                        dtype=torch.bfloat16)
        >>> with kvcore.patch(model):
        ...     out = model.generate(input_ids, attention_mask=mask, past_key_values=cache, max_new_tokens=32)
        >>> cache.nbytes()
        1234567
    """

    def __init__(self, config, compression: Union[CompressionConfig, str] = "none", max_batch_size: Optional[int] = None,
                 max_cache_len: Optional[int] = None, device=None, dtype: Optional[torch.dtype] = None,
                 qfilter_directions: Optional[Sequence[torch.Tensor]] = None, static: bool = False):
        cfg = preset(compression) if isinstance(compression, str) else compression
        if not isinstance(cfg, CompressionConfig):
            raise TypeError(f"kvcore.KVCache: compression must be a CompressionConfig or a preset name, got "
                            f"{type(compression).__name__}")
        if max_cache_len is None or int(max_cache_len) < 1:
            raise ValueError(f"kvcore.KVCache: max_cache_len must be a positive int (storage is preallocated), got "
                             f"{max_cache_len!r}")
        if max_batch_size is not None and int(max_batch_size) < 1:
            raise ValueError(f"kvcore.KVCache: max_batch_size must be >= 1, got {max_batch_size!r}")
        if dtype is not None and dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"kvcore.KVCache: dtype must be float16, bfloat16 or float32, got {dtype}")
        if dtype == torch.float32 and cfg.bits in (2, 4):
            raise ValueError("kvcore.KVCache: dtype=float32 with bits=2/4: decode_attention needs float16 or "
                             "bfloat16 storage (pass dtype=torch.bfloat16; float32 queries are cast)")
        tc = _text_config(config)
        self.compression = cfg
        # Stored under private names and exposed by the properties below: transformers
        # 5.0-5.17's Cache defines read-only max_batch_size / max_cache_len properties.
        self._max_batch_size = max_batch_size
        self._max_cache_len = int(max_cache_len)
        num_heads = tc.num_attention_heads
        num_kv = getattr(tc, "num_key_value_heads", None) or num_heads
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // num_heads
        if cfg.quantized:
            if head_dim not in (64, 128, 256):
                raise ValueError(f"kvcore.KVCache: head_dim={head_dim}: quantized caches need 64, 128 or 256")
            if head_dim % cfg.v_group:
                raise ValueError(f"kvcore.KVCache: head_dim={head_dim} is not a multiple of value_group_size="
                                 f"{cfg.v_group}")
        if getattr(tc, "attn_logit_softcapping", None):
            raise ValueError("kvcore.KVCache: attention logit soft-capping (Gemma 2) is not supported by the decode "
                             "path; set config.attn_logit_softcapping=None or use a model without it")
        layer_types, layer_kwargs = get_layer_types_and_kwargs(tc)
        if isinstance(layer_kwargs, dict):  # transformers <= 5.17: one dict for every layer
            layer_kwargs = [layer_kwargs] * len(layer_types)
        full_layers = [i for i, t in enumerate(layer_types) if t == "full_attention"]
        scales = dict(zip(full_layers, layer_budget_scales(cfg, len(full_layers))))
        if qfilter_directions is not None and len(qfilter_directions) != len(layer_types):
            raise ValueError(f"kvcore.KVCache: qfilter_directions has {len(qfilter_directions)} entries, the model "
                             f"{len(layer_types)} layers")
        layers = []
        for i, (lt, kw) in enumerate(zip(layer_types, layer_kwargs)):
            common = (cfg, i, num_kv, num_heads, head_dim, self.max_cache_len)
            opts = dict(device=device, dtype=dtype, static=static)
            if lt in ("sliding_attention", "chunked_attention"):
                if lt == "chunked_attention":
                    raise ValueError("kvcore.KVCache: chunked attention layers are not supported")
                layers.append(SlidingWindowLayer(*common, sliding_window=kw["sliding_window"], **opts))
            elif lt == "full_attention":
                cls = QuantizedLayer if cfg.quantized else FullPrecisionLayer
                qd = qfilter_directions[i] if qfilter_directions is not None else None
                layers.append(cls(*common, budget_scale=scales[i], qfilter_directions=qd, **opts))
            else:
                raise ValueError(f"kvcore.KVCache: layer {i} has type {lt!r}; supported: full_attention, "
                                 "sliding_attention")
        super().__init__(layers=layers)
        for layer in layers:
            layer.owner = self

    # ---- transformers hooks --------------------------------------------------------
    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        if self.max_batch_size is not None and key_states.shape[0] > self.max_batch_size:
            raise ValueError(f"kvcore.KVCache: batch {key_states.shape[0]} exceeds max_batch_size="
                             f"{self.max_batch_size}")
        return self.layers[layer_idx].update(key_states, value_states)

    # ---- memory ----------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes allocated by the cache's storage (all layers, capacity included).

        Example::

            >>> cache.nbytes() < dynamic_cache_bytes
            True
        """
        return sum(layer.nbytes() for layer in self.layers)

    def nbytes_by_layer(self) -> List[dict]:
        """Per layer: ``{"layer", "kind", "bytes" (allocated), "parts" ({name: bytes}),
        "capacity_tokens" (per row), "used_tokens" (mean over sequences and KV heads)}``.
        ``used_tokens`` reads the device lengths (a host synchronisation)."""
        out = []
        for layer in self.layers:
            d = {"layer": layer.layer_idx, "kind": type(layer).__name__, "bytes": layer.nbytes(),
                 "parts": layer.nbytes_parts()}
            if layer.prefilled:
                d["capacity_tokens"] = layer.capacity_tokens()
                d["used_tokens"] = float(layer.used_tokens().float().mean())
            out.append(d)
        return out

    @property
    def max_batch_size(self) -> Optional[int]:
        """The batch size the cache was built for (None: any)."""
        return self._max_batch_size

    @property
    def max_cache_len(self) -> int:
        """Longest sequence per row (padded prompt + generated tokens)."""
        return self._max_cache_len

    @property
    def is_compileable(self) -> bool:
        # generate() would auto-compile the model for a compileable cache; kvcore's static
        # decode step is compiled explicitly instead (docs/KVCACHE.md).
        return False
