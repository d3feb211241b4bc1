"""Named compression configurations for the methods kvcore implements.

The quantization presets follow their papers as far as kvcore's format goes (uniform
asymmetric codes, fp16/bf16 metadata); where a paper does more (KVQuant's pre-RoPE
non-uniform codes, GEAR's percentage-based outliers) the preset is the closest
configuration and docs/KVCACHE.md says what differs. Eviction presets keep a quarter of
each prompt by default (``budget=0.25``); change it with ``preset(name).replace(budget=...)``.
"""
from typing import Dict

from .compression_config import CompressionConfig

__all__ = ["PRESETS", "preset"]

_Q = {
    # KIVI (Liu et al., 2024): keys per channel, values per token, groups of 32, residual 128.
    "kivi-2": CompressionConfig(bits=2, group_size=32, residual_window=128),
    "kivi-4": CompressionConfig(bits=4, group_size=32, residual_window=128),
    # GEAR (Kang et al., 2024): 2-bit codes + sparse outliers + low-rank residual.
    "gear-2": CompressionConfig(bits=2, group_size=64, residual_window=128, key_outliers=1, value_outliers=1,
                                key_lowrank=2, value_lowrank=2),
    # KVQuant (Hooper et al., 2024): per-channel keys, dense-and-sparse outliers (~1%),
    # the first token kept in full precision; no residual window beyond one key block.
    "kvquant-2": CompressionConfig(bits=2, group_size=64, residual_window=64, sink_tokens=1, key_outliers=1,
                                   value_outliers=1),
    # The best 2-bit configuration found: rotation, key blocks of 32 tokens, value groups of
    # 64 channels, 2 key and 1 value outliers, and the first 4 tokens (attention sinks)
    # exact: 3.31 bits a packed element at head_dim 64. docs/KV-ERROR.md's best by
    # attention error (3 key outliers, no sinks, 3.50 bits) measured +6.3% perplexity in
    # `kvcore eval` against kivi-2's +10.9%; keeping the sinks exact took it to +1.2%, and
    # with one key outlier fewer (back under 3.5 bits all-in, sinks included) +2.3%
    # (docs/EVAL.md).
    "best-2": CompressionConfig(bits=2, group_size=32, value_group_size=64, residual_window=128, rotation=True,
                                key_outliers=2, value_outliers=1, sink_tokens=4),
}

_E = {
    # SnapKV (Li et al., 2024): the last 32 prompt queries vote (pooled over 7 tokens); prompt only.
    "snapkv": CompressionConfig(evict="snapkv", budget=0.25, snapkv_window=32, snapkv_kernel=7),
    # SnapKV for exact recall at small budgets (kvcore's): the prompt vote pooled over 31
    # tokens keeps whole spans (a number's digits, a sentence) where 7 kept fragments,
    # and the cache evicts again every 8 decode steps by accumulated attention mass (pooled
    # over 7), so the prompt keeps its share of the bytes instead of shrinking to leave room
    # for every decoded token. On SmolLM2 at 1/8 of the bytes (docs/EVAL.md): needles
    # 8% -> 83%, perplexity +7.2% -> +4.1%.
    "snapkv-span": CompressionConfig(evict="snapkv", budget=0.25, snapkv_window=32, snapkv_kernel=31,
                                     mass_kernel=7, evict_when="every_n", evict_every=8),
    # snapkv-span's prompt vote alone (pooled over 31 tokens, prompt only): the
    # prompt-time policy that composes with quantization ("snapkv-wide+kivi-4").
    "snapkv-wide": CompressionConfig(evict="snapkv", budget=0.25, snapkv_window=32, snapkv_kernel=31),
    # PyramidKV (Cai et al., 2024): SnapKV scores, budgets decreasing with depth.
    "pyramidkv": CompressionConfig(evict="snapkv", budget=0.25, layer_budgets="pyramid"),
    # Ada-KV (Feng et al., 2024) on SnapKV scores: per-head budgets.
    "adakv": CompressionConfig(evict="snapkv", budget=0.25, head_budgets="adaptive"),
    # H2O (Zhang et al., 2023): accumulated attention mass + recent tokens, one eviction per step.
    "h2o": CompressionConfig(evict="h2o", budget=0.25, recent_window=0.5 * 0.25, evict_when="every_step"),
    # StreamingLLM (Xiao et al., 2024): 4 sinks + a rolling window of the newest tokens.
    "streaming": CompressionConfig(evict="streaming", budget=0.25, sink_tokens=4, evict_when="every_step"),
    # Devoto et al. (2024): keys with a small L2 norm draw attention; prompt only.
    "l2norm": CompressionConfig(evict="l2norm", budget=0.25, recent_window=16),
    # Q-Filters (Godey et al., 2025): key projections on the queries' main direction
    # (calibrated on the prompt's own queries).
    "qfilters": CompressionConfig(evict="qfilters", budget=0.25, recent_window=16),
    # HashEvict (Liu et al., 2024): LSH signatures, the key farthest from the query is
    # overwritten at each step.
    "hashevict": CompressionConfig(evict="hashevict", budget=0.25, hash_bits=64, evict_when="every_step",
                                   recent_window=16),
}

