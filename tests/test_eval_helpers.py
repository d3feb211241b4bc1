"""Shared fixtures of the ``kvcore eval`` tests: a tiny random Llama with a byte-level
tokenizer, saved as a Hugging Face folder, and a short text file. No test here."""
import pytest
import torch

ESSAY = ("The most important thing is to be working on something you care about. Startups are hard, and most of "
         "them fail. But the ones that succeed often started as projects their founders built for themselves! "
         "Why? Because the founders were their own first users.\nA good idea looks like a bad one at first. ")


def byte_tokenizer():
    """A reversible byte-level tokenizer with no merges (one token per byte), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=None)


def tiny_llama(dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # head_dim 64, as the real model's, so that every kvcore preset's group size fits
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).to(dtype).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama().save_pretrained(str(folder))
    byte_tokenizer().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def essay_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "essay.txt"
    path.write_text(ESSAY * 12)
    return path
