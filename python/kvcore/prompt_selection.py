"""Which prompt tokens a cache layer keeps after prefill: padding is dropped (rows are
left-aligned), then an eviction policy may keep only a budget of the rest.

Everything here runs once per layer at prefill, on the prompt as the model computed it
(padded layout ``[B, H, L, D]``, left padding allowed), and may synchronise with the host
(the kept counts size the storage).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import eviction, ops
from .compression_config import CompressionConfig

__all__ = ["valid_from_mask", "qfilter_directions_for", "mask_to_index", "score_prompt", "prompt_keep_mask",
           "layer_budget_scales", "tokens_per_row"]

_QUERY_CHUNK = 256  # queries per chunk when summing attention mass over a long prompt


def valid_from_mask(attention_mask: Optional[Tensor], B: int, L: int, device) -> Tensor:
    """``[B, L]`` bool: the keys the prompt's last query may attend to (non-padding; for a
    sliding-window layer also inside the window). ``attention_mask`` is what the model
    hands its attention function: None, a 4D bool mask (True = attend) or a 4D additive
    float mask (0 = attend)."""
    if attention_mask is None:
        return torch.ones(B, L, dtype=torch.bool, device=device)
    if attention_mask.dim() != 4:
        raise ValueError(f"kvcore: expected a 4D attention mask at prefill, got shape {tuple(attention_mask.shape)}")
    row = attention_mask[:, 0, -1, -L:]
    valid = row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2
    return valid.expand(B, L)


def mask_to_index(keep: Tensor) -> Tuple[Tensor, Tensor]:
    """``keep [R, L]`` bool -> ``(idx [R, K] int64 ascending, count [R] int64)`` with
    ``K = max(count)`` (one host synchronisation); entries past ``count[r]`` repeat the
    last kept position (any valid index, ignored by the lengths)."""
    count = keep.sum(1)
    K = max(int(count.max()), 1) if keep.numel() else 1
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :K]
    last = order.gather(1, (count - 1).clamp(min=0)[:, None])
    j = torch.arange(K, device=keep.device)[None]
    return torch.where(j < count[:, None], order, last), count


def layer_budget_scales(cfg: CompressionConfig, n_layers: int) -> list:
    """Per full-attention layer, the factor on the budget: 1 (uniform) or PyramidKV's
    linear decrease with depth (mean 1)."""
    if cfg.layer_budgets == "uniform" or n_layers <= 1:
        return [1.0] * n_layers
    unit = 1 << 16
    b = eviction.pyramid_budgets(unit * n_layers, n_layers, cfg.pyramid_ratio)
    return [x / unit for x in b]


def tokens_per_row(x, n: Tensor) -> Tensor:
    """Tokens per row for an int amount or a fraction of n (int64 [R])."""
    if isinstance(x, float):
        return torch.ceil(n.double() * x).long() if x > 0 else torch.zeros_like(n)
    return torch.full_like(n, int(x))


def _causal_attention_sum(q: Tensor, k: Tensor, valid: Tensor, scale: float) -> Tensor:
    """Sum over queries and each KV head's query heads of softmax(q k^T), each valid query
    attending to the valid keys at or before it: ``[B, Hkv, L]`` float32. ``q`` holds the
    last ``Lq`` of the ``L`` prompt positions (all of them for H2O, SnapKV's observation
    window for SnapKV). Chunked over queries; a chunk multiplies only the keys it can see."""
    B, Hq, Lq, D = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    g = Hq // Hkv
    kf = k.float()
    out = torch.zeros(B, Hkv, L, dtype=torch.float32, device=k.device)
    pos = torch.arange(L, device=k.device)
    for s in range(L - Lq, L, _QUERY_CHUNK):
        e = min(s + _QUERY_CHUNK, L)
        c = e - s
        qc = q[:, :, s - (L - Lq):e - (L - Lq)].float().reshape(B, Hkv, g * c, D)
        logits = torch.matmul(qc, kf[:, :, :e].transpose(-1, -2)).mul_(scale)  # [B, Hkv, g*c, e]
        hidden = (pos[None, :e] > pos[s:e, None])[None] | ~valid[:, None, :e] | ~valid[:, s:e, None]  # [B, c, e]
        logits.view(B, Hkv, g, c, e).masked_fill_(hidden[:, None, None], float("-inf"))
        p = torch.softmax(logits, dim=-1).nan_to_num_(0.0)  # queries that see nothing: NaN rows -> 0
        out[:, :, :e] += p.sum(2)
    return out


def qfilter_directions_for(q: Tensor, valid: Tensor, given: Optional[Tensor]) -> Tensor:
    """Q-Filters' ``[Hq, D]`` directions: the given calibration, else calibrated on this
    prompt's own valid queries (``q [B, Hq, L, D]``)."""
    if given is not None:
        return given.to(q.device)
    return eviction.qfilters_calibrate(q.transpose(1, 2)[valid])