_EVICTION_FIELDS = ("evict", "budget", "evict_when", "evict_every", "layer_budgets", "pyramid_ratio",
                    "head_budgets", "recent_window", "snapkv_window", "snapkv_kernel", "mass_kernel", "hash_bits")

# "More tokens, lower precision": evict the prompt, then quantize what is kept.
# (Any other "<eviction>+<quantization>" pair is available through preset(); the named
# ones are what `kvcore eval` runs, kept few so that its default run stays short.)
_COMBOS = ("snapkv+kivi-2", "snapkv+kivi-4", "pyramidkv+kivi-4", "adakv+kivi-4", "snapkv+best-2", "snapkv-wide+kivi-4")

# Reachable through preset() but not listed in PRESETS (so `kvcore eval` does not run
# it): 8 bits have no fused decode kernel, so each decode step dequantizes the packed
# tokens (a warned slow path, 5-10x slower per step than the 2/4-bit presets on a CPU).
_UNLISTED = {"int8": CompressionConfig(bits=8, group_size=64, residual_window=64)}


def _compose(evict_name: str, quant_name: str) -> CompressionConfig:
    ev, q = _E[evict_name], _Q[quant_name]
    return q.replace(**{f: getattr(ev, f) for f in _EVICTION_FIELDS},
                     sink_tokens=max(q.sink_tokens, ev.sink_tokens))


PRESETS: Dict[str, CompressionConfig] = {"none": CompressionConfig(), **_Q, **_E}
PRESETS.update({name: _compose(*name.split("+")) for name in _COMBOS})


def preset(name: str) -> CompressionConfig:
    """The named configuration; ``"<eviction>+<quantization>"`` composes any prompt-time
    eviction preset with any quantization preset.

    Example::

        >>> kvcore.preset("snapkv+kivi-4").bits, kvcore.preset("snapkv+kivi-4").evict
        (4, 'snapkv')
    """
    if not isinstance(name, str):
        raise TypeError(f"kvcore.preset: name must be a str, got {type(name).__name__}")
    if name in PRESETS:
        return PRESETS[name]
    if name in _UNLISTED:
        return _UNLISTED[name]
    if "+" in name:
        e, _, q = name.partition("+")
        if e in _E and q in _Q:
            if _E[e].evict_when != "prefill":
                raise ValueError(f"kvcore.preset: {name!r}: {e} evicts at every step, which needs full-precision "
                                 f"storage; compose a prompt-time policy ({', '.join(k for k in _E if _E[k].evict_when == 'prefill')}) "
                                 "with quantization")
            return _compose(e, q)
    raise ValueError(f"kvcore.preset: unknown name {name!r}; valid names: {', '.join(PRESETS)} "
                     f"(or '<eviction>+<quantization>' from {', '.join(_E)} and {', '.join(_Q)})")
