"""Needle in a haystack: can the model still retrieve one fact from a long prompt when
its cache is compressed?

A trial hides the sentence "The special magic number for <city> is <6 digits>." at a
given depth (fraction of the haystack before it, moved back to the nearest sentence end)
in a haystack of exactly ``length`` tokens cut from the text, and asks, as a plain
completion that a base model can follow too::

    <haystack with the needle>

    Question: What is the special magic number for <city>?
    Answer: The special magic number for <city> is

The model greedily generates a few tokens; the trial is correct when the first number
in them is exactly the needle's number. All trials of one length have the same number
of tokens, so they run as one batch with no padding.
"""
import random
import re
from dataclasses import dataclass

import torch

from .decoding import forward_step
from .errors import TextFileError
from .methods import open_cache
from .prefill_replay import prefill_prompt
from .text import Corpus, encode

CITIES = ("Chicago", "Lisbon", "Nairobi", "Osaka", "Toronto", "Vienna", "Santiago", "Cairo", "Oslo", "Lima",
          "Hanoi", "Dublin", "Perth", "Seville", "Montreal", "Kyoto")
SENTENCE_ENDS = (".", "!", "?", "\n")


@dataclass
class NeedleTrial:
    length: int
    depth: float
    city: str
    number: str
    ids: list            # the whole prompt, exactly `length` tokens


def needle_sentence(city: str, number: str) -> str:
    return f" The special magic number for {city} is {number}."


def question(city: str) -> str:
    return f"\n\nQuestion: What is the special magic number for {city}?\nAnswer: The special magic number for {city} is"


def first_number(text: str):
    """The first run of digits in ``text`` (thousands separators dropped), or None."""
    m = re.search(r"\d[\d,]*", text)
    return m.group(0).replace(",", "") if m else None


def is_correct(answer: str, number: str) -> bool:
    """Exact match: the first number the model wrote is the needle's number."""
    return first_number(answer) == number


def _sentence_boundary(tokenizer, hay: list, pos: int, cache: dict) -> int:
    """The largest p <= pos where a sentence ends just before token p (0 if none)."""
    while pos > 0:
        t = hay[pos - 1]
        if t not in cache:
            cache[t] = tokenizer.decode([t]).rstrip(" ").endswith(SENTENCE_ENDS)
        if cache[t]:
            return pos
        pos -= 1
    return 0


def build_trials(tokenizer, corpus: Corpus, lengths, depths, per_depth: int = 1, seed: int = 0) -> list:
    """Trials for every (length, depth), ``per_depth`` each, with seeded cities, numbers
    and haystack offsets (different parts of the text for different trials)."""
    rng = random.Random(seed)
    n = corpus.ids.numel()
    trials, ends = [], {}
    for length in lengths:
        for depth in depths:
            for _ in range(per_depth):
                city, number = rng.choice(CITIES), str(rng.randint(100000, 999999))
                needle, q = encode(tokenizer, needle_sentence(city, number)), encode(tokenizer, question(city))
                room = length - len(corpus.prefix) - len(needle) - len(q)
                if room < 16:
                    raise ValueError(f"needle length {length} is too short for the prompt ({length - room} tokens)")
                if room > n:
                    raise TextFileError(f"the text ({corpus.name}) has {n} tokens, fewer than a {length}-token haystack")
                start = rng.randrange(0, n - room + 1)
                hay = corpus.ids[start:start + room].tolist()
                at = _sentence_boundary(tokenizer, hay, int(depth * room), ends)
                ids = corpus.prefix + hay[:at] + needle + hay[at:] + q
                trials.append(NeedleTrial(length=length, depth=depth, city=city, number=number, ids=ids))
    return trials


@dataclass
class NeedleOutcome:
    trial: NeedleTrial
    answer: str
    correct: bool


def run_trials(model, tokenizer, method, trials: list, device, dtype, gen_tokens: int = 10, tick=None,
               replay=None) -> list:
    """Prefill each batch of equal-length trials through ``method``'s cache, generate
    ``gen_tokens`` greedily, and score. Returns one :class:`NeedleOutcome` per trial.
    ``replay``: a :class:`PrefillReplay` shared across methods (each batch's model
    prefill then runs once)."""
    by_len = {}
    for t in trials:
        by_len.setdefault(len(t.ids), []).append(t)
    outcomes = []
    for L, batch in by_len.items():
        ids = torch.tensor([t.ids for t in batch], device=device)
        out = []
        with torch.inference_mode(), open_cache(method, model, len(batch), L + gen_tokens, device, dtype,
                                                       prompt_len=L) as cache:
            nxt = prefill_prompt(model, ids, cache, replay)[:, -1].argmax(-1, keepdim=True)
            for i in range(gen_tokens):
                out.append(nxt)
                if i + 1 < gen_tokens:
                    nxt = forward_step(model, nxt, cache, L + i)[:, -1].argmax(-1, keepdim=True)
                if tick:
                    tick(1)
        gen = torch.cat(out, 1).tolist()
        for t, g in zip(batch, gen):
            answer = tokenizer.decode(g, skip_special_tokens=True)
            outcomes.append(NeedleOutcome(trial=t, answer=answer, correct=is_correct(answer, t.number)))
    return outcomes


def accuracy(outcomes: list, key=None) -> dict:
    """Overall accuracy (key None) or accuracy per ``key(trial)`` value."""
    if key is None:
        return sum(o.correct for o in outcomes) / max(len(outcomes), 1)
    groups = {}
    for o in outcomes:
        groups.setdefault(key(o.trial), []).append(o.correct)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}
