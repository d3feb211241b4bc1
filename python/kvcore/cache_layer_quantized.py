"""The quantized cache layer: packed codes + full-precision residual window and sinks,
read at decode by the fused ``decode_attention`` kernel (2 and 4 bits).

Per layer (rows R = B * Hkv, docs/FORMAT.md "The compressed cache"):

* sinks ``[B, Hkv, S, D]``: the first ``sink_tokens`` kept tokens, full precision;
* packed parts (:func:`kvcore.kv_block_codec.part_shapes`) for ``T_cap`` tokens;
* residual window ``[B, Hkv, R_cap, D]``: newest tokens, full precision;
* ``sink_len``, ``packed_len``, ``resid_len``: ``[R]`` int32 on the device, updated in
  place (the tensors keep their addresses for CUDA graphs).

Sealing: a decode step appends its token to the residual window; when a row's window is
full (``resid_len == R_cap``) its oldest ``group_size`` tokens are quantized as one key
block, written at the row's next packed block, and the window shifts left. The step
computes that for all rows and selects per row with ``torch.where``, so nothing depends
on device data on the host. In eager mode a host mirror of the lengths (exact: each step
adds one token per row) skips the sealing work on steps where no row seals and checks the
capacity; a ``static`` cache always runs it (one fixed graph).
"""
import warnings

import numpy as np
import torch

from . import ops
from .cache_layer_base import KVCacheLayerBase
from .decode_math import attend_segments
from .kv_block_codec import PER_TOKEN_PARTS, decode_blocks, encode_blocks, part_shapes
from .prompt_selection import mask_to_index, prompt_keep_mask, qfilter_directions_for, score_prompt, valid_from_mask

__all__ = ["QuantizedLayer"]

_warned_8bit = False


def _warn_8bit_once():
    global _warned_8bit
    if not _warned_8bit:
        _warned_8bit = True
        warnings.warn("kvcore.KVCache: 8-bit caches have no fused decode kernel (decode_attention takes 2 or 4 bits); "
                      "each decode step dequantizes the packed tokens and runs SDPA (slow path)", stacklevel=3)


