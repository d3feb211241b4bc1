"""The compression methods that ``kvcore eval`` compares, and the ONE module that talks to
the cache. Everything else in ``kvcore.evaluate`` sees a method as a :class:`Method` and
a cache as "something passed as the model's cache, with ``nbytes()``", opened by
:func:`open_cache`.

Providers:

* ``kvcore``: the presets of ``kvcore.PRESETS`` (``none`` included: the uncompressed
  baseline through the same code path), run through ``kvcore.KVCache`` under
  ``kvcore.patch(model, cache)``.
* ``transformers``: a ``transformers.DynamicCache``, the baseline only if a build of
  kvcore ever lacks the ``none`` preset.

Budgets: eviction and composed methods are sized so that, at the end of a run of
``total_len`` tokens, they hold ``TARGET_BYTES_FRACTION`` (1/8) of the bytes of the
uncompressed cache (:func:`token_budget`); the measured ratio is reported, and the
bars check it.

The budget is set on the preset's ``CompressionConfig`` (field ``budget``, in tokens).
"""
import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch

from .errors import UnknownMethodError

TARGET_BYTES_FRACTION = 1 / 8
BASELINE = "none"

@dataclass(frozen=True)
class Method:
    """One compression method as eval runs it."""
    name: str                  # as typed in --methods and shown in reports
    family: str                # "baseline" | "quantization" | "eviction" | "composed"
    provider: str              # "kvcore" | "transformers"
    bytes_fraction: float = None   # target bytes / uncompressed bytes (eviction, composed); None: keep all tokens
    quant_bits: int = None     # bits of the quantized part (quantization, composed)
    group: int = 64            # quantization group
    residual: int = 128        # newest tokens kept exact by the quantizer
    sinks: int = 4             # first tokens kept exact by the evictor
    bits_per_element: float = None  # all-in bits of a packed element, when the preset knows it

    @property
    def evicts(self) -> bool:
        return self.bytes_fraction is not None


# ---------------------------------------------------------------- which methods exist


def family_of(name: str, cfg) -> str:
    """Family of a kvcore preset from its config: ``bits`` set, quantization; ``evict``
    set, eviction; both, composed."""
    if name == BASELINE:
        return "baseline"
    q, e = cfg.bits is not None, cfg.evict is not None
    return "composed" if q and e else "quantization" if q else "eviction" if e else "baseline"


def _kvcore_methods() -> dict:
    import kvcore

    out = {}
    for name in kvcore.PRESETS:
        cfg = kvcore.preset(name)
        fam = family_of(name, cfg)
        # the layout numbers token_budget needs (the Method defaults stand for the baseline)
        layout = {} if fam == "baseline" else dict(quant_bits=cfg.bits, group=cfg.group_size,
                                                    residual=cfg.residual_window, sinks=cfg.sink_tokens)
        out[name] = Method(name=name, family=fam, provider="kvcore",
                           bytes_fraction=TARGET_BYTES_FRACTION if fam in ("eviction", "composed") else None,
                           **layout)
    # baseline first; a transformers DynamicCache if kvcore has no "none" preset
    base = out.pop(BASELINE, None) or Method(name=BASELINE, family="baseline", provider="transformers")
    return {BASELINE: base, **out}


def available_methods() -> dict:
    """name -> :class:`Method` for every method eval can run now, the baseline first."""
    return _kvcore_methods()


def resolve_methods(names=None) -> list:
    """The methods to run for ``--methods a,b,c`` (None: all). The baseline is always run
    first, since every other method is reported against it."""
    avail = available_methods()
    if names is None:
        return list(avail.values())
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in avail]
    if unknown:
        raise UnknownMethodError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                                 f"valid methods: {', '.join(avail)}")
    ordered = [BASELINE] + [n for n in dict.fromkeys(names) if n != BASELINE]
    return [avail[n] for n in ordered]


# ---------------------------------------------------------------- budgets


def token_budget(method: Method, total_len: int, dtype_bits: int = 16, growth: int = 0) -> int:
    """Prompt tokens to keep so that the cache holds at most ``method.bytes_fraction`` of
    the uncompressed bytes of ``total_len`` tokens, after ``growth`` more tokens are
    appended while decoding (0 for a policy that holds its budget); None when the method
    keeps every token.

    The bytes are those the cache allocates (KVCache reports its capacity):
    * eviction only: every kept and appended token at ``dtype_bits``;
    * evict then quantize: the exact window and sinks (``residual + sinks`` tokens at
      ``dtype_bits``, allocated whole) plus the packed capacity at the preset's all-in bits:
      the kept prompt beyond the window (which always holds ``residual - group`` of it)
      and the appended tokens, in whole blocks (the cache rounds that capacity down).
    """
    if not method.evicts:
        return None
    if method.quant_bits is None:
        return max(1, math.floor(method.bytes_fraction * total_len) - growth)
    target = method.bytes_fraction * total_len * dtype_bits     # in token-elements x bits
    exact = method.sinks + method.residual
    bits = method.bits_per_element or method.quant_bits + 2 * dtype_bits / method.group
    packed = math.floor((target - exact * dtype_bits) / bits)
    kept = packed + (method.residual - method.group) - growth
    return min(total_len, max(1, kept))


# ---------------------------------------------------------------- caches


def _decode_growth(cfg, max_len: int, prompt_len) -> int:
    """Tokens an evicting cache holds beyond its prompt budget at the end of a run: none
    for a policy that evicts at every step, up to N for one that evicts every N steps,
    every decoded token for one that evicts the prompt only."""
    if prompt_len is None:
        return 0
    growth = max_len - prompt_len
    if cfg.evict_when == "every_step":
        return 0
    return min(growth, cfg.evict_every) if cfg.evict_when == "every_n" else growth


@contextlib.contextmanager
def open_cache(method: Method, model, batch_size: int, max_len: int, device, dtype, prompt_len: int = None):
    """A fresh cache for ``method``, sized for ``batch_size`` sequences of up to ``max_len``
    tokens, active on ``model`` inside the ``with`` block. Pass it as the model's cache.
    With ``prompt_len``, an eviction budget (applied to the prompt) leaves room for the
    ``max_len - prompt_len`` tokens decoded after it, so that the cache ends the run at
    the target fraction of the bytes."""
    if method.provider != "kvcore":
        from transformers import DynamicCache

        yield DynamicCache(config=model.config)
        return
    import kvcore

    cfg = kvcore.preset(method.name)
    if cfg.quantized:  # the preset's own all-in bits (outliers and low-rank count too) at this head_dim
        tc = model.config.get_text_config()
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        method = dataclasses.replace(method, bits_per_element=cfg.bits_per_element(head_dim))
    grows = _decode_growth(cfg, max_len, prompt_len) if method.evicts else 0
    budget = token_budget(method, max_len, dtype_bits=torch.finfo(dtype).bits, growth=grows)
    if budget is not None:
        cfg = dataclasses.replace(cfg, budget=budget)
    # packed caches store bf16/fp16 (decode_attention's dtypes); a float32 model's queries are cast
    cache_dtype = torch.bfloat16 if dtype == torch.float32 and cfg.quantized else dtype
    cache = kvcore.KVCache(model.config, cfg, max_batch_size=batch_size, max_cache_len=max_len, device=device,
                           dtype=cache_dtype)
    with kvcore.patch(model, cache):
        yield cache


def cache_nbytes(cache) -> int:
    """Bytes the cache holds now: its own ``nbytes()``, or for a transformers cache the
    key and value tensors of every layer."""
    if hasattr(cache, "nbytes"):
        return int(cache.nbytes())
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total
