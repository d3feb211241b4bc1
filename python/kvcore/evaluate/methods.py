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
import re
from dataclasses import dataclass

import torch

from .errors import UnknownMethodError

TARGET_BYTES_FRACTION = 1 / 8
BASELINE = "none"

# Name prefixes of quantization presets (the rest, without "+", are eviction presets).
QUANT_PREFIXES = ("kivi", "gear", "kvquant", "quant", "int", "fp8", "mikv")


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


def family_of(name: str, cfg=None) -> str:
    """Family of a kvcore preset: from its config (``bits`` set: quantization; ``evict``
    set: eviction; both: composed), else from its name."""
    if name == BASELINE:
        return "baseline"
    if cfg is not None and hasattr(cfg, "bits") and hasattr(cfg, "evict"):
        q, e = cfg.bits is not None, cfg.evict is not None
        return "composed" if q and e else "quantization" if q else "eviction" if e else "baseline"
    if "+" in name:
        return "composed"
    return "quantization" if name.lower().startswith(QUANT_PREFIXES) else "eviction"


def _quant_bits_from_name(name: str):
    """4 for "kivi-4", "snapkv+kivi-4"; None when the name carries no bit width."""
    quant = name.split("+")[-1]
    m = re.search(r"-(\d+)$", quant)
    return int(m.group(1)) if m and quant.lower().startswith(QUANT_PREFIXES) else None


# Where the layout numbers that token_budget needs sit in a CompressionConfig (the first
# name found wins; the Method defaults stand otherwise).
LAYOUT_FIELDS = dict(quant_bits=("bits", "quant_bits", "nbits"), group=("group_size", "group"),
                     residual=("residual", "residual_length", "resid_len", "residual_window"),
                     sinks=("sinks", "sink_tokens", "num_sinks"))
CONFIG_PARTS = ("quant", "quantization", "evict", "eviction")


def _layout_from_config(cfg) -> dict:
    """The quantization bits, group, residual window and sinks a preset declares, if any."""
    found = {}
    for obj in [cfg] + [getattr(cfg, p) for p in CONFIG_PARTS if getattr(cfg, p, None) is not None]:
        for key, names in LAYOUT_FIELDS.items():
            for n in names:
                v = getattr(obj, n, None)
                if key not in found and isinstance(v, int) and not isinstance(v, bool):
                    found[key] = v
    return found


def _kvcore_methods() -> dict:
    import kvcore

    out = {}
    for name in kvcore.PRESETS:
        fam = family_of(name, kvcore.preset(name))
        layout = _layout_from_config(kvcore.preset(name)) if fam != "baseline" else {}
        if fam in ("quantization", "composed"):
            layout.setdefault("quant_bits", _quant_bits_from_name(name))
        else:
            layout.pop("quant_bits", None)
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
      the kept prompt beyond the window (which holds at least ``residual - group`` of it)
      and the appended tokens, rounded up to a whole block.
    """
    if not method.evicts:
        return None
    if method.quant_bits is None:
        return max(1, math.floor(method.bytes_fraction * total_len) - growth)
    target = method.bytes_fraction * total_len * dtype_bits     # in token-elements x bits
    exact = method.sinks + method.residual
    bits = method.bits_per_element or method.quant_bits + 2 * dtype_bits / method.group
    packed = math.floor((target - exact * dtype_bits) / bits) - method.group   # one block of rounding
    kept = packed + (method.residual - method.group) - growth
    return min(total_len, max(1, kept))


# ---------------------------------------------------------------- caches


def _kvcore_config(method: Method, budget):
    """The kvcore CompressionConfig for a preset, with its eviction budget in tokens."""
    import kvcore

    cfg = kvcore.preset(method.name)
    if budget is not None:
        cfg = dataclasses.replace(cfg, budget=budget)
    return cfg


@contextlib.contextmanager
def open_cache(method: Method, model, batch_size: int, max_len: int, device, dtype, prompt_len: int = None):
    """A fresh cache for ``method``, sized for ``batch_size`` sequences of up to ``max_len``
    tokens, active on ``model`` inside the ``with`` block. Pass it as the model's cache.
    With ``prompt_len``, an eviction budget (applied to the prompt) leaves room for the
    ``max_len - prompt_len`` tokens decoded after it, so that the cache ends the run at
    the target fraction of the bytes."""
    if method.provider == "kvcore" and method.quant_bits is not None:
        import kvcore

        # the preset's own all-in bits (outliers and low-rank factors count too) at this head_dim
        tc = model.config.get_text_config()
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        cfg = kvcore.preset(method.name)
        if hasattr(cfg, "bits_per_element"):
            method = dataclasses.replace(method, bits_per_element=cfg.bits_per_element(head_dim))
    grows = 0
    if prompt_len is not None and method.provider == "kvcore" and method.evicts:
        # What the cache holds at the end: an every-step policy holds its budget; one that
        # evicts the prompt only also keeps every decoded token; every N steps, up to N more.
        import kvcore

        cfg = kvcore.preset(method.name)
        when = getattr(cfg, "evict_when", "prefill")
        growth = max_len - prompt_len
        grows = 0 if when == "every_step" else min(growth, cfg.evict_every) if when == "every_n" else growth
    budget = token_budget(method, max_len, dtype_bits=torch.finfo(dtype).bits, growth=grows)
    if method.provider == "kvcore":
        import kvcore

        cfg = _kvcore_config(method, budget)
        # packed caches store bf16/fp16 (decode_attention's dtypes); a float32 model's
        # queries are cast
        cache_dtype = torch.bfloat16 if dtype == torch.float32 and cfg.quantized else dtype
        cache = kvcore.KVCache(model.config, cfg, max_batch_size=batch_size, max_cache_len=max_len, device=device,
                               dtype=cache_dtype)
        with kvcore.patch(model, cache):
            yield cache
    else:
        from transformers import DynamicCache

        yield DynamicCache(config=model.config)


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
