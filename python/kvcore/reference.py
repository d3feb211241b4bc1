"""Pure-PyTorch oracles for the kvcore ops (tests only; slow, written for clarity).

They implement the format of docs/FORMAT.md independently of the C++ code, with
the same signatures as ``kvcore.ops``.
"""
import torch

_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


def _step(t: torch.Tensor, up: bool) -> torch.Tensor:
    """Next representable value of a finite tensor toward +inf (up) or -inf."""
    iv = t.view(_INT_VIEW[t.dtype])
    nbits = iv.element_size() * 8
    sign_bit = -(1 << (nbits - 1))  # the sign bit as a signed integer
    neg = iv < 0
    is_neg_zero = iv == sign_bit
    if up:
        out = torch.where(neg, iv - 1, iv + 1)  # magnitude shrinks if negative
        out = torch.where(is_neg_zero, torch.ones_like(iv), out)
    else:
        out = torch.where(neg, iv + 1, iv - 1)
        out = torch.where(iv == 0, torch.full_like(iv, sign_bit | 1), out)
        out = torch.where(is_neg_zero, torch.full_like(iv, sign_bit | 1), out)
    return out.view(t.dtype)


def group_params(lo: torch.Tensor, hi: torch.Tensor, bits: int, dtype: torch.dtype):
    """Stored (scale, mn) for groups with float32 range [lo, hi]; NaN where poisoned."""
    qmax = float(2**bits - 1)
    poisoned = torch.isinf(lo) | torch.isinf(hi) | torch.isnan(lo) | torch.isnan(hi)
    lo = torch.where(poisoned, torch.zeros_like(lo), lo)
    hi = torch.where(poisoned, torch.zeros_like(hi), hi)
    m = lo.to(dtype)
    m = torch.where(m.float() > lo, _step(m, up=False), m)
    mf = m.float()
    s = ((hi - mf) * torch.tensor(1.0 / qmax, dtype=torch.float32)).to(dtype)  # as the kernels: times float(1/qmax)
    for _ in range(4):
        s = torch.where(s.float() * qmax + mf < hi, _step(s, up=True), s)
    nan = torch.full_like(s, float("nan"))
    return torch.where(poisoned, nan, s), torch.where(poisoned, nan, m)


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes [..., D] int64 in [0, 2^bits) -> [..., D*bits/8] uint8 (FORMAT.md layout)."""
    per_word = 32 // bits
    *lead, D = codes.shape
    c = codes.reshape(*lead, D // per_word, per_word)
    j = torch.arange(per_word)
    offset = (j % 2) * 16 + (j // 2) * bits
    words = (c << offset).sum(-1)  # disjoint bits: sum == or
    b = torch.stack([(words >> (8 * k)) & 0xFF for k in range(4)], dim=-1)
    return b.reshape(*lead, D * bits // 8).to(torch.uint8)


def _unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    per_word = 32 // bits
    *lead, nbytes = packed.shape
    b = packed.to(torch.int64).reshape(*lead, nbytes // 4, 4)
    words = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)
    j = torch.arange(per_word)
    offset = (j % 2) * 16 + (j // 2) * bits
    codes = (words.unsqueeze(-1) >> offset) & (2**bits - 1)
    return codes.reshape(*lead, nbytes * 8 // bits)


def _grouped(x: torch.Tensor, group_size: int, axis: str) -> torch.Tensor:
    """View x [..., T, D] as [..., ngroups..., group_size] with the group last."""
    *lead, T, D = x.shape
    if axis == "token":
        return x.reshape(*lead, T, D // group_size, group_size)
    return x.reshape(*lead, T // group_size, group_size, D).transpose(-1, -2)


def _ungrouped(g: torch.Tensor, shape, group_size: int, axis: str) -> torch.Tensor:
    if axis == "token":
        return g.reshape(shape)
    return g.transpose(-1, -2).reshape(shape)


def quantize_kv(x: torch.Tensor, bits: int, group_size: int, axis: str):
    g = _grouped(x.float(), group_size, axis)
    finite = torch.isfinite(g).all(-1)
    lo = torch.where(finite, torch.nan_to_num(g, posinf=0.0, neginf=0.0, nan=0.0).amin(-1), float("-inf"))
    hi = torch.where(finite, torch.nan_to_num(g, posinf=0.0, neginf=0.0, nan=0.0).amax(-1), float("inf"))
    scale, mn = group_params(lo, hi, bits, x.dtype)
    sf, mf = scale.float().unsqueeze(-1), mn.float().unsqueeze(-1)
    inv = torch.where(sf > 0, 1.0 / sf, torch.zeros_like(sf))
    q = torch.round((g - mf) * inv)  # round half to even, like rint
    q = torch.nan_to_num(q, nan=0.0).clamp(0, 2**bits - 1).to(torch.int64)
    codes = _pack(_ungrouped(q, x.shape, group_size, axis), bits)
    return codes, scale, mn


def dequantize_kv(codes, scale, mn, bits, group_size, axis, dtype=None):
    c = _unpack(codes, bits).float()
    shape = c.shape
    g = _grouped(c, group_size, axis)
    out = g * scale.float().unsqueeze(-1) + mn.float().unsqueeze(-1)
    return _ungrouped(out, shape, group_size, axis).to(dtype or scale.dtype)


def clamped_lengths(lengths, cap: int, multiple: int = 1):
    """Lengths [B] as decode_attention uses them (a list): in [0, cap], rounded down to a multiple."""
    if lengths is None:
        return None
    n = lengths.cpu().to(torch.int64).clamp(0, cap)
    return (n - n % multiple).tolist()


def _corrected(x, out_idx, out_res, lr_a, lr_b, group_size):
    """x [B, Hkv, T, D] float32 plus its outlier residuals and low-rank blocks (float64 inside)."""
    x = x.double()
    B, H, T, D = x.shape
    if out_idx is not None:
        idx = out_idx.cpu().long()
        res = out_res.cpu().double() * (idx < D)  # indices >= D are ignored
        x = x.scatter_add(-1, idx.clamp(max=D - 1), res)
    if lr_a is not None:
        corr = lr_a.cpu().double() @ lr_b.cpu().double().transpose(-1, -2)  # [B, H, T/G, G, D]
        x = x + corr.reshape(B, H, T, D)
    return x


def decode_kv_tokens(k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_resid, v_resid,
                     packed_len, resid_len, bits, group_size, k_sink=None, v_sink=None, sink_len=None,
                     k_outlier_idx=None, k_outlier_res=None, v_outlier_idx=None, v_outlier_res=None,
                     k_lowrank_a=None, k_lowrank_b=None, v_lowrank_a=None, v_lowrank_b=None, v_group_size=None):
    """The keys and values each sequence attends to in decode_attention (values grouped
    by ``v_group_size`` channels, default group_size).

    Returns a list over the B sequences of ``(k, v)``, each ``[Hkv, n_b, D]`` on the
    CPU (float32, float64 when corrections are given): the valid sinks, then the
    dequantized sealed packed tokens (plus their outliers and low-rank terms), then the
    valid residual tokens (lengths clamped like the kernels clamp them).
    """
    k_all = dequantize_kv(k_codes.cpu(), k_scale.cpu(), k_mn.cpu(), bits, group_size, "channel", torch.float32)
    v_all = dequantize_kv(v_codes.cpu(), v_scale.cpu(), v_mn.cpu(), bits, v_group_size or group_size, "token",
                          torch.float32)
    if k_outlier_idx is not None or k_lowrank_a is not None:
        k_all = _corrected(k_all, k_outlier_idx, k_outlier_res, k_lowrank_a, k_lowrank_b, group_size)
    if v_outlier_idx is not None or v_lowrank_a is not None:
        v_all = _corrected(v_all, v_outlier_idx, v_outlier_res, v_lowrank_a, v_lowrank_b, group_size)
    n_packed = clamped_lengths(packed_len, k_codes.shape[2], group_size)
    n_resid = clamped_lengths(resid_len, k_resid.shape[2])
    n_sink = clamped_lengths(sink_len, k_sink.shape[2]) if k_sink is not None else None
    tokens = []
    for b in range(k_codes.shape[0]):
        ks, vs = [], []
        if n_sink is not None:
            ks.append(k_sink[b, :, :n_sink[b]].cpu().to(k_all.dtype))
            vs.append(v_sink[b, :, :n_sink[b]].cpu().to(v_all.dtype))
        ks.append(k_all[b, :, :n_packed[b]])
        vs.append(v_all[b, :, :n_packed[b]])
        ks.append(k_resid[b, :, :n_resid[b]].cpu().to(k_all.dtype))
        vs.append(v_resid[b, :, :n_resid[b]].cpu().to(v_all.dtype))
        tokens.append((torch.cat(ks, dim=1), torch.cat(vs, dim=1)))
    return tokens


def decode_attention_f64(q, k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_resid, v_resid,
                         packed_len, resid_len, bits=2, group_size=64, sm_scale=None,
                         k_sink=None, v_sink=None, sink_len=None, **corrections):
    """decode_attention in float64 on the CPU: ``(out [B, Hq, D], lse [B, Hq])``,
    both float64 and unrounded (the oracle the tests measure errors against)."""
    B, Hq, D = q.shape
    scale = D ** -0.5 if sm_scale is None else sm_scale
    out = torch.zeros(B, Hq, D, dtype=torch.float64)
    lse = torch.full((B, Hq), float("-inf"), dtype=torch.float64)
    tokens = decode_kv_tokens(k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_resid, v_resid,
                              packed_len, resid_len, bits, group_size, k_sink, v_sink, sink_len, **corrections)
    for b, (k, v) in enumerate(tokens):
        if k.shape[1] == 0:
            continue  # no tokens: zeros and -inf
        rep = Hq // k.shape[0]  # query head h reads KV head h // rep
        k = k.double().repeat_interleave(rep, dim=0)
        v = v.double().repeat_interleave(rep, dim=0)
        scores = torch.einsum("hd,htd->ht", q[b].cpu().double(), k) * scale
        lse[b] = torch.logsumexp(scores, dim=-1)
        out[b] = torch.einsum("ht,htd->hd", torch.softmax(scores, dim=-1), v)
    return out, lse


def decode_attention(q, k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_resid, v_resid,
                     packed_len, resid_len, bits=2, group_size=64, sm_scale=None,
                     k_sink=None, v_sink=None, sink_len=None, **corrections):
    """Oracle for kvcore.ops.decode_attention: ``(out in q.dtype, lse float32)`` on q's device."""
    out, lse = decode_attention_f64(q, k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_resid, v_resid,
                                    packed_len, resid_len, bits, group_size, sm_scale, k_sink, v_sink, sink_len,
                                    **corrections)
    return out.to(device=q.device, dtype=q.dtype), lse.to(device=q.device, dtype=torch.float32)


