"""Typed wrappers over ``torch.ops.kvcore``. Shapes use B (batch), H (KV heads;
Hq / Hkv for query / KV heads where both appear), T (tokens), D (head_dim); the
byte layout is documented in docs/FORMAT.md."""
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


def decode_attention(
    q: Tensor,
    k_codes: Tensor,
    k_scale: Tensor,
    k_mn: Tensor,
    v_codes: Tensor,
    v_scale: Tensor,
    v_mn: Tensor,
    k_resid: Tensor,
    v_resid: Tensor,
    packed_len: Tensor,
    resid_len: Tensor,
    bits: int = 2,
    group_size: int = 64,
    sm_scale: Optional[float] = None,
    k_sink: Optional[Tensor] = None,
    v_sink: Optional[Tensor] = None,
    sink_len: Optional[Tensor] = None,
    k_outlier_idx: Optional[Tensor] = None,
    k_outlier_res: Optional[Tensor] = None,
    v_outlier_idx: Optional[Tensor] = None,
    v_outlier_res: Optional[Tensor] = None,
    k_lowrank_a: Optional[Tensor] = None,
    k_lowrank_b: Optional[Tensor] = None,
    v_lowrank_a: Optional[Tensor] = None,
    v_lowrank_b: Optional[Tensor] = None,
    v_group_size: Optional[int] = None,
    attn_mass: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Attention of one new query token per sequence over a compressed KV cache.

    Sequence b attends to the union of three token ranges (softmax over all of
    them; their order does not matter):

    * sinks ``[0, sink_len[b])`` of ``k_sink`` / ``v_sink`` (optional, full precision);
    * packed ``[0, packed_len[b])`` of the b-bit cache: keys quantized per channel
      (``quantize_kv(k, bits, group_size, axis="channel")``), values per token
      (``axis="token"``);
    * residual ``[0, resid_len[b])`` of ``k_resid`` / ``v_resid`` (full precision:
      the recent tokens that do not fill a sealed block yet).

    Query head h reads KV head ``h // (Hq // Hkv)`` (GQA; MQA when Hkv == 1). The
    kernels compute ``softmax(sm_scale * q.K^T) V`` in float32.

    Args (B sequences, Hq query heads, Hkv KV heads, head_dim D in {64, 128, 256};
    every tensor contiguous and on one device):
        q: ``[B, Hq, D]`` float16 or bfloat16. Every scale/min, residual and sink
            tensor must have q's dtype.
        k_codes, v_codes: ``[B, Hkv, T_cap, D*bits/8]`` uint8, T_cap a multiple of
            group_size.
        k_scale, k_mn: ``[B, Hkv, T_cap/group_size, D]`` (key groups: group_size tokens
            of one channel).
        v_scale, v_mn: ``[B, Hkv, T_cap, D/v_group_size]`` (value groups: v_group_size
            channels of one token).
        k_resid, v_resid: ``[B, Hkv, R_cap, D]``; R_cap may be 0.
            On CUDA every cache tensor (packed, residual, sinks, corrections) must
            start at a 16-byte aligned address, as fresh tensors do.
        packed_len, resid_len: ``[B]`` int32, on the device.
        bits: 2 or 4 (8-bit caches are not supported by this op).
        group_size: 32, 64 or 128: tokens per key block (and per low-rank block).
        sm_scale: softmax scale; default ``1/sqrt(D)``.
        k_sink, v_sink: ``[B, Hkv, S_cap, D]``; sink_len: ``[B]`` int32. Give all
            three or none.
        k_outlier_idx, k_outlier_res (and v_...): optional sparse outliers of the
            packed keys (values), ``[B, Hkv, T_cap, count]`` uint8 channel indices and
            residuals in q's dtype, 1 <= count <= 16: the packed token is its
            dequantized value plus ``res`` at each ``idx`` (an index >= D is ignored).
            Build them with :func:`extract_outliers`: quantize its ``dense`` output and
            store ``value - dequantized[idx]``.
        k_lowrank_a, k_lowrank_b (and v_...): optional GEAR low-rank terms from
            :func:`lowrank_error`, ``[B, Hkv, T_cap/group_size, group_size, rank]`` and
            ``[B, Hkv, T_cap/group_size, D, rank]`` float16: each packed block adds
            ``A @ B.T``. Both run inside the fused pass on CUDA too.
        v_group_size: channels per value group, 32, 64 or 128 dividing D; default
            group_size. Smaller key blocks than value groups (e.g. 32 and 64) spend
            metadata bytes where the attention error comes from (docs/KV-ERROR.md);
            the CUDA kernel needs group_size <= v_group_size.
        attn_mass: optional ``[B, Hkv, S_cap + T_cap + R_cap]`` float32, updated in
            place (H2O's accumulated attention): each valid token's softmax probability,
            summed over the query heads of its KV head, is added to its column (sinks
            first, then packed tokens, then the residual window; other columns are left
            as they are). Computed in the same pass over the cache: the kernels keep
            each token's score and a small kernel adds ``exp(score - lse)`` after the
            merge. On CUDA it runs the kernel instantiation that serves corrections.

    Lengths are device data, so they are not checked against the capacities (that
    would need a host synchronisation); the kernels clamp them instead: a negative
    length counts as 0, packed_len is clamped to T_cap and rounded down to a
    multiple of group_size (only sealed blocks are read), resid_len is clamped to
    R_cap and sink_len to S_cap. Nothing past a clamped length is read, so unused
    capacity may hold anything.

    Returns:
        ``(out, lse)``: out ``[B, Hq, D]`` in q's dtype; lse ``[B, Hq]`` float32, the
        natural log of the sum of exp of the scaled scores (to merge with attention
        over other tokens). A sequence with no tokens gets an all-zero out row and
        lse = -inf.

    Example::

        >>> B, Hq, Hkv, D, T = 2, 32, 8, 128, 1024
        >>> k = torch.randn(B, Hkv, T, D, dtype=torch.bfloat16)
        >>> v = torch.randn(B, Hkv, T, D, dtype=torch.bfloat16)
        >>> k_codes, k_scale, k_mn = kvcore.ops.quantize_kv(k, bits=2, group_size=64, axis="channel")
        >>> v_codes, v_scale, v_mn = kvcore.ops.quantize_kv(v, bits=2, group_size=64, axis="token")
        >>> k_resid = torch.randn(B, Hkv, 64, D, dtype=torch.bfloat16)  # room for one unsealed block
        >>> v_resid = torch.randn(B, Hkv, 64, D, dtype=torch.bfloat16)
        >>> packed_len = torch.tensor([1024, 640], dtype=torch.int32)
        >>> resid_len = torch.tensor([5, 0], dtype=torch.int32)
        >>> q = torch.randn(B, Hq, D, dtype=torch.bfloat16)
        >>> out, lse = kvcore.ops.decode_attention(q, k_codes, k_scale, k_mn, v_codes, v_scale, v_mn,
        ...                                        k_resid, v_resid, packed_len, resid_len, bits=2, group_size=64)
        >>> out.shape, lse.shape
        (torch.Size([2, 32, 128]), torch.Size([2, 32]))
    """
    return torch.ops.kvcore.decode_attention(
        q, k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_resid, v_resid, packed_len, resid_len,
        bits, group_size, sm_scale, k_sink, v_sink, sink_len, k_outlier_idx, k_outlier_res,
        v_outlier_idx, v_outlier_res, k_lowrank_a, k_lowrank_b, v_lowrank_a, v_lowrank_b, v_group_size, attn_mass)


def lsh_signature(x: Tensor, nbits: int = 64, seed: int = 0) -> Tensor:
    """Locality-sensitive signatures of keys or queries (HashEvict): the signs of a seeded
    random projection to ``nbits`` bits, packed into 32-bit words.

    Bit ``j`` is ``x . P[:, j] > 0`` (float32, summed over the channels in order), where
    ``P`` is a ``[D, nbits]`` matrix of near-Gaussian entries (an Irwin-Hall sum of four
    uniforms from a hash of ``(seed, d, j)``, unit variance), the same on every device
    and run. Two vectors at angle ``theta`` differ in about ``nbits * theta / pi`` bits.

    Args:
        x: ``[..., D]`` float16, bfloat16 or float32, contiguous; 1 <= D <= 1024.
        nbits: 32, 64, 128 or 256.
        seed: non-negative integer choosing the projection (keys and queries must
            share it).

    Returns:
        ``[..., nbits // 32]`` int32: the bit patterns (bit ``j`` in word ``j // 32``,
        position ``j % 32``).

    Example::

        >>> k = torch.randn(2, 8, 100, 128)
        >>> kvcore.ops.lsh_signature(k, nbits=64).shape
        torch.Size([2, 8, 100, 2])
    """
    return torch.ops.kvcore.lsh_signature(x, nbits, seed)


def hamming_scores(q_sig: Tensor, k_sig: Tensor, lengths: Tensor) -> Tensor:
    """How close every cached key is to the current queries, by signature: the number of
    matching bits between each key's signature and each query head's, summed over the
    query heads that share the key's KV head (GQA; one head for MQA or plain MHA).

    Higher is closer: HashEvict evicts the lowest. Tokens at or past ``lengths[b]`` score
    -1. Pure integer arithmetic, so every device gives the same scores.

    Args:
        q_sig: ``[B, Hq, W]`` int32 from :func:`lsh_signature` of the queries.
        k_sig: ``[B, Hkv, T, W]`` int32 from :func:`lsh_signature` of the keys (same
            nbits and seed); Hq a multiple of Hkv.
        lengths: ``[B]`` int32, valid tokens per sequence (clamped to [0, T]).

    Returns:
        ``[B, Hkv, T]`` int32, in ``[0, (Hq // Hkv) * 32 * W]`` for valid tokens.

    Example::

        >>> q = kvcore.ops.lsh_signature(torch.randn(1, 8, 128))
        >>> k = kvcore.ops.lsh_signature(torch.randn(1, 2, 50, 128))
        >>> kvcore.ops.hamming_scores(q, k, torch.tensor([40], dtype=torch.int32)).shape
        torch.Size([1, 2, 50])
    """
    return torch.ops.kvcore.hamming_scores(q_sig, k_sig, lengths)


def topk_select(scores: Tensor, k: int, lengths: Tensor) -> Tuple[Tensor, Tensor]:
    """Per row, the positions of the ``k`` highest scores among the row's first
    ``lengths[r]`` entries, in position order: the tokens an eviction policy keeps.

    Ties go to the later (more recent) position, and NaN ranks below every number, so
    the selection is deterministic. A row with fewer than ``k`` valid entries keeps them
    all.

    Args:
        scores: ``[R, L]`` float32 or int32 (for example ``[B * Hkv, T]``), contiguous.
        k: at least 1.
        lengths: ``[R]`` int32, valid entries per row (clamped to [0, L]).

    Returns:
        ``(idx, count)``: idx ``[R, k]`` int32, the kept positions ascending in
        ``idx[r, :count[r]]`` and -1 after; count ``[R]`` int32, ``min(k, lengths[r])``.

    Example::

        >>> s = torch.tensor([[0.1, 0.9, 0.5, 0.9]])
        >>> kvcore.ops.topk_select(s, 2, torch.tensor([4], dtype=torch.int32))
        (tensor([[1, 3]], dtype=torch.int32), tensor([2], dtype=torch.int32))
    """
    return torch.ops.kvcore.topk_select(scores, k, lengths)


def compact_kv(x: Tensor, idx: Tensor, count: Tensor) -> Tensor:
    """Keeps the selected tokens of one part of a cache, in place: per row ``r``, token
    ``idx[r, i]`` moves to slot ``i`` for ``i < count[r]``; slots from ``count[r]`` on
    are left as they were (set the row's length to ``count[r]``).

    Every per-token part of a compressed cache compacts the same way with the same
    ``(idx, count)``: packed codes ``[B*Hkv, T, D*bits/8]``, per-token value scales,
    outlier indices and residuals, signatures, full-precision residual tokens. Per-block
    key metadata compacts with block indices. Rows are validated before anything moves:
    bad indices raise and leave ``x`` untouched. On CUDA that check costs one host
    synchronisation after the move (a 4-byte copy of the first bad row); the move is in
    place, with no temporary buffer.

    Args:
        x: ``[R, T, ...]`` any dtype, contiguous; modified in place.
        idx: ``[R, k]`` int32, strictly increasing in ``[0, T)`` over each row's first
            ``count[r]`` entries (what :func:`topk_select` returns).
        count: ``[R]`` int32 in ``[0, k]``.

    Returns:
        ``x`` (the same tensor).

    Example::

        >>> x = torch.arange(12.).reshape(2, 6, 1)
        >>> idx = torch.tensor([[1, 4], [0, 5]], dtype=torch.int32)
        >>> kvcore.ops.compact_kv(x, idx, torch.tensor([2, 1], dtype=torch.int32))[:, :2, 0]
        tensor([[ 1.,  4.],
                [ 6.,  7.]])
    """
    torch.ops.kvcore.compact_kv(x, idx, count)
    return x


__all__ = ["quantize_kv", "dequantize_kv", "decode_attention", "hadamard_rotate", "extract_outliers",
           "lowrank_error", "lsh_signature", "hamming_scores", "topk_select", "compact_kv", "AXES"]


def hadamard_rotate(x: Tensor, seed: int = 0, inverse: bool = False) -> Tensor:
    """Randomized Hadamard rotation of the last dimension: ``x diag(s) H / sqrt(D)``.

    ``H`` is the Sylvester Hadamard matrix and ``s_d = +-1`` a hash of ``(seed, d)``,
    so the rotation is orthogonal, needs no calibration and nothing stored: rotating a
    cache's keys and each query with the same seed leaves every score ``q.k``
    unchanged while spreading outlier channels over all channels (QuaRot, RotateKV).
    Computed in float32 with one rounding to x's dtype.

    Args:
        x: ``[..., D]`` float16, bfloat16 or float32, contiguous; D a power of two
            between 2 and 1024.
        seed: non-negative integer choosing the signs.
        inverse: apply the inverse rotation ``x H / sqrt(D) diag(s)``.

    Returns:
        A tensor shaped like ``x``, same dtype and device.

    Example::

        >>> q, k = torch.randn(8, 128), torch.randn(100, 128)
        >>> qr, kr = kvcore.ops.hadamard_rotate(q, 7), kvcore.ops.hadamard_rotate(k, 7)
        >>> torch.allclose(qr @ kr.T, q @ k.T, atol=1e-4)
        True
    """
    return torch.ops.kvcore.hadamard_rotate(x, seed, inverse)


def extract_outliers(x: Tensor, count: int = 2, group_size: int = 64, axis: str = "token") -> Tuple[Tensor, Tensor, Tensor]:
    """Sparse outliers of ``x``: per token the ``count`` entries farthest from their
    group's centre, kept exactly and taken out of the range the rest is quantized with
    (KVQuant dense-and-sparse, SpQR), at a fixed capacity per token so that appending
    needs no host synchronisation.

    A group is what :func:`quantize_kv` groups with the same ``group_size`` and ``axis``:
    for keys (``"channel"``) one channel over a block of ``group_size`` tokens, for
    values (``"token"``) ``group_size`` channels of one token. Centre and spread are the
    group's lower median and lower median absolute deviation, which the outliers cannot
    inflate; an entry's score is ``|x - median| / max(MAD, 2**-126)`` in float32, ties
    going to the lower channel; NaN scores above every number.

    Args:
        x: ``[..., T, D]`` float16, bfloat16 or float32, contiguous; D <= 256.
        count: outliers per token, 1 <= count <= min(16, D - 1).
        group_size: 32, 64 or 128 (T, or D for ``"token"``, a multiple of it).
        axis: ``"channel"`` (keys) or ``"token"`` (values).

    Returns:
        ``(index, value, dense)``: index ``[..., T, count]`` uint8 channel indices in
        ascending order; value ``[..., T, count]`` the entries of x there; dense, shaped
        like x, with those entries replaced by their group's median. Quantize ``dense``
        and write ``value`` back at ``index`` after dequantizing.

    Example::

        >>> v = torch.randn(2, 8, 64, 128, dtype=torch.float16)
        >>> idx, val, dense = kvcore.ops.extract_outliers(v, count=2, group_size=64, axis="token")
        >>> idx.shape, idx.dtype
        (torch.Size([2, 8, 64, 2]), torch.uint8)
    """
    return torch.ops.kvcore.extract_outliers(x, count, group_size, axis)


def lowrank_error(residual: Tensor, rank: int = 2, group_size: int = 64, iters: int = 3,
                  seed: int = 0) -> Tuple[Tensor, Tensor]:
    """GEAR's low-rank error term: per block of ``group_size`` tokens, a rank-``rank``
    approximation ``residual_block ~= A @ B.T`` of the quantization residual
    ``x - dequantize(quantize(x))``, stored in fp16 next to the codes.

    Subspace (power) iteration from a seeded +-1 start, ``iters`` refinement steps,
    modified Gram-Schmidt applied twice, float32 arithmetic. With ``iters >= 2`` the
    error is within a few percent of the best rank-``rank`` fit (Eckart-Young).

    Args:
        residual: ``[..., T, D]`` float16, bfloat16 or float32, contiguous; T a multiple
            of group_size, rank <= D <= 1024.
        rank: 1 to 8.
        group_size: 32, 64 or 128 tokens per block.
        iters: 0 to 16 refinement steps.
        seed: non-negative integer choosing the start.

    Returns:
        ``(a, b)``: a ``[..., T/G, G, rank]`` with orthonormal columns and
        b ``[..., T/G, D, rank]`` (``b = residual_block.T @ a``), both float16.

    Example::

        >>> x = torch.randn(1, 8, 256, 128)
        >>> x_hat = kvcore.dequantize_kv(*kvcore.quantize_kv(x, 2, 64, "channel"), 2, 64, "channel")
        >>> a, b = kvcore.ops.lowrank_error(x - x_hat, rank=2, group_size=64)
        >>> a.shape, b.shape
        (torch.Size([1, 8, 4, 64, 2]), torch.Size([1, 8, 4, 128, 2]))
    """
    return torch.ops.kvcore.lowrank_error(residual, rank, group_size, iters, seed)
