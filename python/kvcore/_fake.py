"""Fake (meta) implementations of every kvcore op, so torch.compile and
FakeTensor tracing know output shapes without running a kernel."""
import torch

from ._schema import quantized_shapes


@torch.library.register_fake("kvcore::quantize_kv")
def _quantize_kv_fake(x, bits, group_size, axis):
    torch._check(x.dim() >= 2, lambda: "kvcore.quantize_kv: x must have shape [..., T, D]")
    torch._check(bits in (2, 4, 8), lambda: f"kvcore.quantize_kv: bits must be 2, 4 or 8, got {bits}")
    torch._check(group_size in (32, 64, 128), lambda: f"kvcore.quantize_kv: group_size must be 32, 64 or 128, got {group_size}")
    torch._check(axis in ("token", "channel"), lambda: f"kvcore.quantize_kv: axis must be \"token\" or \"channel\", got {axis!r}")
    codes_shape, meta_shape = quantized_shapes(x.shape, bits, group_size, axis)
    codes = x.new_empty(codes_shape, dtype=torch.uint8)
    return codes, x.new_empty(meta_shape), x.new_empty(meta_shape)


@torch.library.register_fake("kvcore::dequantize_kv")
def _dequantize_kv_fake(codes, scale, mn, bits, group_size, axis, dtype=None):
    torch._check(codes.dim() >= 2, lambda: "kvcore.dequantize_kv: codes must have shape [..., T, D*bits/8]")
    torch._check(bits in (2, 4, 8), lambda: f"kvcore.dequantize_kv: bits must be 2, 4 or 8, got {bits}")
    shape = (*codes.shape[:-1], codes.shape[-1] * 8 // bits)
    return scale.new_empty(shape, dtype=dtype if dtype is not None else scale.dtype)


@torch.library.register_fake("kvcore::decode_attention")
def _decode_attention_fake(q, k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_resid, v_resid,
                           packed_len, resid_len, bits, group_size, sm_scale=None,
                           k_sink=None, v_sink=None, sink_len=None, k_outlier_idx=None, k_outlier_res=None,
                           v_outlier_idx=None, v_outlier_res=None, k_lowrank_a=None, k_lowrank_b=None,
                           v_lowrank_a=None, v_lowrank_b=None, v_group_size=None, attn_mass=None):
    torch._check(q.dim() == 3, lambda: "kvcore.decode_attention: q must have shape [B, Hq, D]")
    torch._check(q.dtype in (torch.float16, torch.bfloat16),
                 lambda: f"kvcore.decode_attention: q must be float16 or bfloat16, got {q.dtype}")
    torch._check(bits in (2, 4), lambda: f"kvcore.decode_attention: bits must be 2 or 4, got {bits}")
    torch._check(group_size in (32, 64, 128),
                 lambda: f"kvcore.decode_attention: group_size must be 32, 64 or 128, got {group_size}")
    torch._check(v_group_size is None or v_group_size in (32, 64, 128),
                 lambda: f"kvcore.decode_attention: v_group_size must be 32, 64 or 128, got {v_group_size}")
    B, Hq, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, Hq), dtype=torch.float32)


@torch.library.register_fake("kvcore::hadamard_rotate")
def _hadamard_rotate_fake(x, seed=0, inverse=False):
    torch._check(x.dim() >= 1, lambda: "kvcore.hadamard_rotate: x must have at least one dimension")
    D = x.shape[-1]
    torch._check(2 <= D <= 1024 and D & (D - 1) == 0,
                 lambda: f"kvcore.hadamard_rotate: the last dimension of x must be a power of two between 2 and 1024, got {D}")
    return torch.empty_like(x)


@torch.library.register_fake("kvcore::extract_outliers")
def _extract_outliers_fake(x, count, group_size, axis):
    torch._check(x.dim() >= 2, lambda: "kvcore.extract_outliers: x must have shape [..., T, D]")
    torch._check(1 <= count <= min(16, x.shape[-1] - 1),
                 lambda: f"kvcore.extract_outliers: count must be between 1 and min(16, D - 1), got {count}")
    shape = (*x.shape[:-1], count)
    return x.new_empty(shape, dtype=torch.uint8), x.new_empty(shape), torch.empty_like(x)


@torch.library.register_fake("kvcore::lowrank_error")
def _lowrank_error_fake(residual, rank, group_size, iters=3, seed=0):
    torch._check(residual.dim() >= 2, lambda: "kvcore.lowrank_error: residual must have shape [..., T, D]")
    torch._check(1 <= rank <= 8, lambda: f"kvcore.lowrank_error: rank must be between 1 and 8, got {rank}")
    *lead, T, D = residual.shape
    a = residual.new_empty((*lead, T // group_size, group_size, rank), dtype=torch.float16)
    b = residual.new_empty((*lead, T // group_size, D, rank), dtype=torch.float16)
    return a, b


@torch.library.register_fake("kvcore::lsh_signature")
def _lsh_signature_fake(x, nbits=64, seed=0):
    torch._check(nbits in (32, 64, 128, 256),
                 lambda: f"kvcore.lsh_signature: nbits must be 32, 64, 128 or 256, got {nbits}")
    return x.new_empty((*x.shape[:-1], nbits // 32), dtype=torch.int32)


@torch.library.register_fake("kvcore::hamming_scores")
def _hamming_scores_fake(q_sig, k_sig, lengths):
    torch._check(k_sig.dim() == 4, lambda: "kvcore.hamming_scores: k_sig must have shape [B, Hkv, T, W]")
    B, Hkv, T, _ = k_sig.shape
    return k_sig.new_empty((B, Hkv, T), dtype=torch.int32)


@torch.library.register_fake("kvcore::topk_select")
def _topk_select_fake(scores, k, lengths):
    torch._check(scores.dim() == 2, lambda: "kvcore.topk_select: scores must have shape [R, L]")
    torch._check(k >= 1, lambda: f"kvcore.topk_select: k must be at least 1, got {k}")
    R = scores.shape[0]
    return scores.new_empty((R, k), dtype=torch.int32), scores.new_empty((R,), dtype=torch.int32)


@torch.library.register_fake("kvcore::compact_kv")
def _compact_kv_fake(x, idx, count):
    torch._check(x.dim() >= 2, lambda: "kvcore.compact_kv: x must have shape [R, T, ...]")
    return None
