"""Needle trials: exact lengths, the needle where it should be, exact-match scoring."""
import torch

from kvcore.evaluate import needle
from kvcore.evaluate.methods import Method
from kvcore.evaluate.text import Corpus, encode, sequence_prefix
from test_eval_helpers import ESSAY, byte_tokenizer, tiny_llama


def test_exact_match_scoring():
    assert needle.is_correct(" 482913.", "482913")
    assert needle.is_correct("482,913 and then 5", "482913")
    assert not needle.is_correct(" 48291.", "482913")          # a prefix is not a match
    assert not needle.is_correct(" 4829130", "482913")          # nor a longer number
    assert not needle.is_correct(" 111111 482913", "482913")    # the first number counts
    assert not needle.is_correct(" the number", "482913")
    assert needle.first_number("abc") is None


def _corpus(tok):
    return Corpus("essay", torch.tensor(encode(tok, ESSAY * 20)), sequence_prefix(tok))


def test_trials_have_exact_length_and_hold_the_needle_at_depth():
    tok = byte_tokenizer()
    corpus = _corpus(tok)
    trials = needle.build_trials(tok, corpus, lengths=(300, 500), depths=(0.1, 0.5, 0.9), per_depth=2, seed=3)
    assert len(trials) == 12
    for t in trials:
        assert len(t.ids) == t.length
        text = tok.decode(t.ids)
        sentence = needle.needle_sentence(t.city, t.number)
        assert sentence in text
        assert text.endswith(f"special magic number for {t.city} is")
        hay_len = len(text) - len(sentence) - len(needle.question(t.city))
        at = text.index(sentence)
        assert at <= t.depth * hay_len + 1                       # moved back, never forward ...
        assert text[:at].rstrip(" ").endswith(needle.SENTENCE_ENDS) or at == 0   # ... to a sentence end
        assert at >= t.depth * hay_len - 250                     # and not far (sentences are < 250 chars)
    assert len({t.number for t in trials}) == 12
    again = needle.build_trials(tok, corpus, lengths=(300, 500), depths=(0.1, 0.5, 0.9), per_depth=2, seed=3)
    assert [t.ids for t in again] == [t.ids for t in trials]     # seeded


def test_run_trials_scores_every_trial_and_accuracy_groups():
    tok = byte_tokenizer()
    trials = needle.build_trials(tok, _corpus(tok), lengths=(200, 260), depths=(0.5, 0.9), per_depth=1)
    ticks = []
    out = needle.run_trials(tiny_llama(), tok, Method("none", "baseline", "transformers"), trials, "cpu",
                            torch.float32, gen_tokens=7, tick=ticks.append)
    assert [o.trial for o in out] == trials and len(ticks) == 2 * 7
    assert all(o.correct == needle.is_correct(o.answer, o.trial.number) for o in out)
    fake = [needle.NeedleOutcome(t, "", c) for t, c in zip(trials, [True, False, True, True])]
    assert needle.accuracy(fake) == 0.75
    assert needle.accuracy(fake, key=lambda t: t.length) == {200: 0.5, 260: 1.0}
