"""What a ``kvcore eval`` run measures, and its sizes: the default run (16 minutes for
the 19 presets on a 2-core CPU, docs/EVAL.md) and ``--quick`` (two minutes, for CI)."""
import dataclasses
from dataclasses import dataclass


@dataclass
class EvalSettings:
    """Sizes of one eval run (every method gets the same)."""
    context: int = 2048                    # perplexity: tokens prefilled before decoding
    decode_tokens: int = 128               # perplexity: tokens decoded and scored per window
    ppl_batch: int = 4                     # perplexity: windows decoded together
    needle_lengths: tuple = (1024, 2048)   # haystack lengths in tokens (the whole prompt)
    needle_depths: tuple = (0.1, 0.5, 0.9)
    needles_per_depth: int = 2             # trials per (length, depth)
    needle_gen_tokens: int = 8             # tokens generated for an answer (a space, 6 digits, one more)
    seed: int = 0
    dtype: str = "bfloat16"                # model and uncompressed cache

    def replace(self, **changes) -> "EvalSettings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT = EvalSettings()
QUICK = EvalSettings(context=256, decode_tokens=32, ppl_batch=2, needle_lengths=(512,), needles_per_depth=1)
