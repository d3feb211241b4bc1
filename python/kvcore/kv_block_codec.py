"""Encoding sealed key/value blocks into the packed parts that ``decode_attention`` reads
(docs/FORMAT.md, "The compressed cache"), and decoding them back (the 8-bit path and
tests).

A block is ``group_size`` tokens: keys are quantized per channel over the block, values
per token; optional exact outliers (their residual against the dequantized code) and a
GEAR low-rank factorisation of what error remains, per block, for keys and values.
"""
from typing import Dict

import torch
from torch import Tensor

from . import ops
from .compression_config import CompressionConfig

__all__ = ["PER_TOKEN_PARTS", "PER_BLOCK_PARTS", "encode_blocks", "decode_blocks", "part_shapes"]

# Parts indexed by token ([..., T, ...]) and by key block ([..., T/G, ...]).
PER_TOKEN_PARTS = ("k_codes", "v_codes", "v_scale", "v_mn", "k_outlier_idx", "k_outlier_res",
                   "v_outlier_idx", "v_outlier_res")
PER_BLOCK_PARTS = ("k_scale", "k_mn", "k_lowrank_a", "k_lowrank_b", "v_lowrank_a", "v_lowrank_b")


def part_shapes(cfg: CompressionConfig, lead: tuple, t_cap: int, head_dim: int, dtype: torch.dtype) -> Dict[str, tuple]:
    """``{name: (shape, dtype)}`` of every packed part for ``t_cap`` tokens (a multiple of
    group_size) and leading dims ``lead`` (e.g. ``(B, Hkv)``)."""
    D, G, VG, b = head_dim, cfg.group_size, cfg.v_group, cfg.bits
    nb = t_cap // G
    shapes = {
        "k_codes": ((*lead, t_cap, D * b // 8), torch.uint8),
        "k_scale": ((*lead, nb, D), dtype),
        "k_mn": ((*lead, nb, D), dtype),
        "v_codes": ((*lead, t_cap, D * b // 8), torch.uint8),
        "v_scale": ((*lead, t_cap, D // VG), dtype),
        "v_mn": ((*lead, t_cap, D // VG), dtype),
    }
    for x, c in (("k", cfg.key_outliers), ("v", cfg.value_outliers)):
        if c:
            shapes[f"{x}_outlier_idx"] = ((*lead, t_cap, c), torch.uint8)
            shapes[f"{x}_outlier_res"] = ((*lead, t_cap, c), dtype)
    for x, r in (("k", cfg.key_lowrank), ("v", cfg.value_lowrank)):
        if r:
            shapes[f"{x}_lowrank_a"] = ((*lead, nb, G, r), torch.float16)
            shapes[f"{x}_lowrank_b"] = ((*lead, nb, D, r), torch.float16)
    return shapes


def _encode_one(x: Tensor, cfg: CompressionConfig, axis: str, group: int, outliers: int, rank: int, name: str):
    parts = {}
    if outliers:
        idx, val, dense = ops.extract_outliers(x, outliers, group, axis)
    else:
        dense = x
    codes, scale, mn = ops.quantize_kv(dense, cfg.bits, group, axis)
    parts[f"{name}_codes"], parts[f"{name}_scale"], parts[f"{name}_mn"] = codes, scale, mn
    if outliers or rank:
        x_hat = ops.dequantize_kv(codes, scale, mn, cfg.bits, group, axis, torch.float32)
    if outliers:
        at = x_hat.gather(-1, idx.long())
        parts[f"{name}_outlier_idx"] = idx
        parts[f"{name}_outlier_res"] = (val.float() - at).to(x.dtype)
        # what the kernel reconstructs at the outlier channels: the code plus the stored residual
        x_hat.scatter_(-1, idx.long(), at + parts[f"{name}_outlier_res"].float())
    if rank:
        a, b = ops.lowrank_error((x.float() - x_hat).contiguous(), rank, cfg.group_size)
        parts[f"{name}_lowrank_a"], parts[f"{name}_lowrank_b"] = a, b
    return parts


def encode_blocks(k: Tensor, v: Tensor, cfg: CompressionConfig) -> Dict[str, Tensor]:
    """Packs whole key/value blocks.

    Args:
        k, v: ``[..., T, D]`` in the cache dtype, T a multiple of ``cfg.group_size``; keys
            already rotated when ``cfg.rotation``.
        cfg: a quantizing configuration.

    Returns:
        ``{part name: tensor}`` with the names and shapes of :func:`part_shapes`.

    Example::

        >>> cfg = kvcore.preset("kivi-2")
        >>> p = encode_blocks(torch.randn(1, 2, 64, 64).half(), torch.randn(1, 2, 64, 64).half(), cfg)
        >>> p["k_codes"].shape, p["k_scale"].shape
        (torch.Size([1, 2, 64, 16]), torch.Size([1, 2, 2, 64]))
    """
    parts = _encode_one(k.contiguous(), cfg, "channel", cfg.group_size, cfg.key_outliers, cfg.key_lowrank, "k")
    parts.update(_encode_one(v.contiguous(), cfg, "token", cfg.v_group, cfg.value_outliers, cfg.value_lowrank, "v"))
    return parts


def _decode_one(parts, cfg, name, axis, group, dtype):
    x = ops.dequantize_kv(parts[f"{name}_codes"], parts[f"{name}_scale"], parts[f"{name}_mn"], cfg.bits, group, axis,
                          torch.float32)
    idx = parts.get(f"{name}_outlier_idx")
    if idx is not None:
        i = idx.long().clamp(max=x.shape[-1] - 1)
        x.scatter_add_(-1, i, parts[f"{name}_outlier_res"].float() * (idx.long() < x.shape[-1]))
    a = parts.get(f"{name}_lowrank_a")
    if a is not None:
        b = parts[f"{name}_lowrank_b"]
        lr = torch.einsum("...ngr,...ndr->...ngd", a.float(), b.float())
        x += lr.reshape(x.shape)
    return x.to(dtype)


def decode_blocks(parts: Dict[str, Tensor], cfg: CompressionConfig, dtype: torch.dtype):
    """Inverse of :func:`encode_blocks`: ``(k, v)`` as ``[..., T, D]`` in ``dtype``, with the
    outliers and low-rank terms applied as ``decode_attention`` applies them."""
    return (_decode_one(parts, cfg, "k", "channel", cfg.group_size, dtype),
            _decode_one(parts, cfg, "v", "token", cfg.v_group, dtype))
