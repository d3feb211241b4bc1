"""STAND-IN caches, for developing and testing the eval pipeline before ``kvcore.KVCache``
lands. They are NOT kvcore's compression methods and their numbers must never be
reported as kvcore results: every method built from them is named ``standin-*`` and
carries ``provider="stand-in"``; reports print a warning and the bars are not judged.

What they do (transformers cache layers, plain PyTorch plus kvcore's quantize ops):

* **fake quantization, KIVI-style**: tokens older than the newest ``residual`` are
  quantized a block of ``group`` tokens at a time with :func:`kvcore.ops.quantize_kv`
  (keys per channel, values per token) and stored *dequantized*; the bytes reported are
  those of the packed codes and metadata that quantize_kv returned, plus the
  full-precision tokens.
* **StreamingLLM eviction**: the first ``sinks`` tokens and the most recent ones are kept,
  at most ``budget`` tokens in all; the oldest non-sink token goes first.

Both can be combined (evict, then quantize what is kept). Eviction drops the same
positions in every row, so the bookkeeping is a few integers per layer.
"""
import torch
from transformers.cache_utils import Cache, DynamicLayer

from .. import ops


class StandInLayer(DynamicLayer):
    """One layer of a stand-in cache; held tokens are ``[sinks | quantized | full precision]``.

    Args:
        bits: 2, 4 or 8 to fake-quantize old tokens; None keeps everything exact.
        group: quantization group (tokens per key block, channels per value group).
        residual: newest tokens always kept in full precision (quantization only).
        budget: most tokens held (StreamingLLM eviction); None: no eviction.
        sinks: first tokens always kept when evicting.
    """

    def __init__(self, bits=None, group=64, residual=128, budget=None, sinks=4):
        super().__init__()
        self.bits, self.group, self.residual = bits, group, residual
        self.budget = budget
        self.sinks = sinks if budget is not None else 0
        self.cumulative_length = 0
        self.n_quantized = 0          # held tokens stored as dequantized codes, right after the sinks
        self.quant_bytes_per_token = 0  # K and V codes + metadata of one token-head row, all heads and batch

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def held(self) -> int:
        return 0 if not self.is_initialized or self.keys.dim() != 4 else self.keys.shape[-2]

    def get_mask_sizes(self, query_length: int):
        held = self.held()
        return held + query_length, self.cumulative_length - held

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        # attention of this step sees every held token exactly as stored, plus the new ones
        self.keys, self.values = keys, values
        self._evict()
        self._quantize()
        return keys, values

    def _evict(self):
        held = self.held()
        if self.budget is None or held <= self.budget:
            return
        drop = held - self.budget
        s = self.sinks
        self.keys = torch.cat([self.keys[:, :, :s], self.keys[:, :, s + drop:]], dim=-2)
        self.values = torch.cat([self.values[:, :, :s], self.values[:, :, s + drop:]], dim=-2)
        self.n_quantized -= min(drop, self.n_quantized)

    def _quantize(self):
        if self.bits is None:
            return
        g = self.group
        while self.held() - self.sinks - self.n_quantized >= self.residual + g:
            a = self.sinks + self.n_quantized
            k_blk = self.keys[:, :, a:a + g].contiguous()
            v_blk = self.values[:, :, a:a + g].contiguous()
            kq = ops.quantize_kv(k_blk, self.bits, g, "channel")
            vq = ops.quantize_kv(v_blk, self.bits, g, "token")
            k_hat = ops.dequantize_kv(*kq, self.bits, g, "channel")
            v_hat = ops.dequantize_kv(*vq, self.bits, g, "token")
            self.quant_bytes_per_token = sum(t.numel() * t.element_size() for t in (*kq, *vq)) // g
            self.keys = torch.cat([self.keys[:, :, :a], k_hat, self.keys[:, :, a + g:]], dim=-2)
            self.values = torch.cat([self.values[:, :, :a], v_hat, self.values[:, :, a + g:]], dim=-2)
            self.n_quantized += g

    def nbytes(self) -> int:
        """Bytes this layer would hold packed: codes and metadata of quantized tokens, plus exact tokens."""
        if self.held() == 0:
            return 0
        exact = self.held() - self.n_quantized
        per_exact = 2 * self.keys[:, :, :1].numel() * self.keys.element_size()
        return exact * per_exact + self.n_quantized * self.quant_bytes_per_token


class StandInCache(Cache):
    """A transformers cache made of :class:`StandInLayer` (one per decoder layer). STAND-IN."""

    is_stand_in = True

    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__(layers=[StandInLayer(**layer_kwargs) for _ in range(num_layers)])

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)