def attention_mass_f64(q, k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_resid, v_resid,
                       packed_len, resid_len, bits=2, group_size=64, sm_scale=None,
                       k_sink=None, v_sink=None, sink_len=None, **corrections):
    """The H2O attention mass of one decode step, float64 on the CPU: ``[B, Hkv,
    S_cap + T_cap + R_cap]``, each token's softmax probability summed over the query
    heads of its KV head, in the columns decode_attention's ``attn_mass`` uses (sinks,
    then packed, then residual; zeros past the clamped lengths)."""
    B, Hq, D = q.shape
    Hkv, T_cap, R_cap = k_codes.shape[1], k_codes.shape[2], k_resid.shape[2]
    S_cap = k_sink.shape[2] if k_sink is not None else 0
    scale = D ** -0.5 if sm_scale is None else sm_scale
    mass = torch.zeros(B, Hkv, S_cap + T_cap + R_cap, dtype=torch.float64)
    tokens = decode_kv_tokens(k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_resid, v_resid,
                              packed_len, resid_len, bits, group_size, k_sink, v_sink, sink_len, **corrections)
    n_packed = clamped_lengths(packed_len, T_cap, group_size)
    n_resid = clamped_lengths(resid_len, R_cap)
    n_sink = clamped_lengths(sink_len, S_cap) if k_sink is not None else [0] * B
    for b, (k, _) in enumerate(tokens):
        if k.shape[1] == 0:
            continue
        rep = Hq // Hkv
        scores = torch.einsum("hd,htd->ht", q[b].cpu().double(), k.double().repeat_interleave(rep, dim=0)) * scale
        p = torch.softmax(scores, dim=-1).reshape(Hkv, rep, -1).sum(1)  # [Hkv, n_b]
        cols = torch.cat([torch.arange(n_sink[b]), S_cap + torch.arange(n_packed[b]),
                          S_cap + T_cap + torch.arange(n_resid[b])])
        mass[b][:, cols] = p
    return mass
