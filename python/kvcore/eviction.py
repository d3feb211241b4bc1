"""Token-eviction scorers and budget allocation (issue 5), in plain PyTorch on any device.

A policy is: score the cached tokens ([B, Hkv, T], higher = keep), pick a budget per
layer and head, select with :func:`kvcore.topk_select`, and compact every part of the
cache with :func:`kvcore.compact_kv`. Scores are per KV head: a GQA group's query heads
are summed, so a KV head keeps what its whole group needs. Nothing here synchronises
with the host.
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["l2norm_scores", "snapkv_scores", "qfilters_calibrate", "qfilters_scores", "streaming_select",
           "hashevict_replace", "block_select", "uniform_budgets", "pyramid_budgets", "adaptive_head_budgets"]


def _group_sum(x: Tensor, Hkv: int) -> Tensor:
    """[B, Hq, ...] -> [B, Hkv, ...]: sum over the query heads of each KV head."""
    B, Hq = x.shape[:2]
    return x.reshape(B, Hkv, Hq // Hkv, *x.shape[2:]).sum(2)


def l2norm_scores(k: Tensor) -> Tensor:
    """Keys with a small L2 norm draw the most attention (Devoto et al., 2024): score
    ``-||k_t||``.

    Args:
        k: ``[B, Hkv, T, D]`` keys (any float dtype).

    Returns:
        ``[B, Hkv, T]`` float32.

    Example::

        >>> s = l2norm_scores(torch.randn(1, 2, 10, 64))
        >>> s.shape
        torch.Size([1, 2, 10])
    """
    return -k.float().norm(dim=-1)


def _causal_mask(first: int, n: int, T: int, device) -> Tensor:
    """[n, T] True where query ``first + i`` must not see key ``t`` (t > first + i)."""
    return torch.arange(T, device=device)[None] > (first + torch.arange(n, device=device))[:, None]


def h2o_scores(q: Tensor, k: Tensor, sm_scale: float = None, chunk: int = 512) -> Tensor:
    """H2O's heavy-hitter score after prefill: the attention every prompt query pays to
    each key under the causal mask, summed over the queries and the group's query heads.
    During decode, ``decode_attention(..., attn_mass=scores)`` keeps adding to it.

    Args:
        q: ``[B, Hq, T, D]`` the prompt's queries (after RoPE, as the keys).
        k: ``[B, Hkv, T, D]`` the prompt's keys; Hq a multiple of Hkv.
        sm_scale: softmax scale, default ``1/sqrt(D)``.
        chunk: queries per step (memory is ``B * Hq * chunk * T`` floats).

    Returns:
        ``[B, Hkv, T]`` float32; each query head adds 1 per query, so a row sums to
        ``T * Hq / Hkv``.

    Example::

        >>> h2o_scores(torch.randn(1, 8, 100, 64), torch.randn(1, 2, 100, 64)).shape
        torch.Size([1, 2, 100])
    """
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    if Hq % Hkv:
        raise ValueError(f"kvcore.h2o_scores: Hq={Hq} must be a multiple of Hkv={Hkv}")
    if k.shape[2] != T:
        raise ValueError(f"kvcore.h2o_scores: q and k must cover the same {T} prompt tokens, got k with {k.shape[2]}")
    if chunk < 1:
        raise ValueError(f"kvcore.h2o_scores: chunk must be >= 1, got {chunk}")
    scale = D ** -0.5 if sm_scale is None else sm_scale
    kr = k.float().repeat_interleave(Hq // Hkv, dim=1)
    total = torch.zeros(B, Hq, T, dtype=torch.float32, device=k.device)
    for first in range(0, T, chunk):
        n = min(chunk, T - first)
        logits = torch.einsum("bhnd,bhtd->bhnt", q[:, :, first:first + n].float(), kr) * scale
        logits = logits.masked_fill(_causal_mask(first, n, T, k.device), float("-inf"))
        total += torch.softmax(logits, dim=-1).sum(2)
    return _group_sum(total, Hkv)


def snapkv_scores(q_window: Tensor, k: Tensor, kernel_size: int = 7, sm_scale: float = None,
                  causal: bool = True) -> Tensor:
    """SnapKV: the attention that the last ``w`` queries (the observation window) pay to
    each cached key, summed over the window and the group's query heads, then max-pooled
    over ``kernel_size`` neighbouring tokens so that kept tokens keep their context.

    Args:
        q_window: ``[B, Hq, w, D]`` the window's queries (after RoPE, as the cache's keys).
        k: ``[B, Hkv, T, D]`` keys; Hq a multiple of Hkv.
        kernel_size: odd pooling width (1: no pooling).
        sm_scale: softmax scale, default ``1/sqrt(D)``.
        causal: the window is the last ``w`` of the ``T`` tokens, and its query ``i``
            sees only keys ``<= T - w + i`` (as in the prompt's own attention).

    Returns:
        ``[B, Hkv, T]`` float32.

    Example::

        >>> snapkv_scores(torch.randn(1, 8, 4, 64), torch.randn(1, 2, 100, 64)).shape
        torch.Size([1, 2, 100])
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kvcore.snapkv_scores: kernel_size must be odd and >= 1, got {kernel_size}")
    B, Hq, w, D = q_window.shape
    Hkv = k.shape[1]
    if Hq % Hkv:
        raise ValueError(f"kvcore.snapkv_scores: Hq={Hq} must be a multiple of Hkv={Hkv}")
    scale = D ** -0.5 if sm_scale is None else sm_scale
    kr = k.float().repeat_interleave(Hq // Hkv, dim=1)  # [B, Hq, T, D]
    logits = torch.einsum("bhwd,bhtd->bhwt", q_window.float(), kr) * scale
    if causal:
        T = k.shape[2]
        if w > T:
            raise ValueError(f"kvcore.snapkv_scores: a causal window of {w} queries needs at least {w} keys, got {T}")
        logits = logits.masked_fill(_causal_mask(T - w, w, T, k.device), float("-inf"))
    attn = torch.softmax(logits, dim=-1)
    s = _group_sum(attn.sum(2), Hkv)  # [B, Hkv, T]
    if kernel_size > 1:
        s = F.max_pool1d(s.reshape(B * Hkv, 1, -1), kernel_size, stride=1, padding=kernel_size // 2).reshape(s.shape)
    return s


def qfilters_calibrate(q: Tensor) -> Tensor:
    """Q-Filters' calibration: per query head, the unit direction that best explains the
    queries (their first right singular vector), oriented so that the queries project
    positively on average. Run once on a few hundred queries of real text.

    Args:
        q: ``[N, Hq, D]`` queries gathered from calibration text.

    Returns:
        ``[Hq, D]`` float32 unit vectors.

    Example::

        >>> qfilters_calibrate(torch.randn(256, 8, 64) + 3).shape
        torch.Size([8, 64])
    """
    qf = q.float().transpose(0, 1)  # [Hq, N, D]
    _, _, vh = torch.linalg.svd(qf, full_matrices=False)
    u = vh[:, 0]  # [Hq, D]
    sign = torch.sign((qf @ u[:, :, None]).mean(dim=(1, 2)))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return u * sign[:, None]


def qfilters_scores(k: Tensor, directions: Tensor) -> Tensor:
    """Q-Filters: a key's projection on its query heads' directions estimates the
    attention it will get, with no query needed: score ``sum over the group of k . u_h``.

    Args:
        k: ``[B, Hkv, T, D]`` keys.
        directions: ``[Hq, D]`` from :func:`qfilters_calibrate`.

    Returns:
        ``[B, Hkv, T]`` float32.

    Example::

        >>> u = qfilters_calibrate(torch.randn(64, 8, 64))
        >>> qfilters_scores(torch.randn(1, 2, 10, 64), u).shape
        torch.Size([1, 2, 10])
    """
    Hkv = k.shape[1]
    Hq = directions.shape[0]
    if Hq % Hkv:
        raise ValueError(f"kvcore.qfilters_scores: Hq={Hq} must be a multiple of Hkv={Hkv}")
    u = directions.float().reshape(Hkv, Hq // Hkv, -1).sum(1)  # the group's summed direction
    return torch.einsum("bhtd,hd->bht", k.float(), u)


def streaming_select(lengths: Tensor, budget: int, sinks: int = 4) -> tuple:
    """StreamingLLM: keep the first ``sinks`` tokens and the most recent
    ``budget - sinks``, no scores. Same output as :func:`kvcore.topk_select`.

    Args:
        lengths: ``[R]`` int32 valid tokens per row.
        budget: tokens kept per row (>= sinks).
        sinks: attention-sink tokens at the start.

    Returns:
        ``(idx [R, budget] int32 ascending, -1 padded; count [R] int32)``.

    Example::

        >>> streaming_select(torch.tensor([10, 3], dtype=torch.int32), 5, sinks=2)
        (tensor([[ 0,  1,  7,  8,  9],
                [ 0,  1,  2, -1, -1]], dtype=torch.int32), tensor([5, 3], dtype=torch.int32))
    """
    if budget < sinks or sinks < 0:
        raise ValueError(f"kvcore.streaming_select: need 0 <= sinks <= budget, got sinks={sinks}, budget={budget}")
    n = lengths.to(torch.int64).clamp(min=0)[:, None]
    j = torch.arange(budget, device=lengths.device)[None]
    recent = budget - sinks
    # slot j < sinks: token j; slot j >= sinks: token n - recent + (j - sinks), when n > budget
    pos = torch.where(j < sinks, j, n - recent + (j - sinks))
    pos = torch.where(n > budget, pos, j)  # short rows keep everything
    count = torch.minimum(n[:, 0], torch.tensor(budget, device=lengths.device))
    idx = torch.where(j < count[:, None], pos, torch.full_like(pos, -1))
    return idx.to(torch.int32), count.to(torch.int32)


def hashevict_replace(parts: Sequence[Tensor], new_tokens: Sequence[Tensor], scores: Tensor, lengths: Tensor):
    """HashEvict's decode step, in place: a row with free capacity appends the new token;
    a full row overwrites the slot of its lowest-scoring token (the farthest from the
    current queries by :func:`kvcore.hamming_scores`; ties to the oldest). One fixed-size
    write per row, no compaction, no host synchronisation.

    Args:
        parts: per-token cache parts, each ``[R, T, ...]`` (keys, values, signatures,
            ...), written in place.
        new_tokens: the new token of each part, ``[R, ...]``.
        scores: ``[R, T]`` of the cached tokens (higher = keep).
        lengths: ``[R]`` int32 valid tokens per row, at most T.

    Returns:
        ``(slot, new_lengths)``: ``[R]`` int64 slot written per row and the ``[R]``
        int32 lengths after the step.

    Example::

        >>> k = torch.zeros(1, 3, 2)
        >>> slot, n = hashevict_replace([k], [torch.ones(1, 2)], torch.tensor([[5, 1, 7]]),
        ...                             torch.tensor([3], dtype=torch.int32))
        >>> slot.tolist(), n.tolist(), k[0, 1].tolist()
        ([1], [3], [1.0, 1.0])
    """
    R, T = scores.shape
    n = lengths.to(torch.int64)
    valid = torch.arange(T, device=scores.device)[None] < n[:, None]
    lowest = scores.float().masked_fill(~valid, float("inf")).argmin(-1)  # first (oldest) of the minima
    full = n >= T
    slot = torch.where(full, lowest, n.clamp(0, T - 1))
    rows = torch.arange(R, device=scores.device)
    for x, new in zip(parts, new_tokens):
        x[rows, slot] = new.to(x.dtype)
    return slot, torch.where(full, n, n + 1).to(torch.int32)


def block_select(scores: Tensor, lengths: Tensor, group_size: int, budget: int):
    """Eviction at the granularity of sealed key blocks, for packed caches whose keys are
    quantized per channel over blocks of ``group_size`` tokens: a block scores as its
    best token, the ``budget // group_size`` best whole blocks are kept, so the kept
    blocks' scales stay exact and nothing is requantized.

    Args:
        scores: ``[R, T]`` token scores (higher = keep), T a multiple of group_size.
        lengths: ``[R]`` int32 packed lengths (only whole blocks count).
        group_size: tokens per key block.
        budget: tokens to keep per row (rounded down to whole blocks).

    Returns:
        ``(block_idx, block_count, token_idx, token_count)``: the kept blocks
        ``[R, budget // group_size]`` (ascending, -1 padded) for the per-block parts
        (key scales and mins, low-rank A and B), and the same selection in tokens
        ``[R, blocks * group_size]`` for the per-token parts (codes, value scales,
        outliers, signatures); both ready for :func:`kvcore.compact_kv`.

    Example::

        >>> s = torch.tensor([[0., 9., 0., 0., 5., 0., 0., 1.]])
        >>> b, nb, t, nt = block_select(s, torch.tensor([8], dtype=torch.int32), 2, 4)
        >>> b.tolist(), t.tolist()
        ([[0, 2]], [[0, 1, 4, 5]])
    """
    R, T = scores.shape
    G = group_size
    if T % G:
        raise ValueError(f"kvcore.block_select: T={T} must be a multiple of group_size={G}")
    if budget < G:
        raise ValueError(f"kvcore.block_select: budget={budget} keeps no whole block of {G} tokens")
    nblocks = T // G
    valid = torch.arange(T, device=scores.device)[None] < lengths.to(torch.int64)[:, None]
    s = scores.float().masked_fill(~valid, float("-inf")).view(R, nblocks, G).amax(-1)
    from .ops import topk_select  # noqa: PLC0415  (ops loads the extension)
    block_lengths = (lengths.to(torch.int64).clamp(min=0) // G).to(torch.int32)
    bidx, bcount = topk_select(s.contiguous(), budget // G, block_lengths)
    tok = bidx[:, :, None].to(torch.int64) * G + torch.arange(G, device=scores.device)
    tok = torch.where(bidx[:, :, None] >= 0, tok, torch.full_like(tok, -1)).reshape(R, -1)
    return bidx, bcount, tok.to(torch.int32), (bcount * G).to(torch.int32)


def uniform_budgets(total: int, layers: int) -> List[int]:
    """The same budget for every layer: ``total`` tokens split evenly (remainder to the
    first layers)."""
    base, extra = divmod(total, layers)
    return [base + (1 if i < extra else 0) for i in range(layers)]


def pyramid_budgets(total: int, layers: int, ratio: float = 8.0) -> List[int]:
    """PyramidKV: budgets decreasing linearly with depth, the first layer ``ratio`` times
    the last, summing to ``total`` (the lower layers spread attention widely, the upper
    ones focus)."""
    if layers == 1:
        return [total]
    w = [ratio - (ratio - 1.0) * i / (layers - 1) for i in range(layers)]
    raw = [total * x / sum(w) for x in w]
    out = [int(r) for r in raw]
    for i in sorted(range(layers), key=lambda i: raw[i] - out[i], reverse=True)[:total - sum(out)]:
        out[i] += 1
    return out


def adaptive_head_budgets(scores: Tensor, lengths: Tensor, budget: int, normalise: str = "sum") -> Tensor:
    """Ada-KV: one budget per layer shared by its KV heads according to their scores.
    The layer keeps its ``budget * Hkv`` best tokens over all heads together (scores
    normalised per head into a distribution so that they compare), and each head gets
    as many as it won: a head whose attention is concentrated on few tokens gives its
    share to heads whose attention is spread.

    Args:
        scores: ``[B, Hkv, T]`` (higher = keep).
        lengths: ``[B]`` valid tokens per sequence.
        budget: average tokens per head.
        normalise: ``"sum"`` for non-negative attention masses (H2O, SnapKV: divided by
            their sum), ``"softmax"`` for logit-like scores of any sign (L2 norm,
            Q-Filters, Hamming).

    Returns:
        ``[B, Hkv]`` int32 per-head budgets, summing to ``min(budget * Hkv, Hkv * n_b)``
        per sequence and never above ``n_b``.

    Example::

        >>> adaptive_head_budgets(torch.rand(1, 4, 100), torch.tensor([100]), 10).sum().item()
        40
    """
    B, Hkv, T = scores.shape
    valid = torch.arange(T, device=scores.device)[None, None] < lengths.to(scores.device).reshape(B, 1, 1)
    if normalise == "softmax":
        s = torch.softmax(scores.float().masked_fill(~valid, float("-inf")), dim=-1)
    elif normalise == "sum":
        s = scores.float().clamp(min=0).masked_fill(~valid, 0.0)
        s = s / s.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    else:
        raise ValueError(f'kvcore.adaptive_head_budgets: normalise must be "sum" or "softmax", got {normalise!r}')
    s = s.nan_to_num(0.0).masked_fill(~valid, -1.0)  # invalid tokens never win
    flat = s.reshape(B, Hkv * T)
    k = min(budget * Hkv, Hkv * T)
    top = flat.topk(k, dim=-1).indices  # [B, k]
    won = torch.zeros(B, Hkv * T, dtype=torch.bool, device=scores.device)
    won.scatter_(1, top, True)
    won &= valid.expand(B, Hkv, T).reshape(B, Hkv * T)
    return won.reshape(B, Hkv, T).sum(-1).to(torch.int32)