def score_prompt(cfg: CompressionConfig, q: Tensor, k: Tensor, valid: Tensor, scale: float,
                 qfilter_directions: Optional[Tensor] = None) -> Tensor:
    """Eviction scores of the prompt's keys, higher = keep, in the padded layout.

    Args:
        q: ``[B, Hq, L, D]`` queries (after RoPE, unrotated), k: ``[B, Hkv, L, D]``.
        valid: ``[B, L]`` bool.

    Returns:
        ``[B, Hkv, L]`` float32 (-inf at invalid positions).
    """
    B, Hq, L, D = q.shape
    Hkv = k.shape[1]
    policy = cfg.evict
    if policy == "l2norm":
        s = eviction.l2norm_scores(k)
    elif policy == "qfilters":
        s = eviction.qfilters_scores(k, qfilter_directions_for(q, valid, qfilter_directions))
    elif policy == "streaming":
        s = torch.arange(L, device=k.device, dtype=torch.float32).expand(B, Hkv, L).clone()  # newest first
    elif policy == "hashevict":
        sig_k = ops.lsh_signature(k.contiguous(), cfg.hash_bits, 0)
        sig_q = ops.lsh_signature(q[:, :, -1].contiguous(), cfg.hash_bits, 0)
        n = torch.full((B,), L, dtype=torch.int32, device=k.device)
        s = ops.hamming_scores(sig_q, sig_k, n).float()
    elif policy == "snapkv":
        w = min(cfg.snapkv_window, L)
        s = _causal_attention_sum(q[:, :, L - w:], k, valid, scale)
        if cfg.snapkv_kernel > 1:
            s = F.max_pool1d(s.reshape(B * Hkv, 1, L), cfg.snapkv_kernel, stride=1,
                             padding=cfg.snapkv_kernel // 2).reshape(B, Hkv, L)
    elif policy == "h2o":
        s = _causal_attention_sum(q, k, valid, scale)
    else:
        raise ValueError(f"kvcore: unknown eviction policy {policy!r}")
    return s.float().masked_fill(~valid[:, None, :], float("-inf"))


def prompt_keep_mask(cfg: CompressionConfig, scores: Optional[Tensor], valid: Tensor, Hkv: int,
                     budget_scale: float = 1.0) -> Tensor:
    """``[B, Hkv, L]`` bool: the prompt tokens a layer keeps. Without eviction every valid
    token; with it, the sinks and the recent window (SnapKV's observation window
    included) plus the best-scoring others up to the budget (ties to the newer token).

    ``budget_scale`` multiplies the budget (PyramidKV's per-layer factor)."""
    B, L = valid.shape
    keep_all = valid[:, None, :].expand(B, Hkv, L)
    if not cfg.evicts:
        return keep_all.clone()
    n = valid.sum(1)  # [B]
    rank_in_valid = valid.long().cumsum(1) - 1  # [B, L]
    recent = tokens_per_row(cfg.recent_window, n)
    if cfg.evict == "snapkv":
        recent = torch.maximum(recent, torch.full_like(n, cfg.snapkv_window))
    protected = valid & ((rank_in_valid < cfg.sink_tokens) | (rank_in_valid >= (n - recent)[:, None]))
    budget = torch.clamp(torch.floor(tokens_per_row(cfg.budget, n).double() * budget_scale).long(), min=1)
    budget = torch.minimum(budget, n)  # [B]
    s = scores.masked_fill(protected[:, None, :], float("inf")).masked_fill(~valid[:, None, :], float("-inf"))
    s = torch.nan_to_num(s, nan=float("-inf"), posinf=float("inf"))
    per_head = budget[:, None].expand(B, Hkv)
    if cfg.head_budgets == "adaptive":
        per_head = _adaptive(cfg, scores, valid, budget)
    # rank by score, descending; ties to the newer token (sort the reversed row stably)
    order = torch.sort(s.flip(-1), dim=-1, descending=True, stable=True).indices
    order = (L - 1) - order
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(L, device=s.device).expand_as(order))
    return valid[:, None, :] & (protected[:, None, :] | (rank < per_head[:, :, None]))


def _adaptive(cfg, scores, valid, budget):
    """Ada-KV per-head budgets on the valid tokens, compacted per sequence."""
    B, Hkv, L = scores.shape
    idx, n = mask_to_index(valid)
    sc = scores.gather(2, idx[:, None, :].expand(B, Hkv, idx.shape[1]))
    norm = "sum" if cfg.evict in ("snapkv", "h2o") else "softmax"
    out = []
    for b in range(B):  # budgets differ per sequence when given as a fraction
        out.append(eviction.adaptive_head_budgets(sc[b:b + 1], n[b:b + 1].to(torch.int32), int(budget[b]), norm))
    return torch.cat(out).long()
