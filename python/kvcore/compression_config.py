"""What a :class:`kvcore.KVCache` does to the keys and values it holds: quantization,
eviction, or both composed (evict first, then quantize what is kept).

One flat dataclass so that a configuration is one line to print, compare and store;
:func:`kvcore.preset` names the configurations of the papers kvcore implements.
"""
from dataclasses import dataclass, fields, replace
from typing import Optional, Union

__all__ = ["CompressionConfig", "EVICTION_POLICIES", "EVICTION_WHEN"]

EVICTION_POLICIES = ("snapkv", "h2o", "streaming", "l2norm", "qfilters", "hashevict")
EVICTION_WHEN = ("prefill", "every_n", "every_step")
# Policies whose score needs the attention of the current query to every cached token, or
# the query itself: they can run at every decode step only on full-precision storage.
_LAYER_BUDGETS = ("uniform", "pyramid")
_HEAD_BUDGETS = ("uniform", "adaptive")


@dataclass(frozen=True)
class CompressionConfig:
    """Quantization and eviction settings of a compressed KV cache.

    Quantization (``bits`` set), KIVI layout (docs/FORMAT.md): keys are quantized per
    channel over blocks of ``group_size`` tokens, values per token over groups of
    ``value_group_size`` channels. The newest tokens stay in full precision in the
    residual window until a whole key block can be sealed.

    Args:
        bits: 2, 4 or 8 bits per element for keys and values alike; None: keep full
            precision (eviction only, or no compression at all). 2 and 4 decode with the
            fused ``decode_attention`` kernel; 8 has no fused kernel (each decode step
            dequantizes the packed part, with a one-time warning).
        group_size: key block in tokens (32, 64 or 128); also the sealing unit.
        value_group_size: value group in channels (32, 64 or 128); default group_size.
            The CUDA kernel needs ``group_size <= value_group_size``.
        residual_window: capacity of the full-precision window of newest tokens, a
            multiple of group_size: after every step it holds between
            ``residual_window - group_size`` and ``residual_window - 1`` newest tokens
            (fewer while the sequence is shorter).
        sink_tokens: the first tokens of each sequence, kept in full precision and never
            evicted (StreamingLLM's attention sinks; KVQuant keeps 1).
        key_outliers, value_outliers: exact sparse outliers per packed token (0-16).
        key_lowrank, value_lowrank: GEAR low-rank rank of the quantization residual per
            key block (0-8).
        rotation: rotate keys and queries by a seeded randomized Hadamard transform
            (scores unchanged, outlier channels spread); rotation_seed picks it.
        evict: eviction policy, one of ``EVICTION_POLICIES`` or None.
        budget: tokens kept per sequence, KV head and layer after eviction: an int
            (tokens) or a float in (0, 1] (fraction of each sequence's prompt).
        evict_when: ``"prefill"`` (compress the prompt once), ``"every_n"`` (also every
            ``evict_every`` decode steps, full-precision storage only) or
            ``"every_step"`` (a full cache overwrites its lowest-scoring token at each
            step, as HashEvict and H2O do; full-precision storage only).
        evict_every: N for ``"every_n"``.
        layer_budgets: ``"uniform"`` or ``"pyramid"`` (PyramidKV: decreasing with depth,
            first layer ``pyramid_ratio`` times the last, same total).
        head_budgets: ``"uniform"`` or ``"adaptive"`` (Ada-KV: a layer's budget shared by
            its KV heads according to their scores).
        recent_window: newest tokens always kept (an int, or a fraction of the prompt);
            SnapKV's observation window is kept too.
        snapkv_window, snapkv_kernel: SnapKV's observation window (queries) and pooling
            width of its prompt vote.
        mass_kernel: pooling width of the accumulated attention mass when a SnapKV cache
            evicts again while decoding (``evict_when`` ``"every_n"``/``"every_step"``);
            None: ``snapkv_kernel``.
        hash_bits: HashEvict signature bits (32, 64, 128 or 256).

    Example::

        >>> cfg = kvcore.CompressionConfig(bits=2, group_size=32, residual_window=128)
        >>> cfg.quantized, cfg.evicts
        (True, False)
    """

    # quantization
    bits: Optional[int] = None
    group_size: int = 64
    value_group_size: Optional[int] = None
    residual_window: int = 128
    sink_tokens: int = 0
    key_outliers: int = 0
    value_outliers: int = 0
    key_lowrank: int = 0
    value_lowrank: int = 0
    rotation: bool = False
    rotation_seed: int = 0
    # eviction
    evict: Optional[str] = None
    budget: Union[int, float, None] = None
    evict_when: str = "prefill"
    evict_every: int = 16
    layer_budgets: str = "uniform"
    pyramid_ratio: float = 8.0
    head_budgets: str = "uniform"
    recent_window: Union[int, float] = 0
    snapkv_window: int = 32
    snapkv_kernel: int = 7
    mass_kernel: Optional[int] = None
    hash_bits: int = 64

    def __post_init__(self):
        self.validate()

    # ---- derived -------------------------------------------------------------------
    @property
    def quantized(self) -> bool:
        """True when keys and values are stored as packed codes."""
        return self.bits is not None

    @property
    def evicts(self) -> bool:
        """True when tokens are evicted."""
        return self.evict is not None

    @property
    def v_group(self) -> int:
        """Value group size in channels (``value_group_size`` or ``group_size``)."""
        return self.value_group_size if self.value_group_size is not None else self.group_size

    def replace(self, **changes) -> "CompressionConfig":
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def bits_per_element(self, head_dim: int, meta_bits: int = 16) -> float:
        """Average bits stored per key/value element of a packed token, all-in: codes,
        the (scale, min) metadata, outliers (value + 1-byte index) and low-rank
        factors (fp16); full precision (``meta_bits``) when not quantized. Residual
        window and sinks are not counted (they are a fixed number of tokens).

        Example::

            >>> kvcore.preset("kivi-2").bits_per_element(128)
            3.0
        """
        if not self.quantized:
            return float(meta_bits)
        D, G, VG = head_dim, self.group_size, self.v_group
        k = self.bits + 2 * meta_bits / G + self.key_outliers * (meta_bits + 8) / D
        k += self.key_lowrank * 16 * (G + D) / (G * D)
        v = self.bits + 2 * meta_bits / VG + self.value_outliers * (meta_bits + 8) / D
        v += self.value_lowrank * 16 * (G + D) / (G * D)
        return (k + v) / 2

    # ---- validation ----------------------------------------------------------------
    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        def bad(field, msg):
            raise ValueError(f"kvcore.CompressionConfig: {field}={getattr(self, field)!r} {msg}")

        if self.bits is not None and self.bits not in (2, 4, 8):
            bad("bits", "must be 2, 4, 8 or None")
        if self.group_size not in (32, 64, 128):
            bad("group_size", "must be 32, 64 or 128")
        if self.value_group_size is not None and self.value_group_size not in (32, 64, 128):
            bad("value_group_size", "must be 32, 64, 128 or None")
        if self.residual_window < self.group_size or self.residual_window % self.group_size:
            bad("residual_window", f"must be a positive multiple of group_size={self.group_size}")
        if self.sink_tokens < 0:
            bad("sink_tokens", "must be >= 0")
        for f in ("key_outliers", "value_outliers"):
            if not 0 <= getattr(self, f) <= 16:
                bad(f, "must be in [0, 16]")
        for f in ("key_lowrank", "value_lowrank"):
            if not 0 <= getattr(self, f) <= 8:
                bad(f, "must be in [0, 8]")
        if self.rotation_seed < 0:
            bad("rotation_seed", "must be >= 0")
        if not self.quantized:
            for f in ("key_outliers", "value_outliers", "key_lowrank", "value_lowrank"):
                if getattr(self, f):
                    bad(f, "needs quantization (bits=None keeps full precision)")
            if self.rotation:
                bad("rotation", "needs quantization (bits=None keeps full precision)")
        if self.evict is None:
            if self.budget is not None:
                bad("budget", "is set but evict=None")
        else:
            if self.evict not in EVICTION_POLICIES:
                bad("evict", f"must be one of {EVICTION_POLICIES} or None")
            _check_amount(self, "budget", allow_zero=False)
            if self.evict_when not in EVICTION_WHEN:
                bad("evict_when", f"must be one of {EVICTION_WHEN}")
            if self.evict_when != "prefill" and self.quantized:
                bad("evict_when", "must be 'prefill' when quantizing: packed key blocks cannot lose single "
                                  "tokens without requantizing (evict, then quantize what is kept)")
            if self.evict == "hashevict" and self.evict_when != "every_step":
                bad("evict_when", "must be 'every_step' for hashevict (it replaces one token per step)")
        if self.evict_every < 1:
            bad("evict_every", "must be >= 1")
        if self.layer_budgets not in _LAYER_BUDGETS:
            bad("layer_budgets", f"must be one of {_LAYER_BUDGETS}")
        if self.pyramid_ratio < 1:
            bad("pyramid_ratio", "must be >= 1")
        if self.head_budgets not in _HEAD_BUDGETS:
            bad("head_budgets", f"must be one of {_HEAD_BUDGETS}")
        if self.head_budgets == "adaptive" and self.evict_when == "every_step":
            bad("head_budgets", "'adaptive' works with evict_when='prefill' or 'every_n'")
        _check_amount(self, "recent_window", allow_zero=True)
        if self.snapkv_window < 1:
            bad("snapkv_window", "must be >= 1")
        if self.snapkv_kernel < 1 or self.snapkv_kernel % 2 == 0:
            bad("snapkv_kernel", "must be odd and >= 1")
        if self.mass_kernel is not None and (self.mass_kernel < 1 or self.mass_kernel % 2 == 0):
            bad("mass_kernel", "must be None, or odd and >= 1")
        if self.hash_bits not in (32, 64, 128, 256):
            bad("hash_bits", "must be 32, 64, 128 or 256")


def _check_amount(cfg, field, allow_zero):
    """A token count (int >= 1, or >= 0) or a fraction in (0, 1]."""
    x = getattr(cfg, field)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"kvcore.CompressionConfig: {field}={x!r} must be an int (tokens) or a float fraction")
    if isinstance(x, int):
        if x < (0 if allow_zero else 1):
            raise ValueError(f"kvcore.CompressionConfig: {field}={x!r} must be >= {0 if allow_zero else 1} tokens")
    elif not (0.0 < x <= 1.0 or (allow_zero and x == 0.0)):
        raise ValueError(f"kvcore.CompressionConfig: {field}={x!r} as a fraction must be in (0, 1]")


def resolve_amount(x: Union[int, float], prompt_len: int) -> int:
    """Tokens for a budget given as tokens (int) or as a fraction of the prompt (float)."""
    if isinstance(x, float):
        import math
        return max(1, math.ceil(x * prompt_len)) if x > 0 else 0
    return int(x)
