"""Reference (plain PyTorch, float64 inside) implementations of the three corrections
that make 2-bit caches near-lossless (issue 4), for tests and for the error study in
scripts/kv_error_study.py:

* rotation: a randomized Hadamard transform of keys (and of the query at decode, so
  q.k is unchanged) with a fixed seed, no calibration (QuaRot / RotateKV style);
* sparse outliers: per token a fixed number of entries, chosen by how far they lie from
  their group's centre, kept exactly and excluded from the range the rest is quantized
  with (KVQuant dense-and-sparse, SpQR);
* low-rank error: a rank-r approximation of the quantization residual per head and
  block of tokens, by subspace (power) iteration (GEAR).

Shapes follow quantize_kv: x is [..., T, D]; `axis` is "channel" for keys (groups of
tokens per channel) and "token" for values (groups of channels per token).
"""
import math

import torch


def hadamard(D: int, dtype=torch.float64) -> torch.Tensor:
    """[D, D] Sylvester Hadamard matrix of +-1 (D a power of two)."""
    if D < 1 or D & (D - 1):
        raise ValueError(f"hadamard: D must be a power of two, got {D}")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < D:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


_M64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def rotation_signs(D: int, seed: int) -> torch.Tensor:
    """[D] float64 +-1: s_d = -1 when the top bit of splitmix64(seed * golden + d + 1)
    is set (csrc/include/kvcore/rotation.h computes the same bits)."""
    return torch.tensor([-1.0 if _mix64((seed * 0x9E3779B97F4A7C15 + d + 1) & _M64) >> 63 else 1.0
                         for d in range(D)], dtype=torch.float64)


def hadamard_rotate(x: torch.Tensor, seed: int = 0, inverse: bool = False) -> torch.Tensor:
    """x [..., D] -> x diag(s) H / sqrt(D) (orthogonal; inverse=True undoes it), in x.dtype.

    >>> q, k = torch.randn(4, 64), torch.randn(4, 64)
    >>> torch.allclose(hadamard_rotate(q) @ hadamard_rotate(k).T, q @ k.T, atol=1e-4)
    True
    """
    D = x.shape[-1]
    h = hadamard(D) / math.sqrt(D)
    s = rotation_signs(D, seed)
    y = x.double()
    y = (y @ h) * s if inverse else (y * s) @ h
    return y.to(x.dtype)


def _group_view(x: torch.Tensor, group_size: int, axis: str) -> torch.Tensor:
    """float64 view with the reduction dimension last-but-one (channel) or last (token)."""
    *lead, T, D = x.shape
    if axis == "channel":
        return x.double().reshape(*lead, T // group_size, group_size, D)  # reduce over dim -2
    return x.double().reshape(*lead, T, D // group_size, group_size)     # reduce over dim -1


def extract_outliers(x: torch.Tensor, count: int, group_size: int, axis: str):
    """Per token, the `count` entries farthest from their group's centre in units of the
    group's spread (keys: per channel over each block of group_size tokens; values: per
    token over each group of group_size channels). Centre and spread are the median and
    the median absolute deviation, which the outliers themselves cannot inflate (both
    the lower median of an even count, as torch.median). The score
    z = |x - median| / max(MAD, 2^-126) is computed in float32; ties go to the lower
    channel index.

    Returns (index uint8 [..., T, count], value x.dtype [..., T, count], dense), where
    dense is x with those entries replaced by their group's median, so that they no
    longer stretch the range the rest is quantized with. Indices are sorted ascending.
    """
    *lead, T, D = x.shape
    g = _group_view(x, group_size, axis).float()
    red = -2 if axis == "channel" else -1
    med = g.median(red, keepdim=True).values + 0.0  # a zero median is +0, as the kernels write it
    mad = (g - med).abs().median(red, keepdim=True).values.clamp_min(2.0 ** -126)
    z = ((g - med).abs() / mad).reshape(*lead, T, D)
    med_full = med.expand_as(g).reshape(*lead, T, D)
    # rank by (z descending, channel ascending): a stable sort of -z keeps index order on ties
    order = torch.sort(-z, dim=-1, stable=True).indices
    idx = order[..., :count].sort(dim=-1).values
    val = x.gather(-1, idx)
    dense = x.clone()
    dense.scatter_(-1, idx, med_full.gather(-1, idx).to(x.dtype))
    return idx.to(torch.uint8), val, dense


def apply_outliers(x: torch.Tensor, index: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """x [..., T, D] with the stored outliers written back at their positions."""
    out = x.clone()
    out.scatter_(-1, index.long(), value.to(x.dtype))
    return out


def lowrank_error(residual: torch.Tensor, rank: int, group_size: int, iters: int = 3, seed: int = 0):
    """Rank-`rank` approximation of residual [..., T, D] per block of group_size tokens:
    residual_block ~= A @ B^T with A [..., T/G, G, r] and B [..., T/G, D, r] (fp16), by
    subspace iteration from a seeded Gaussian start (orthonormalised each step)."""
    *lead, T, D = residual.shape
    r = residual.double().reshape(*lead, T // group_size, group_size, D)
    gen = torch.Generator().manual_seed(seed)
    omega = torch.randn(D, rank, generator=gen, dtype=torch.float64)
    y = r @ omega                                      # [.., G, r]
    for _ in range(iters):
        q, _ = torch.linalg.qr(y)
        y = r @ (r.transpose(-1, -2) @ q)
    q, _ = torch.linalg.qr(y)                          # orthonormal basis of the column space
    b = r.transpose(-1, -2) @ q                        # [.., D, r]
    return q.to(torch.float16), b.to(torch.float16)


def apply_lowrank(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x [..., T, D] plus the low-rank blocks A @ B^T."""
    *lead, T, D = x.shape
    corr = (a.double() @ b.double().transpose(-1, -2)).reshape(*lead, T, D)
    return (x.double() + corr).to(x.dtype)
