"""kvcore eval runs the model's prefill of a prompt once and replays it into each
method's cache: the replayed caches must give exactly what a real prefill gives."""
import pytest
import torch

from kvcore.evaluate import needle, perplexity
from kvcore.evaluate.methods import available_methods
from kvcore.evaluate.prefill_replay import PrefillReplay
from test_eval_helpers import tiny_llama

# every family: plain, quantized (incl. rotation, outliers, low rank), evicting at prefill
# (snapkv, pyramidkv, h2o, hashevict) and while decoding (streaming), and composed
METHODS = ["none", "kivi-2", "best-2", "gear-2", "snapkv", "pyramidkv", "h2o", "streaming", "hashevict",
           "snapkv+kivi-4"]


def _windows(B=2, L=330):
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (B, L), generator=g)


@pytest.mark.parametrize("name", METHODS)
def test_replayed_prefill_scores_like_a_real_one(name):
    model = tiny_llama(torch.bfloat16)
    w = _windows()
    methods = available_methods()
    replay = PrefillReplay()
    # the first method records (here another one than the method under test), the second replays
    recorder = methods["kivi-4" if name == "none" else "none"]
    perplexity.decode_perplexity(model, recorder, w, 256, "cpu", torch.bfloat16, replay=replay)
    prompt_forwards = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: prompt_forwards.append(kwargs["input_ids"].shape[1] > 1), with_kwargs=True)
    replayed = perplexity.decode_perplexity(model, methods[name], w, 256, "cpu", torch.bfloat16, replay=replay)
    hook.remove()
    assert prompt_forwards and not any(prompt_forwards)  # decode steps only: the prefill was replayed
    real = perplexity.decode_perplexity(model, methods[name], w, 256, "cpu", torch.bfloat16)
    assert replayed.token_nll == real.token_nll
    assert replayed.kv_bytes == real.kv_bytes and replayed.peak_kv_bytes == real.peak_kv_bytes


def test_replayed_needle_answers_equal_real_ones():
    from test_eval_helpers import byte_tokenizer
    from kvcore.evaluate.needle import NeedleTrial

    model, tok = tiny_llama(torch.bfloat16), byte_tokenizer()
    g = torch.Generator().manual_seed(5)
    trials = [NeedleTrial(length=300, depth=0.5, city="Oslo", number="123456",
                          ids=torch.randint(0, 256, (300,), generator=g).tolist()) for _ in range(2)]
    replay = PrefillReplay()
    methods = available_methods()
    needle.run_trials(model, tok, methods["none"], trials, "cpu", torch.bfloat16, 6, replay=replay)
    for name in ("kivi-2", "snapkv+kivi-4"):
        a = needle.run_trials(model, tok, methods[name], trials, "cpu", torch.bfloat16, 6, replay=replay)
        b = needle.run_trials(model, tok, methods[name], trials, "cpu", torch.bfloat16, 6)
        assert [o.answer for o in a] == [o.answer for o in b]


def test_a_different_prompt_is_not_replayed():
    model = tiny_llama(torch.float32)
    replay = PrefillReplay()
    methods = available_methods()
    a = perplexity.decode_perplexity(model, methods["none"], _windows(2, 120), 64, "cpu", torch.float32, replay=replay)
    w2 = _windows(2, 120).flip(1)
    b = perplexity.decode_perplexity(model, methods["none"], w2, 64, "cpu", torch.float32, replay=replay)
    c = perplexity.decode_perplexity(model, methods["none"], w2, 64, "cpu", torch.float32)
    assert b.token_nll == c.token_nll and a.token_nll != b.token_nll
