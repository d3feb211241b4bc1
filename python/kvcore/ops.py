"""Typed wrappers over ``torch.ops.kvcore``. Shapes use B (batch), H (KV heads),
T (tokens), D (head_dim); the byte layout is documented in docs/FORMAT.md."""
from typing import Optional, Tuple

import torch

from ._schema import AXES

Tensor = torch.Tensor


def quantize_kv(x: Tensor, bits: int = 4, group_size: int = 64, axis: str = "token") -> Tuple[Tensor, Tensor, Tensor]:
    """Bit-packs ``x`` into ``bits``-bit codes with per-group (scale, min).

    Asymmetric round-to-nearest: ``code = clamp(rint((x - min) / scale), 0, 2**bits - 1)``;
    every finite element of x lies within ``scale / 2`` of its dequantized value.

    Args:
        x: ``[..., T, D]`` float16, bfloat16 or float32, contiguous, CPU or CUDA.
        bits: 2, 4 or 8.
        group_size: 32, 64 or 128.
        axis: ``"token"`` groups ``group_size`` channels within each token (values,
            KIVI); D must be a multiple of group_size. ``"channel"`` groups
            ``group_size`` tokens within each channel (keys, KIVI/KVQuant); T must be a
            multiple of group_size and D of 16.

    Returns:
        ``(codes, scale, mn)``: codes ``[..., T, D*bits/8]`` uint8; scale and mn in
        x's dtype, ``[..., T, D/group_size]`` (token) or ``[..., T/group_size, D]``
        (channel). A group holding NaN or Inf gets scale = mn = NaN (it dequantizes to
        NaN; other groups are unaffected).

    Example::

        >>> k = torch.randn(2, 8, 256, 128, dtype=torch.bfloat16)
        >>> codes, scale, mn = kvcore.ops.quantize_kv(k, bits=2, group_size=64, axis="channel")
        >>> codes.shape, scale.shape
        (torch.Size([2, 8, 256, 32]), torch.Size([2, 8, 4, 128]))
    """
    return torch.ops.kvcore.quantize_kv(x, bits, group_size, axis)


def dequantize_kv(
    codes: Tensor,
    scale: Tensor,
    mn: Tensor,
    bits: int = 4,
    group_size: int = 64,
    axis: str = "token",
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """Inverse of :func:`quantize_kv`: ``x_hat = code * scale + mn``.

    Args:
        codes: ``[..., T, D*bits/8]`` uint8 from quantize_kv.
        scale, mn: metadata from quantize_kv (same shape and dtype).
        bits, group_size, axis: as given to quantize_kv.
        dtype: output dtype (float16, bfloat16 or float32); default scale's dtype.

    Returns:
        ``[..., T, D]`` tensor on the codes' device.

    Example::

        >>> x_hat = kvcore.ops.dequantize_kv(codes, scale, mn, 2, 64, "channel")
        >>> x_hat.shape
        torch.Size([2, 8, 256, 128])
    """
    return torch.ops.kvcore.dequantize_kv(codes, scale, mn, bits, group_size, axis, dtype)


__all__ = ["quantize_kv", "dequantize_kv", "AXES"]
