"""The text that ``kvcore eval`` scores and hides needles in: the embedded Paul Graham
essays or any text file, tokenized once."""
from dataclasses import dataclass
from pathlib import Path

import torch

from . import assets
from .errors import TextFileError


@dataclass
class Corpus:
    """Token ids of the whole text and the ids a sequence starts with (BOS if the tokenizer adds one)."""
    name: str
    ids: torch.Tensor     # [N] int64
    prefix: list          # e.g. [bos_id] or []


def read_text(path=None) -> tuple:
    """(name, text) of ``--text`` (None: the essays, joined by blank lines)."""
    if path is None:
        files = assets.default_text_files()
        return assets.TEXT_NAME, "\n\n".join(f.read_text(encoding="utf-8").strip() for f in files)
    p = Path(path).expanduser()
    if not p.exists():
        raise TextFileError(f"--text {path}: no such file")
    if not p.is_file():
        raise TextFileError(f"--text {path}: not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TextFileError(f"--text {path}: not UTF-8 text") from None
    except OSError as e:
        raise TextFileError(f"--text {path}: cannot read it ({e.strerror})") from None
    if not text.strip():
        raise TextFileError(f"--text {path}: the file is empty")
    return p.name, text


def sequence_prefix(tokenizer) -> list:
    """What the tokenizer puts before a text on its own (BOS for Llama-3-like tokenizers,
    nothing for SmolLM2 on transformers 5), so that windows cut from the middle of the
    text start the way the model saw sequences start in training."""
    with_special = tokenizer("a", add_special_tokens=True).input_ids
    without = tokenizer("a", add_special_tokens=False).input_ids
    return list(with_special[: len(with_special) - len(without)]) if with_special[-len(without):] == without else []


def encode(tokenizer, text: str) -> list:
    """Token ids of ``text`` without special tokens."""
    return tokenizer(text, add_special_tokens=False).input_ids


def load_corpus(tokenizer, path=None) -> Corpus:
    name, text = read_text(path)
    return Corpus(name=name, ids=torch.tensor(encode(tokenizer, text), dtype=torch.long),
                  prefix=sequence_prefix(tokenizer))


def windows(corpus: Corpus, count: int, length: int) -> torch.Tensor:
    """``count`` non-overlapping windows of ``length`` tokens (the prefix included), spread
    evenly over the text: ``[count, length]``."""
    body = length - len(corpus.prefix)
    n = corpus.ids.numel()
    if count * body > n:
        raise TextFileError(f"the text ({corpus.name}) has {n} tokens; {count} windows of {body} tokens need "
                            f"{count * body} (use a longer --text, or a smaller --context/--decode-tokens/--ppl-batch)")
    stride = (n - body) // max(count - 1, 1) if count > 1 else 0
    rows = [torch.cat([torch.tensor(corpus.prefix, dtype=torch.long), corpus.ids[i * stride: i * stride + body]])
            for i in range(count)]
    return torch.stack(rows)
