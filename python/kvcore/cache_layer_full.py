"""Full-precision cache layers: no compression, eviction only, and sliding-window layers.

Storage per layer: keys and values ``[B, Hkv, capacity, D]`` in the cache dtype, rows
left-aligned (padding removed) with per-row lengths; the decode step attends with SDPA
masked by those lengths (:mod:`kvcore.decode_math`).
"""
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from . import ops
from .cache_layer_base import KVCacheLayerBase
from .compression_config import CompressionConfig
from .decode_math import attend_rows, attend_rows_with_mass
from .prompt_selection import (tokens_per_row, mask_to_index, prompt_keep_mask, qfilter_directions_for, score_prompt,
                               valid_from_mask)

__all__ = ["FullPrecisionLayer", "SlidingWindowLayer"]


class FullPrecisionLayer(KVCacheLayerBase):
    """A full-attention layer kept in full precision, optionally with token eviction.

    Capacity: the kept prompt plus room to grow to ``max_cache_len`` (no eviction, or
    eviction at prefill only); the budget (``evict_when="every_step"``: a full row
    overwrites its lowest-scoring token, HashEvict / H2O / StreamingLLM); the budget plus
    ``evict_every`` (``"every_n"``: every N steps the row is scored and compacted back to
    its budget with ``compact_kv``).

    Per-slot bookkeeping, allocated only when a policy needs it and counted in
    ``nbytes``: the token's index in its row (``pos``, int32; recency and sinks), the
    accumulated attention mass (``mass``, float32; H2O, and SnapKV at every N steps) and
    the key signatures (``sig``, int32 words; HashEvict).
    """

    def __init__(self, *args, budget_scale: float = 1.0, qfilter_directions: Optional[Tensor] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.budget_scale = budget_scale
        self.qfilter_directions = qfilter_directions
        self._step = 0

    @property
    def _needs_mass(self):
        return self.cfg.evict == "h2o" or (self.cfg.evict == "snapkv" and self.cfg.evict_when == "every_n")

    # ---- prefill --------------------------------------------------------------------
    def prefill(self, query, key, value, attention_mask, scale):
        cfg = self.cfg
        B, Hkv, L, D = key.shape
        R = B * Hkv
        self.batch_size = B
        valid = valid_from_mask(attention_mask, B, L, key.device)
        if cfg.evict == "qfilters":
            self._qf_dirs = qfilter_directions_for(query, valid, self.qfilter_directions)
        scores = score_prompt(cfg, query, key, valid, scale, getattr(self, "_qf_dirs", None)) if cfg.evicts else None
        keep = prompt_keep_mask(cfg, scores, valid, Hkv, self.budget_scale)
        idx, count = mask_to_index(keep.reshape(R, L))
        K = idx.shape[1]
        n_prompt = valid.sum(1).repeat_interleave(Hkv)  # [R] valid prompt tokens per row
        grow = max(self.max_cache_len - L, 0)
        if not cfg.evicts or cfg.evict_when == "prefill":
            cap = K + grow
            self._budget_host = None
        else:
            budget = torch.clamp(torch.floor(tokens_per_row(cfg.budget, n_prompt).double() * self.budget_scale).long(), min=1)
            budget = torch.maximum(budget, count)  # never below what the prompt kept (protected tokens)
            extra = cfg.evict_every if cfg.evict_when == "every_n" else 0
            cap = int(budget.max()) + extra
            self._budget_host = budget.cpu().numpy()
            self.budget = budget.to(torch.int32)
            self._recent = tokens_per_row(cfg.recent_window, n_prompt)
        cap = max(cap, 1)
        dt = self.dtype
        k = self._alloc("k", (B, Hkv, cap, D), dt)
        v = self._alloc("v", (B, Hkv, cap, D), dt)
        gi = idx[:, :, None].expand(R, K, D)
        k.view(R, cap, D)[:, :K] = self._rows(key).gather(1, gi).to(dt)
        v.view(R, cap, D)[:, :K] = self._rows(value).gather(1, gi).to(dt)
        self.lengths = count.to(torch.int32)
        self._len_host = count.cpu().numpy().astype(np.int64)
        self._tokens_seen = count.to(torch.int32).clone()  # tokens ever appended per row (for pos)
        if cfg.evicts and cfg.evict_when != "prefill":
            pos = self._alloc("pos", (R, cap), torch.int32)
            # a kept token's index among its row's valid prompt tokens
            rank = (valid.long().cumsum(1) - 1).repeat_interleave(Hkv, 0)  # [R, L]
            pos[:, :K] = rank.gather(1, idx).to(torch.int32)
            self._tokens_seen = n_prompt.to(torch.int32)
            if self._needs_mass:
                mass = self._alloc("mass", (R, cap), torch.float32)
                if cfg.evict == "h2o":
                    mass[:, :K] = scores.reshape(R, L).gather(1, idx).clamp(min=0)
            if cfg.evict == "hashevict":
                sig = self._alloc("sig", (R, cap, cfg.hash_bits // 32), torch.int32)
                sig[:, :K] = ops.lsh_signature(k.view(R, cap, D)[:, :K].contiguous(), cfg.hash_bits, 0)
        self.capacity = cap

    # ---- decode ---------------------------------------------------------------------
    def decode(self, query, key, value, scale):
        self._check_decode(query)
        cfg = self.cfg
        B, Hq, _, D = query.shape
        Hkv = self.num_kv_heads
        R, g = B * Hkv, Hq // Hkv
        k = self.storage["k"].view(R, self.capacity, D)
        v = self.storage["v"].view(R, self.capacity, D)
        q = query.reshape(R, g, D)
        kn, vn = key.reshape(R, D).to(self.dtype), value.reshape(R, D).to(self.dtype)
        if cfg.evicts and cfg.evict_when == "every_step":
            slot = self._replacement_slot(q)
        else:
            if not self.static and (self._len_host >= self.capacity).any():
                raise ValueError(f"kvcore.KVCache layer {self.layer_idx}: capacity {self.capacity} tokens exceeded; "
                                 "raise max_cache_len")
            slot = self.lengths.long().clamp(max=self.capacity - 1)
        rows = torch.arange(R, device=k.device)
        k[rows, slot] = kn
        v[rows, slot] = vn
        grew = slot == self.lengths.long()
        self.lengths = self.lengths + grew.to(torch.int32)
        if "pos" in self.storage:
            self.storage["pos"][rows, slot] = self._tokens_seen
            self._tokens_seen = self._tokens_seen + 1
        if "mass" in self.storage:
            self.storage["mass"][rows, slot] = 0.0
        if "sig" in self.storage:
            self.storage["sig"][rows, slot] = ops.lsh_signature(kn.contiguous(), cfg.hash_bits, 0)
        if self._len_host is not None:
            self._len_host = np.minimum(self._len_host + 1, self._budget_host) if self._budget_host is not None and \
                cfg.evict_when == "every_step" else self._len_host + 1
        # The attended prefix grows in steps of 128 tokens (masked past each row's length):
        # a new length every step and layer made CUDA SDPA plan a new kernel each time
        # (2.7 decode tokens/s for PyramidKV's per-layer budgets on an H100).
        T = self.capacity if self.static else int(min(-(-int(self._len_host.max()) // 128) * 128, self.capacity))
        if "mass" in self.storage:
            out = attend_rows_with_mass(q, k[:, :T], v[:, :T], self.lengths, scale, self.storage["mass"][:, :T])
        else:
            out = attend_rows(q, k[:, :T], v[:, :T], self.lengths, scale, B)
        self._step += 1
        if cfg.evicts and cfg.evict_when == "every_n" and self._step % cfg.evict_every == 0:
            self._evict_now(q, scale)
        return out.reshape(B, 1, Hq, D)

    def _protected(self, T):
        """[R, T] bool: sinks and the recent window, by token index."""
        pos = self.storage["pos"][:, :T].long()
        n = self._tokens_seen.long()[:, None]
        return (pos < self.cfg.sink_tokens) | (pos >= n - self._recent[:, None])

    def _token_scores(self, q, T):
        """[R, T] float32 scores of the stored tokens (higher = keep)."""
        cfg, D = self.cfg, self.head_dim
        k = self.storage["k"].view(-1, self.capacity, D)[:, :T]
        if cfg.evict in ("h2o", "snapkv"):
            s = self.storage["mass"][:, :T].clone()
            width = cfg.snapkv_kernel if cfg.mass_kernel is None else cfg.mass_kernel
            if cfg.evict == "snapkv" and width > 1:
                s = torch.nn.functional.max_pool1d(s[:, None], width, 1, width // 2)[:, 0]
            return s
        if cfg.evict == "streaming":
            return self.storage["pos"][:, :T].float()
        if cfg.evict == "l2norm":
            return -k.float().norm(dim=-1)
        if cfg.evict == "qfilters":
            u = self._qf_dirs
            Hkv = self.num_kv_heads
            w = u.reshape(Hkv, -1, D).sum(1)  # [Hkv, D]
            return torch.einsum("bhtd,hd->bht", k.reshape(-1, Hkv, T, D).float(), w).reshape(-1, T)
        if cfg.evict == "hashevict":
            qs = ops.lsh_signature(q.contiguous(), cfg.hash_bits, 0)  # [R, g, W]: a row is a "sequence" of 1 KV head
            ks = self.storage["sig"][:, :T].unsqueeze(1).contiguous()  # [R, 1, T, W]
            return ops.hamming_scores(qs, ks, self.lengths)[:, 0].float()
        raise AssertionError(cfg.evict)

    def _replacement_slot(self, q):
        """Where each row writes its new token: the next free slot while below budget,
        else the slot of its lowest-scoring unprotected token (ties to the oldest)."""
        T = self.capacity
        s = self._token_scores(q, T)
        valid = torch.arange(T, device=s.device)[None] < self.lengths.long()[:, None]
        s = s.masked_fill(~valid | self._protected(T), float("inf"))
        lowest = s.argmin(-1)
        full = self.lengths.long() >= self.budget.long()
        return torch.where(full, lowest, self.lengths.long().clamp(max=T - 1))

    def _evict_now(self, q, scale):
        """Every N steps: keep each row's budget of best tokens, compacted in place."""
        T = int(min(self._len_host.max(), self.capacity)) if not self.static else self.capacity
        s = self._token_scores(q, T)
        valid = torch.arange(T, device=s.device)[None] < self.lengths.long()[:, None]
        s = s.masked_fill(self._protected(T), float("inf")).masked_fill(~valid, float("-inf"))
        order = torch.sort(s.flip(-1), dim=-1, descending=True, stable=True).indices
        order = (T - 1) - order
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(T, device=s.device).expand_as(order))
        keep = valid & (rank < self.budget.long()[:, None])
        idx, count = mask_to_index(keep)
        idx32, count32 = idx.to(torch.int32), count.to(torch.int32)
        R, D = self.lengths.shape[0], self.head_dim
        for name in ("k", "v"):
            ops.compact_kv(self.storage[name].view(R, self.capacity, D), idx32, count32)
        for name in ("pos", "mass", "sig"):
            if name in self.storage:
                x = self.storage[name]
                ops.compact_kv(x.view(R, self.capacity, -1), idx32, count32)
        if self.cfg.evict == "snapkv":
            self.storage["mass"].zero_()  # the next window of decode queries votes afresh
        self.lengths = count32
        self._len_host = count.cpu().numpy().astype(np.int64)

    def used_tokens(self):
        return self.lengths.view(self.batch_size, self.num_kv_heads).cpu()

    def capacity_tokens(self):
        return self.capacity


class SlidingWindowLayer(KVCacheLayerBase):
    """A sliding-window layer: the last ``window`` tokens of each row in a ring of full
    precision (the window bounds its memory; it is not compressed). Attention is over the
    ring in any order, which is what a window needs: token ``p`` sees ``p - window + 1 .. p``.
    """

    is_sliding = True

    def __init__(self, *args, sliding_window: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.window = sliding_window

    def get_max_length(self) -> int:
        return self.window

    def prefill(self, query, key, value, attention_mask, scale):
        B, Hkv, L, D = key.shape
        R = B * Hkv
        self.batch_size = B
        valid = valid_from_mask(attention_mask, B, L, key.device)
        # the window's tokens: the last `window` valid ones
        rank_from_end = valid.flip(1).long().cumsum(1).flip(1)  # 1 for the newest valid token
        valid = valid & (rank_from_end <= self.window)
        keep = valid[:, None, :].expand(B, Hkv, L).reshape(R, L)
        idx, count = mask_to_index(keep)
        K = idx.shape[1]
        W = max(min(self.window, self.max_cache_len), 1)
        k = self._alloc("k", (B, Hkv, W, D), self.dtype)
        v = self._alloc("v", (B, Hkv, W, D), self.dtype)
        gi = idx[:, :, None].expand(R, K, D)
        k.view(R, W, D)[:, :K] = self._rows(key).gather(1, gi).to(self.dtype)[:, :W]
        v.view(R, W, D)[:, :K] = self._rows(value).gather(1, gi).to(self.dtype)[:, :W]
        self.written = count.to(torch.int32)  # tokens written so far; the next goes to slot written % W
        self.capacity = W

    def decode(self, query, key, value, scale):
        self._check_decode(query)
        B, Hq, _, D = query.shape
        R, W = B * self.num_kv_heads, self.capacity
        k = self.storage["k"].view(R, W, D)
        v = self.storage["v"].view(R, W, D)
        rows = torch.arange(R, device=k.device)
        slot = (self.written % W).long()
        k[rows, slot] = key.reshape(R, D).to(self.dtype)
        v[rows, slot] = value.reshape(R, D).to(self.dtype)
        self.written = self.written + 1
        lengths = torch.clamp(self.written, max=W)
        out = attend_rows(query.reshape(R, Hq // self.num_kv_heads, D), k, v, lengths, scale, B)
        return out.reshape(B, 1, Hq, D)

    def used_tokens(self):
        return torch.clamp(self.written, max=self.capacity).view(self.batch_size, self.num_kv_heads).cpu()

    def capacity_tokens(self):
        return self.capacity