class QuantizedLayer(KVCacheLayerBase):
    """A full-attention layer stored quantized (optionally after prompt eviction)."""

    def __init__(self, *args, budget_scale: float = 1.0, qfilter_directions=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.budget_scale = budget_scale
        self.qfilter_directions = qfilter_directions

    def _rotate(self, x):
        return ops.hadamard_rotate(x.contiguous(), self.cfg.rotation_seed) if self.cfg.rotation else x

    # ---- prefill --------------------------------------------------------------------
    def prefill(self, query, key, value, attention_mask, scale):
        cfg = self.cfg
        B, Hkv, L, D = key.shape
        R, G, Rc, S = B * Hkv, cfg.group_size, cfg.residual_window, cfg.sink_tokens
        self.batch_size = B
        valid = valid_from_mask(attention_mask, B, L, key.device)
        scores = None
        if cfg.evicts:
            dirs = qfilter_directions_for(query, valid, self.qfilter_directions) if cfg.evict == "qfilters" else None
            scores = score_prompt(cfg, query, key, valid, scale, dirs)
        keep = prompt_keep_mask(cfg, scores, valid, Hkv, self.budget_scale)
        idx, count = mask_to_index(keep.reshape(R, L))
        K = idx.shape[1]
        gi = idx[:, :, None].expand(R, K, D)
        kk = self._rotate(self._rows(key).gather(1, gi).to(self.dtype))
        vv = self._rows(value).gather(1, gi).to(self.dtype)

        s_r = count.clamp(max=S)
        m_r = count - s_r
        p_r = ((m_r - Rc + 1).clamp(min=0) + G - 1) // G * G  # smallest sealed prefix leaving < Rc in the window
        r_r = m_r - p_r
        P = int(p_r.max())
        grow = max(self.max_cache_len - L, 0)
        # The window never holds fewer than min(tokens, Rc - G) of a row's tokens (prefill
        # leaves >= Rc - G there, a seal leaves Rc - G), so whole blocks of at most
        # tokens - (Rc - G) are ever packed: allocating for every token double-counted the
        # window (composed presets measured 7.3x instead of their 8x budget).
        t_cap = max((int(m_r.max()) + grow - (Rc - G)) // G * G, G)
        self.t_cap = t_cap
        dt = self.dtype
        for name, (shape, dtype) in part_shapes(cfg, (B, Hkv), t_cap, D, dt).items():
            self._alloc(name, shape, dtype)
        self._alloc("k_resid", (B, Hkv, Rc, D), dt)
        self._alloc("v_resid", (B, Hkv, Rc, D), dt)
        if S:
            self._alloc("k_sink", (B, Hkv, S, D), dt)
            self._alloc("v_sink", (B, Hkv, S, D), dt)
        self.packed_len = self._alloc("packed_len", (R,), torch.int32)
        self.resid_len = self._alloc("resid_len", (R,), torch.int32)
        self.sink_len = self._alloc("sink_len", (R,), torch.int32) if S else None

        def take(start, n):  # rows' tokens start[r] .. start[r] + n - 1 of the kept ones, [R, n, D]
            j = (start[:, None] + torch.arange(n, device=kk.device)[None]).clamp(max=K - 1)
            jj = j[:, :, None].expand(R, n, D)
            return kk.gather(1, jj), vv.gather(1, jj)

        if P:
            pk, pv = take(s_r, P)
            parts = encode_blocks(pk.view(B, Hkv, P, D), pv.view(B, Hkv, P, D), cfg)
            for name, t in parts.items():
                self.storage[name][:, :, :t.shape[2]] = t
        rk, rv = take(s_r + p_r, Rc)
        self.storage["k_resid"].view(R, Rc, D).copy_(rk)
        self.storage["v_resid"].view(R, Rc, D).copy_(rv)
        if S:
            sk, sv = take(torch.zeros_like(s_r), S)
            self.storage["k_sink"].view(R, S, D).copy_(sk)
            self.storage["v_sink"].view(R, S, D).copy_(sv)
            self.sink_len.copy_(s_r)
        self.packed_len.copy_(p_r)
        self.resid_len.copy_(r_r)
        self._h_packed = p_r.cpu().numpy().astype(np.int64)
        self._h_resid = r_r.cpu().numpy().astype(np.int64)

    # ---- decode ---------------------------------------------------------------------
    def decode(self, query, key, value, scale):
        self._check_decode(query)
        cfg = self.cfg
        B, Hq, _, D = query.shape
        R, g, Rc = B * self.num_kv_heads, Hq // self.num_kv_heads, cfg.residual_window
        rows = torch.arange(R, device=self.device)
        kr = self.storage["k_resid"].view(R, Rc, D)
        vr = self.storage["v_resid"].view(R, Rc, D)
        slot = self.resid_len.long()
        kr[rows, slot] = self._rotate(key.reshape(R, D).to(self.dtype))
        vr[rows, slot] = value.reshape(R, D).to(self.dtype)
        self.resid_len.add_(1)
        if self.static:
            self._seal()
        else:
            self._h_resid += 1
            sealing = self._h_resid >= Rc
            if sealing.any():
                if (self._h_packed[sealing] + cfg.group_size > self.t_cap).any():
                    raise ValueError(f"kvcore.KVCache layer {self.layer_idx}: packed capacity {self.t_cap} tokens "
                                     "exceeded; raise max_cache_len")
                self._seal()
                self._h_packed[sealing] += cfg.group_size
                self._h_resid[sealing] -= cfg.group_size
        q = self._rotate(query.reshape(R, g, D).to(self.dtype))
        out = self._attend(q, scale, B)
        return out.to(query.dtype).reshape(B, 1, Hq, D)

    def _seal(self):
        """Quantizes the oldest key block of every row whose window is full (see module doc)."""
        cfg = self.cfg
        G, Rc, D = cfg.group_size, cfg.residual_window, self.head_dim
        R = self.resid_len.shape[0]
        B, Hkv = self.batch_size, self.num_kv_heads
        rows = torch.arange(R, device=self.device)
        seal = self.resid_len >= Rc  # [R]
        kr = self.storage["k_resid"].view(R, Rc, D)
        vr = self.storage["v_resid"].view(R, Rc, D)
        parts = encode_blocks(kr[:, :G].reshape(B, Hkv, G, D), vr[:, :G].reshape(B, Hkv, G, D), cfg)
        nblk = self.t_cap // G
        tb = torch.clamp(self.packed_len.long() // G, max=nblk - 1)
        for name, t in parts.items():
            st = self.storage[name]
            if name in PER_TOKEN_PARTS:
                stv, new = st.view(R, nblk, G, *st.shape[3:]), t.reshape(R, G, *t.shape[3:])
            else:
                stv, new = st.view(R, nblk, *st.shape[3:]), t.reshape(R, *t.shape[3:])
            m = seal.view(R, *([1] * (new.dim() - 1)))
            stv[rows, tb] = torch.where(m, new, stv[rows, tb])
        m = seal.view(R, 1, 1)
        for x in (kr, vr):
            x.copy_(torch.where(m, torch.cat([x[:, G:], x[:, :G]], 1), x))
        step = seal.to(torch.int32) * G
        self.packed_len.add_(step)
        self.resid_len.sub_(step)

    def _attend(self, q, scale, B):
        cfg, st, D = self.cfg, self.storage, self.head_dim
        R = q.shape[0]

        def rv(name):  # [B, Hkv, ...] -> [R, 1, ...]: each row is one "sequence" of one KV head
            t = st.get(name)
            return None if t is None else t.view(R, 1, *t.shape[2:])

        if cfg.bits in (2, 4):
            out, _ = ops.decode_attention(
                q, rv("k_codes"), rv("k_scale"), rv("k_mn"), rv("v_codes"), rv("v_scale"), rv("v_mn"),
                rv("k_resid"), rv("v_resid"), self.packed_len, self.resid_len, cfg.bits, cfg.group_size,
                sm_scale=scale, k_sink=rv("k_sink"), v_sink=rv("v_sink"), sink_len=self.sink_len,
                k_outlier_idx=rv("k_outlier_idx"), k_outlier_res=rv("k_outlier_res"),
                v_outlier_idx=rv("v_outlier_idx"), v_outlier_res=rv("v_outlier_res"),
                k_lowrank_a=rv("k_lowrank_a"), k_lowrank_b=rv("k_lowrank_b"),
                v_lowrank_a=rv("v_lowrank_a"), v_lowrank_b=rv("v_lowrank_b"), v_group_size=cfg.v_group)
            return out
        _warn_8bit_once()
        G = cfg.group_size
        T = self.t_cap if self.static else max(int(self._h_packed.max()), G)
        parts = {}
        for name in st:
            if name.startswith(("k_codes", "v_codes", "v_scale", "v_mn", "k_outlier", "v_outlier")):
                parts[name] = st[name][:, :, :T].contiguous()
            elif name.startswith(("k_scale", "k_mn", "k_lowrank", "v_lowrank")):
                parts[name] = st[name][:, :, :T // G].contiguous()
        pk, pv = decode_blocks(parts, cfg, self.dtype)
        segs = [(pk.reshape(R, T, D), pv.reshape(R, T, D), self.packed_len),
                (st["k_resid"].view(R, -1, D), st["v_resid"].view(R, -1, D), self.resid_len)]
        if self.sink_len is not None:
            segs.append((st["k_sink"].view(R, -1, D), st["v_sink"].view(R, -1, D), self.sink_len))
        return attend_segments(q, segs, scale, B)

    def used_tokens(self):
        n = self.packed_len + self.resid_len + (self.sink_len if self.sink_len is not None else 0)
        return n.view(self.batch_size, self.num_kv_heads).cpu()

    def capacity_tokens(self):
        return self.t_cap + self.cfg.residual_window + self.cfg.sink_tokens
