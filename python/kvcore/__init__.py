"""kvcore: compressed KV caches for LLM inference, with fused CPU/CUDA kernels.

Importing kvcore loads the native operators (``torch.ops.kvcore.*``) and their
fake implementations; it patches nothing.
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # registers torch.ops.kvcore.*
from . import _fake  # noqa: F401  (fake tensors for torch.compile / meta)
from . import ops
from . import eviction  # scorers and budgets of the eviction policies (issue 5)
from .ops import (compact_kv, decode_attention, dequantize_kv, extract_outliers, hadamard_rotate, hamming_scores,
                  lowrank_error, lsh_signature, quantize_kv, topk_select)

__version__ = "0.1.0"


def build_info() -> dict:
    """What this kvcore binary was compiled with.

    Returns a dict with ``version``, ``cpu`` (always True), ``cuda`` (CUDA kernels
    linked in), ``cuda_archs``, ``cuda_version``, ``torch_version`` (the torch the
    extension was built against) and ``compiler``.

    Example::

        >>> import kvcore
        >>> kvcore.build_info()["cuda"]
        False
    """
    return dict(_C.build_info())


__all__ = ["ops", "quantize_kv", "dequantize_kv", "decode_attention", "hadamard_rotate", "extract_outliers", "lowrank_error",
           "lsh_signature", "hamming_scores", "topk_select", "compact_kv", "build_info", "__version__"]

# Compressed caches for Hugging Face models (issue 6). transformers is imported only when
# these names are used, and importing them patches nothing (see kvcore.patch).
from .compression_config import CompressionConfig  # noqa: E402
from .presets import PRESETS, preset  # noqa: E402


def __getattr__(name):
    if name == "KVCache":
        from .kv_cache import KVCache
        return KVCache
    if name == "patch":
        from .attention_patch import patch
        return patch
    raise AttributeError(f"module 'kvcore' has no attribute {name!r}")


__all__ += ["CompressionConfig", "PRESETS", "preset", "KVCache", "patch"]
