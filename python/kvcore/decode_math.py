"""Decode-step attention over full-precision cache rows (eviction-only caches, sliding
windows, no compression), and H2O's attention mass.

Rows are ``(sequence, KV head)`` pairs, each with its own length, so that per-head
eviction budgets and left-padded prompts need no mask from the model: a query head group
of a KV head is the "query length" of one SDPA call, and the lengths mask the keys.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attend_rows", "attend_segments", "attend_rows_with_mass"]


def _length_mask(lengths: Tensor, T: int) -> Tensor:
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None].to(torch.int64)  # [R, T]


def attend_rows(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, scale: float, B: int) -> Tensor:
    """One decode step of attention per row.

    Args:
        q: ``[R, g, D]`` the g query heads of each row's KV head (R = B * Hkv).
        k, v: ``[R, T, D]`` cache rows (only the first ``lengths[r]`` tokens count).
        lengths: ``[R]`` int32 on q's device.
        scale: softmax scale.
        B: batch size (rows are ``[B, Hkv]`` flattened).

    Returns:
        ``[R, g, D]`` in q's dtype (a row with no tokens gives zeros).

    Example::

        >>> q, k = torch.randn(4, 2, 64), torch.randn(4, 10, 64)
        >>> attend_rows(q, k, k, torch.tensor([10, 3, 5, 1], dtype=torch.int32), 0.125, 2).shape
        torch.Size([4, 2, 64])
    """
    return attend_segments(q, [(k, v, lengths)], scale, B)


def attend_segments(q: Tensor, segments: Sequence[Tuple[Tensor, Tensor, Tensor]], scale: float, B: int) -> Tensor:
    """Like :func:`attend_rows` over the union of several ``(k [R, T_i, D], v, lengths [R])``
    segments (sinks, dequantized packed tokens, residual window): one softmax over all."""
    R, g, D = q.shape
    k = torch.cat([s[0].to(q.dtype) for s in segments], 1) if len(segments) > 1 else segments[0][0].to(q.dtype)
    v = torch.cat([s[1].to(q.dtype) for s in segments], 1) if len(segments) > 1 else segments[0][1].to(q.dtype)
    mask = torch.cat([_length_mask(n, kk.shape[1]) for kk, _, n in segments], 1)  # [R, T]
    T, Hkv = k.shape[1], R // B
    out = F.scaled_dot_product_attention(q.view(B, Hkv, g, D), k.view(B, Hkv, T, D), v.view(B, Hkv, T, D),
                                         attn_mask=mask.view(B, Hkv, 1, T), scale=scale)
    # SDPA gives NaN for a fully masked row; an empty row attends to nothing
    return torch.where(mask.any(1).view(B, Hkv, 1, 1), out, torch.zeros_like(out)).reshape(R, g, D)  # CUDA SDPA may return a strided out


def attend_rows_with_mass(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, scale: float,
                          mass: Optional[Tensor] = None) -> Tensor:
    """:func:`attend_rows` that also adds, in place, each token's softmax probability
    summed over the row's query heads to ``mass [R, T]`` float32 (H2O's accumulated
    attention). Computed in float32 by explicit matmul and softmax.

    This is the one place the decode-step mass of full-precision rows is computed;
    packed caches get it from ``decode_attention(..., attn_mass=...)``.
    """
    T = k.shape[1]
    logits = torch.einsum("rgd,rtd->rgt", q.float(), k.float()) * scale
    logits = logits.masked_fill(~_length_mask(lengths, T)[:, None, :], float("-inf"))
    p = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    if mass is not None:
        mass += p.sum(1)
    return torch.einsum("rgt,rtd->rgd", p, v.float()).to(q.dtype)
