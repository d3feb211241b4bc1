"""The method list and the cache interface, including the path taken once kvcore has
``KVCache``/``PRESETS``/``patch`` (here faked), so that swapping in the real cache is
exercised before it lands."""
import contextlib
import dataclasses

import pytest
import torch
from transformers import DynamicCache

import kvcore
from kvcore.evaluate import methods, perplexity
from kvcore.evaluate.errors import UnknownMethodError
from test_eval_helpers import tiny_llama


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    bits: int = None
    group_size: int = 64
    residual: int = 128
    budget: object = None


class FakeKVCache(DynamicCache):
    """Records how eval builds it; holds everything (an exact cache)."""
    made = []

    def __init__(self, config, cfg, max_batch_size, max_cache_len, device, dtype):
        super().__init__(config=config)
        FakeKVCache.made.append(dict(cfg=cfg, B=max_batch_size, N=max_cache_len, device=device, dtype=dtype))
        self.patched = False

    def nbytes(self):
        return 123


@pytest.fixture
def fake_kvcore(monkeypatch):
    presets = {"none": FakeConfig(), "kivi-2": FakeConfig(bits=2), "snapkv": FakeConfig(),
               "snapkv+kivi-4": FakeConfig(bits=4, residual=32)}
    active = []

    @contextlib.contextmanager
    def patch(model, cache):
        active.append(cache)
        cache.patched = True
        yield
        active.remove(cache)

    monkeypatch.setattr(kvcore, "PRESETS", presets, raising=False)
    monkeypatch.setattr(kvcore, "preset", lambda name: presets[name], raising=False)
    monkeypatch.setattr(kvcore, "KVCache", FakeKVCache, raising=False)
    monkeypatch.setattr(kvcore, "patch", patch, raising=False)
    FakeKVCache.made = []
    return active


def test_without_kvcache_only_labelled_stand_ins(monkeypatch):
    for n in ("KVCache", "PRESETS", "patch"):
        monkeypatch.delattr(kvcore, n, raising=False)
    avail = methods.available_methods()
    assert list(avail)[0] == "none" and avail["none"].provider == "transformers"
    for name, m in list(avail.items())[1:]:
        assert name.startswith("standin-") and m.provider == "stand-in"


def test_presets_become_methods(fake_kvcore):
    avail = methods.available_methods()
    assert list(avail) == ["none", "kivi-2", "snapkv", "snapkv+kivi-4"]
    assert {n: m.family for n, m in avail.items()} == dict(none="baseline", **{"kivi-2": "quantization"},
                                                           snapkv="eviction", **{"snapkv+kivi-4": "composed"})
    assert all(m.provider == "kvcore" for m in avail.values())
    assert avail["kivi-2"].quant_bits == 2 and avail["kivi-2"].bytes_fraction is None
    assert avail["snapkv"].bytes_fraction == 1 / 8 and avail["snapkv"].quant_bits is None
    comp = avail["snapkv+kivi-4"]
    assert comp.quant_bits == 4 and comp.residual == 32 and comp.bytes_fraction == 1 / 8


def test_resolve_methods_orders_and_validates(fake_kvcore):
    assert [m.name for m in methods.resolve_methods(["snapkv", "kivi-2", "snapkv"])] == ["none", "snapkv", "kivi-2"]
    with pytest.raises(UnknownMethodError, match="valid methods: none, kivi-2, snapkv, snapkv\\+kivi-4"):
        methods.resolve_methods(["kivi-3"])


def test_kvcore_cache_is_built_patched_and_given_its_budget(fake_kvcore):
    model = tiny_llama()
    g = torch.Generator().manual_seed(0)
    w = torch.randint(0, 256, (2, 81), generator=g)
    for name in ("none", "snapkv", "snapkv+kivi-4"):
        m = methods.available_methods()[name]
        res = perplexity.decode_perplexity(model, m, w, 40, "cpu", torch.float32)
        made = FakeKVCache.made[-1]
        assert (made["B"], made["N"], made["dtype"]) == (2, 80, torch.float32)
        assert made["cfg"].budget == methods.token_budget(m, 80, 32)
        assert res.kv_bytes == 123
        assert res.ppl == pytest.approx(perplexity.full_sequence_perplexity(model, w, 40, "cpu"), rel=1e-5)
    assert FakeKVCache.made[0]["cfg"].budget is None and FakeKVCache.made[1]["cfg"].budget == 10
    assert not fake_kvcore   # every patch was undone


def test_baseline_falls_back_to_transformers_without_a_none_preset(fake_kvcore, monkeypatch):
    monkeypatch.setattr(kvcore, "PRESETS", {"kivi-2": FakeConfig(bits=2)})
    avail = methods.available_methods()
    assert list(avail) == ["none", "kivi-2"] and avail["none"].provider == "transformers"
