"""Plain-PyTorch references of the eviction primitives (issue 5), written from their
definitions for the tests: slow, independent of the kernels."""
import torch

from .reference_corrections import _mix64

_M64 = (1 << 64) - 1


def lsh_projection(D: int, nbits: int, seed: int) -> torch.Tensor:
    """The [D, nbits] float32 projection of lsh_signature (kvcore/lsh.h), entry by entry."""
    out = torch.empty(D, nbits, dtype=torch.float32)
    for d in range(D):
        hd = _mix64((seed * 0xD1B54A32D192ED03 + d) & _M64)
        for j in range(nbits):
            h = _mix64((hd + j * 0x9E3779B97F4A7C15) & _M64)
            s = (h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + (h >> 48)
            out[d, j] = float(s - 2 * 65535)
    # one float32 multiply by the float32 reciprocal, as the kernels do
    inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(37837.23, dtype=torch.float32)
    return out * inv


def lsh_signature(x: torch.Tensor, nbits: int, seed: int) -> torch.Tensor:
    """Signs of x @ P (float64 here; the kernels sum in float32, so a projection within
    rounding of 0 may differ), packed little-endian into int32 words."""
    P = lsh_projection(x.shape[-1], nbits, seed).double()
    bits = (x.double() @ P > 0).to(torch.int64)  # [..., nbits]
    words = bits.reshape(*bits.shape[:-1], nbits // 32, 32) << torch.arange(32)
    w = words.sum(-1)  # 0 .. 2^32 - 1
    return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)


def popcount32(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.int64) & 0xFFFFFFFF
    return sum(((x >> b) & 1) for b in range(32))


def hamming_scores(q_sig: torch.Tensor, k_sig: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    B, Hq, W = q_sig.shape
    _, Hkv, T, _ = k_sig.shape
    q = q_sig.reshape(B, Hkv, Hq // Hkv, 1, W)
    k = k_sig[:, :, None]  # [B, Hkv, 1, T, W]
    diff = popcount32(q ^ k).sum(-1)  # [B, Hkv, gq, T]
    score = (32 * W - diff).sum(2)
    valid = torch.arange(T)[None, None] < lengths.clamp(min=0).reshape(B, 1, 1)
    return torch.where(valid, score, torch.full_like(score, -1)).to(torch.int32)


def topk_select(scores: torch.Tensor, k: int, lengths: torch.Tensor):
    """By sorting: key (score, position) descending with NaN lowest, first k, ascending."""
    R, L = scores.shape
    idx = torch.full((R, k), -1, dtype=torch.int32)
    count = torch.zeros(R, dtype=torch.int32)
    for r in range(R):
        n = max(0, min(int(lengths[r]), L))
        items = []
        for t in range(n):
            v = float(scores[r, t])
            items.append(((0 if v != v else 1), (0.0 if v != v else v), t))
        items.sort(reverse=True)
        keep = sorted(t for _, _, t in items[:k])
        idx[r, :len(keep)] = torch.tensor(keep, dtype=torch.int32)
        count[r] = len(keep)
    return idx, count
