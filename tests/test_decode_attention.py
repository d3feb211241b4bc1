"""decode_attention against the float64 reference (kvcore.reference), plus length
clamping, garbage past the lengths, opcheck, torch.compile, bad input and (on a GPU)
CPU/CUDA parity, a large case and CUDA graph replay.

Tolerances. The kernels compute in float32 from the exact dequantized cache and
round the output once to q's dtype, so their error is about that rounding. We tie
the bound to what a plain attention in q's dtype achieves on the same cache: torch
SDPA, on the device under test, on the dequantized K/V cast to q's dtype. With
e_lowp its max error against
the float64 reference over the batch, we require

    max |out - ref| <= 2 * e_lowp + 1e-5

(2x: the kernels' own error is at most one output rounding, as is e_lowp's
largest part; the slack only matters when e_lowp is ~0). lse has no rounding to
q's dtype: on the CPU it must be within 32 float32 units of roundoff of the
magnitudes involved (|lse| and sm_scale * sum_d |q_d k_d|, a score's rounding
scale); measured errors are below 2 such units. CUDA kernels may use fp16/bf16
operands for the scores (tensor cores), so their lse bound is the out bound's
kind: 2x the lse error of float32 scores from q and K cast to q's dtype.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import kvcore
from kvcore import reference as ref
from conftest import DEVICES

LOWP_DTYPES = [torch.float16, torch.bfloat16]
U32 = 2.0 ** -24  # float32 unit roundoff
TENSOR_ARGS = ("q", "k_codes", "k_scale", "k_mn", "v_codes", "v_scale", "v_mn", "k_resid", "v_resid",
               "packed_len", "resid_len", "k_sink", "v_sink", "sink_len")
CACHE_ARGS = tuple(a for a in TENSOR_ARGS if a != "q") + ("bits", "group_size", "v_group_size")


# ---------------------------------------------------------------- inputs

def key_profile(B, Hkv, D):
    """Per (sequence, KV head, channel) scale and offset of the keys, with 4 outlier
    channels per head at 10x: the per-channel structure of real keys (KIVI, KVQuant)."""
    scale = torch.exp(0.5 * torch.randn(B, Hkv, 1, D))
    scale.scatter_(-1, torch.randint(0, D, (B, Hkv, 1, 4)), 10.0)
    return scale, 0.5 * torch.randn(B, Hkv, 1, D)


def random_keys(profile, T, dtype):
    scale, offset = profile
    B, Hkv, _, D = scale.shape
    return (torch.randn(B, Hkv, T, D) * scale + offset).to(dtype)


def default_lengths(group):
    """Per-sequence (packed, resid, sinks): a partial last block (rounded down), no
    sealed block (residual only), 3 blocks (96 tokens for group 32: not a multiple of
    64) without residual, and an empty sequence."""
    return [5 * group + 7, 0, 3 * group, 0], [17, 9, 0, 0], [4, 0, 2, 0]


def make_inputs(Hq=8, Hkv=2, D=128, bits=2, group=64, dtype=torch.bfloat16, packed=None, resid=None,
                sinks=None, with_sinks=True, t_cap=None, r_cap=24, s_cap=6, sm_scale=None, device="cpu",
                garbage_seed=1, v_group=None):
    """Keyword arguments of kvcore.ops.decode_attention: a random cache whose
    capacities exceed the lengths, with garbage past every length (fill_unused).
    B = len(packed); t_cap defaults to 7 blocks; values grouped by v_group channels
    (default: group)."""
    d_packed, d_resid, d_sinks = default_lengths(group)
    packed = d_packed if packed is None else packed
    resid = d_resid if resid is None else resid
    sinks = d_sinks if sinks is None else sinks
    B = len(packed)
    t_cap = 7 * group if t_cap is None else t_cap
    profile = key_profile(B, Hkv, D)
    k_codes, k_scale, k_mn = kvcore.quantize_kv(random_keys(profile, t_cap, dtype), bits, group, "channel")
    v_codes, v_scale, v_mn = kvcore.quantize_kv(torch.randn(B, Hkv, t_cap, D).to(dtype), bits, v_group or group,
                                                "token")
    kw = dict(q=torch.randn(B, Hq, D).to(dtype), k_codes=k_codes, k_scale=k_scale, k_mn=k_mn,
              v_codes=v_codes, v_scale=v_scale, v_mn=v_mn,
              k_resid=random_keys(profile, r_cap, dtype), v_resid=torch.randn(B, Hkv, r_cap, D).to(dtype),
              packed_len=torch.tensor(packed, dtype=torch.int32),
              resid_len=torch.tensor(resid, dtype=torch.int32),
              bits=bits, group_size=group, sm_scale=sm_scale)
    if v_group is not None:
        kw["v_group_size"] = v_group
    if with_sinks:
        kw.update(k_sink=random_keys(profile, s_cap, dtype), v_sink=torch.randn(B, Hkv, s_cap, D).to(dtype),
                  sink_len=torch.tensor(sinks, dtype=torch.int32))
    fill_unused(kw, garbage_seed, nan=True)
    return to_device(kw, device)


def to_device(kw, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


def fill_unused(kw, seed, nan=True):
    """Overwrites everything past the clamped lengths, in place: random codes, and
    metadata/tokens that are NaN (nan=True) or large finite values. A kernel that
    reads past a length then returns NaN or a different result."""
    gen = torch.Generator().manual_seed(seed)

    def garbage(t):
        if t.dtype == torch.uint8:
            g = torch.randint(0, 256, t.shape, generator=gen, dtype=torch.uint8)
        elif nan:
            g = torch.full(t.shape, float("nan"))
        else:
            g = 100 * torch.randn(t.shape, generator=gen)
        t.copy_(g.to(t.dtype))

    G = kw["group_size"]
    packed = ref.clamped_lengths(kw["packed_len"], kw["k_codes"].shape[2], G)
    resid = ref.clamped_lengths(kw["resid_len"], kw["k_resid"].shape[2])
    for b, n in enumerate(packed):
        for name in ("k_codes", "v_codes", "v_scale", "v_mn"):
            garbage(kw[name][b, :, n:])
        for name in ("k_scale", "k_mn"):
            garbage(kw[name][b, :, n // G:])
    for b, n in enumerate(resid):
        garbage(kw["k_resid"][b, :, n:])
        garbage(kw["v_resid"][b, :, n:])
    if kw.get("k_sink") is not None:
        for b, n in enumerate(ref.clamped_lengths(kw["sink_len"], kw["k_sink"].shape[2])):
            garbage(kw["k_sink"][b, :, n:])
            garbage(kw["v_sink"][b, :, n:])


def cache_kwargs(kw):
    return {k: kw[k] for k in CACHE_ARGS if kw.get(k) is not None}


# ---------------------------------------------------------------- checks

def sm_scale_of(kw):
    return kw["q"].shape[-1] ** -0.5 if kw.get("sm_scale") is None else kw["sm_scale"]


def lowp_attention_errors(kw, ref_out, ref_lse):
    """Max errors against the float64 reference of a plain attention in q's dtype on
    the same dequantized K/V cast to q's dtype: torch SDPA on q's device for out (on
    CUDA it rounds P to q's dtype, as fused kernels do); for lse, float32 scores of q
    and K in q's dtype (what fp32-accumulating tensor cores compute)."""
    q = kw["q"]
    scale = sm_scale_of(kw)
    out_err = lse_err = 0.0
    for b, (k, v) in enumerate(ref.decode_kv_tokens(**cache_kwargs(kw))):
        if k.shape[1] == 0:
            continue
        k, v = k.to(q.device, q.dtype), v.to(q.device, q.dtype)
        o = F.scaled_dot_product_attention(q[b][None, :, None], k[None], v[None], scale=scale, enable_gqa=True)
        out_err = max(out_err, (o[0, :, 0].cpu().double() - ref_out[b]).abs().max().item())
        k_rep = k.cpu().float().repeat_interleave(q.shape[1] // k.shape[0], dim=0)
        lse = torch.logsumexp(torch.einsum("hd,htd->ht", q[b].cpu().float(), k_rep) * scale, dim=-1)
        lse_err = max(lse_err, (lse.double() - ref_lse[b]).abs().max().item())
    return out_err, lse_err


def score_magnitude(kw):
    """[B, Hq] float64: sm_scale * max over tokens of sum_d |q_d k_d|."""
    q = kw["q"].cpu().double()
    mag = torch.zeros(q.shape[:2], dtype=torch.float64)
    for b, (k, _) in enumerate(ref.decode_kv_tokens(**cache_kwargs(kw))):
        if k.shape[1]:
            k_rep = k.double().abs().repeat_interleave(q.shape[1] // k.shape[0], dim=0)
            mag[b] = torch.einsum("hd,htd->ht", q[b].abs(), k_rep).amax(-1) * sm_scale_of(kw)
    return mag


def check_result(kw, out, lse, lse_bound="float32"):
    """out/lse of decode_attention(**kw) against the float64 reference (module docstring)."""
    q = kw["q"]
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    assert lse.shape == q.shape[:2] and lse.dtype == torch.float32 and lse.device == q.device
    ref_out, ref_lse = ref.decode_attention_f64(**kw)
    out, lse = out.cpu().double(), lse.cpu().double()
    empty = torch.isinf(ref_lse)  # [B, Hq]: sequences without tokens
    assert (out[empty] == 0).all(), "a sequence with no tokens must give an all-zero row"
    assert (lse[empty] == float("-inf")).all(), "a sequence with no tokens must give lse = -inf"
    assert torch.isfinite(out).all() and torch.isfinite(lse[~empty]).all()
    lowp_out_err, lowp_lse_err = lowp_attention_errors(kw, ref_out, ref_lse)
    err = (out - ref_out).abs().max().item()
    assert err <= 2 * lowp_out_err + 1e-5, f"out error {err:.3g} > 2 x {lowp_out_err:.3g} (plain {q.dtype} attention)"
    if lse_bound == "float32":
        tol = 32 * U32 * (ref_lse.abs() + score_magnitude(kw))
    else:
        tol = torch.full_like(ref_lse, 2 * lowp_lse_err + 1e-5)
    lse_err = (lse - ref_lse).abs()
    bad = (lse_err > tol) & ~empty
    assert not bad.any(), f"lse error {lse_err[bad].max().item():.3g} above its bound {tol[bad].min().item():.3g}"
    return err, lowp_out_err


def run(kw):
    return kvcore.ops.decode_attention(**kw)


def bitwise_equal(a, b):
    return torch.equal(a.cpu().view(torch.int16 if a.element_size() == 2 else torch.int32),
                       b.cpu().view(torch.int16 if b.element_size() == 2 else torch.int32))


# ---------------------------------------------------------------- CPU against the reference

# group_size must divide D (other pairs are rejected: see test_errors).
HEAD_DIM_GROUPS = [(D, group) for D in (64, 128, 256) for group in (32, 64, 128) if D % group == 0]


@pytest.mark.parametrize("with_sinks", [False, True])
@pytest.mark.parametrize("dtype", LOWP_DTYPES)
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("D,group", HEAD_DIM_GROUPS)
def test_matches_reference(D, group, bits, dtype, with_sinks):
    kw = make_inputs(D=D, bits=bits, group=group, dtype=dtype, with_sinks=with_sinks)
    check_result(kw, *run(kw))


# (Hq, Hkv): GQA ratios 1, 3, 4 and 8, and MQA.
@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (8, 2), (16, 2), (8, 1)])
@pytest.mark.parametrize("dtype", LOWP_DTYPES)
@pytest.mark.parametrize("bits", [2, 4])
def test_gqa_and_mqa(heads, bits, dtype):
    Hq, Hkv = heads
    kw = make_inputs(Hq=Hq, Hkv=Hkv, bits=bits, group=32, dtype=dtype)
    check_result(kw, *run(kw))


# Key blocks and value groups of different sizes (v_group_size); the CPU takes any pair.
@pytest.mark.parametrize("D,group,v_group", [(128, 32, 64), (64, 32, 64), (256, 64, 128), (128, 128, 32), (64, 128, 64)])
@pytest.mark.parametrize("bits", [2, 4])
def test_separate_value_group(D, group, v_group, bits):
    kw = make_inputs(D=D, bits=bits, group=group, v_group=v_group, dtype=torch.bfloat16)
    check_result(kw, *run(kw))


@pytest.mark.parametrize("D,bits,dtype", [(64, 4, torch.float16), (128, 2, torch.bfloat16)])
def test_long_sequences(D, bits, dtype):
    kw = make_inputs(D=D, bits=bits, dtype=dtype, group=64, packed=[1503, 2048, 777], resid=[40, 0, 63],
                     sinks=[4, 1, 0], t_cap=2048, r_cap=64)
    check_result(kw, *run(kw))


def test_lengths_are_clamped():
    """Lengths past the capacities or below 0 act as the clamped lengths (bit for bit)."""
    kw = make_inputs(packed=[7 * 64 + 100, -5, 130], resid=[24 + 3, 9, -1], sinks=[6 + 1, -2, 3])
    clamped = dict(kw, packed_len=torch.tensor([7 * 64, 0, 128], dtype=torch.int32),
                   resid_len=torch.tensor([24, 9, 0], dtype=torch.int32),
                   sink_len=torch.tensor([6, 0, 3], dtype=torch.int32))
    out, lse = run(kw)
    c_out, c_lse = run(clamped)
    assert bitwise_equal(out, c_out) and bitwise_equal(lse, c_lse)
    check_result(kw, out, lse)


def test_nothing_past_the_lengths_is_read():
    """NaN garbage and finite garbage past the lengths give the same bits."""
    kw = make_inputs(dtype=torch.float16)
    out_nan, lse_nan = run(kw)
    fill_unused(kw, seed=2, nan=False)
    out_fin, lse_fin = run(kw)
    assert bitwise_equal(out_nan, out_fin) and bitwise_equal(lse_nan, lse_fin)
    assert torch.isfinite(out_nan).all()


@pytest.mark.parametrize("caps", [(0, 0, 0), (128, 0, 0), (0, 8, 0), (0, 0, 4)])
def test_capacity_edges(caps):
    """Zero capacities (no packed, no residual or no sink room) with lengths that ask for more."""
    t_cap, r_cap, s_cap = caps
    kw = make_inputs(packed=[64, 200, 0], resid=[5, 30, 0], sinks=[2, 9, 0], t_cap=t_cap, r_cap=r_cap,
                     s_cap=s_cap)
    check_result(kw, *run(kw))


def test_all_sequences_empty():
    kw = make_inputs(packed=[0, 0], resid=[0, 0], sinks=[0, 0])
    out, lse = run(kw)
    assert (out == 0).all() and (lse == float("-inf")).all()


def test_sm_scale():
    kw = make_inputs(dtype=torch.float16)
    D = kw["q"].shape[-1]
    default = run(kw)
    explicit = run(dict(kw, sm_scale=1 / math.sqrt(D)))
    assert bitwise_equal(default[0], explicit[0]) and bitwise_equal(default[1], explicit[1])
    for sm_scale in (0.02, 0.5):
        kw_s = dict(kw, sm_scale=sm_scale)
        check_result(kw_s, *run(kw_s))


def test_empty_batch():
    kw = make_inputs(packed=[], resid=[], sinks=[])
    out, lse = run(kw)
    assert out.shape == (0, 8, 128) and lse.shape == (0, 8)


# ---------------------------------------------------------------- torch integration

def _opcheck_samples(device):
    yield make_inputs(bits=2, group=64, dtype=torch.bfloat16, device=device)
    yield make_inputs(bits=4, group=32, dtype=torch.float16, with_sinks=False, sm_scale=0.1, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for kw in _opcheck_samples(device):
        args = tuple(kw.get(name) for name in TENSOR_ARGS[:11]) + (kw["bits"], kw["group_size"], kw["sm_scale"],
                                                                   kw.get("k_sink"), kw.get("v_sink"), kw.get("sink_len"))
        torch.library.opcheck(torch.ops.kvcore.decode_attention.default, args)


def test_torch_compile_fullgraph_cpu():
    kw = make_inputs(bits=4, group=32, dtype=torch.bfloat16)
    q, cache = kw["q"], {k: v for k, v in kw.items() if k != "q"}

    @torch.compile(fullgraph=True, backend="inductor")
    def attend(q, cache):
        out, lse = kvcore.ops.decode_attention(q, **cache)
        return out * 2, lse - 1

    out, lse = attend(q, cache)
    e_out, e_lse = run(kw)
    assert torch.equal(out, e_out * 2) and torch.equal(lse, e_lse - 1)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("device", DEVICES)
def test_errors(device):
    kw = make_inputs(packed=[64, 128], resid=[1, 2], sinks=[1, 0], device=device)  # B=2, Hq=8, Hkv=2, D=128
    q, G = kw["q"], 64
    cases = [
        (dict(q=q.float()), r"q must be float16 or bfloat16, got float32"),
        (dict(q=q[:, :, None]), r"q must have shape \[B, Hq, D\]"),
        (dict(q=q.transpose(0, 1)), r"q must be contiguous"),
        (dict(q=torch.zeros(2, 8, 96, dtype=q.dtype, device=device)), r"head_dim D \(q.size\(2\)\) must be 64, 128 or 256, got 96"),
        (dict(q=q[:, :7].contiguous()), r"the query heads Hq=7 \(q.size\(1\)\) must be a multiple of the KV heads Hkv=2"),
        (dict(bits=8), r"bits must be 2 or 4, got 8 \(8-bit caches are not supported by decode_attention\)"),
        (dict(bits=3), r"bits must be 2 or 4, got 3"),
        (dict(bits=4), r"k_codes must have shape \[B, Hkv, T_cap, D\*bits/8\] = \[2, \*, \*, 64\]"),
        (dict(group_size=48), r"group_size must be 32, 64 or 128, got 48"),
        (dict(v_group_size=16), r"v_group_size must be 32, 64 or 128, got 16"),
        (dict(q=q[..., :64].contiguous(), group_size=128), r"head_dim D=64 must be a multiple of the value group size 128 \(v_group_size, default group_size\)"),
        (dict(k_codes=kw["k_codes"].to(torch.int32)), r"k_codes must be uint8, got int32"),
        (dict(k_codes=kw["k_codes"][:, :, :100].contiguous()), r"the packed capacity T_cap=100 \(k_codes.size\(2\)\) must be a multiple of group_size=64"),
        (dict(v_codes=kw["v_codes"][:, :, :-G].contiguous()), r"v_codes must have shape \[B, Hkv, T_cap, D\*bits/8\] = \[2, 2, 448, 32\]"),
        (dict(k_scale=kw["k_scale"].float()), r"k_scale must be bfloat16 \(the dtype of q\), got float32"),
        (dict(v_mn=kw["v_mn"].half()), r"v_mn must be bfloat16 \(the dtype of q\), got float16"),
        (dict(k_mn=kw["k_mn"][:, :, :-1].contiguous()), r"k_mn must have shape \[B, Hkv, T_cap/group_size, D\] = \[2, 2, 7, 128\]"),
        (dict(v_scale=kw["v_scale"][..., :1].contiguous()), r"v_scale must have shape \[B, Hkv, T_cap, D/v_group_size\] = \[2, 2, 448, 2\]"),
        (dict(k_scale=kw["k_scale"].transpose(-1, -2).contiguous().transpose(-1, -2)), r"k_scale must be contiguous"),
        (dict(k_resid=kw["k_resid"].half()), r"k_resid must be bfloat16 \(the dtype of q\), got float16"),
        (dict(v_resid=kw["v_resid"][:, :, :5].contiguous()), r"v_resid must have shape \[B, Hkv, R_cap, D\] = \[2, 2, 24, 128\]"),
        (dict(k_resid=kw["k_resid"][:, :1].contiguous()), r"k_resid must have shape \[B, Hkv, R_cap, D\] = \[2, 2, \*, 128\]"),
        (dict(packed_len=kw["packed_len"].long()), r"packed_len must be int32, got int64"),
        (dict(resid_len=torch.zeros(3, dtype=torch.int32, device=device)), r"resid_len must have shape \[B\] = \[2\]"),
        (dict(sink_len=None), r"k_sink, v_sink and sink_len must be given together or not at all; missing: sink_len"),
        (dict(k_sink=None, v_sink=None), r"k_sink, v_sink and sink_len must be given together or not at all; missing: k_sink v_sink"),
        (dict(k_sink=kw["k_sink"][..., :64].contiguous()), r"k_sink must have shape \[B, Hkv, S_cap, D\] = \[2, 2, \*, 128\]"),
        (dict(sink_len=kw["sink_len"].float()), r"sink_len must be int32, got float32"),
        (dict(sm_scale=float("inf")), r"sm_scale must be a finite"),
    ]
    for update, msg in cases:
        with pytest.raises(RuntimeError, match=r"kvcore\.decode_attention: " + msg):
            run(dict(kw, **update))


@pytest.mark.cuda
def test_mixed_devices_rejected():
    kw = make_inputs(packed=[64, 128], resid=[1, 2], sinks=[1, 0], device="cuda")
    for name in ("k_codes", "v_mn", "k_resid", "packed_len", "k_sink", "sink_len"):
        with pytest.raises(RuntimeError, match=rf"kvcore\.decode_attention: {name} is on cpu but q is on cuda"):
            run(dict(kw, **{name: kw[name].cpu()}))


# ---------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", LOWP_DTYPES)
@pytest.mark.parametrize("bits", [2, 4])
def test_cpu_cuda_parity(bits, dtype):
    kw = make_inputs(Hq=16, Hkv=4, D=128, bits=bits, group=64, dtype=dtype, packed=[1000, 0, 320, 0, 64],
                     resid=[30, 12, 0, 0, 63], sinks=[4, 0, 2, 0, 1], t_cap=1024, r_cap=64, s_cap=4)
    out_cpu, lse_cpu = run(kw)
    kw_gpu = to_device(kw, "cuda")
    out_gpu, lse_gpu = run(kw_gpu)
    _, lowp_err = check_result(kw_gpu, out_gpu, lse_gpu, lse_bound="lowp")
    check_result(kw, out_cpu, lse_cpu)
    # each within 2 x lowp of the reference, so within 4 x of each other
    diff = (out_gpu.cpu().double() - out_cpu.double()).abs().max().item()
    assert diff <= 4 * lowp_err + 2e-5, f"CPU and CUDA differ by {diff:.3g} (plain attention error {lowp_err:.3g})"


@pytest.mark.cuda
@pytest.mark.parametrize("D,group,v_group", [(128, 32, 64), (64, 32, 64), (256, 64, 128), (128, 32, 128)])
@pytest.mark.parametrize("bits", [2, 4])
def test_cuda_separate_value_group(D, group, v_group, bits):
    kw = make_inputs(Hq=12, Hkv=3, D=D, bits=bits, group=group, v_group=v_group, dtype=torch.float16,
                     packed=[1000, 0, 320], resid=[30, 12, 0], sinks=[4, 0, 2], t_cap=1024, r_cap=64, s_cap=4)
    out_cpu, _ = run(kw)
    out, lse = run(to_device(kw, "cuda"))
    _, lowp_err = check_result(to_device(kw, "cuda"), out, lse, lse_bound="lowp")
    assert (out.cpu().double() - out_cpu.double()).abs().max().item() <= 4 * lowp_err + 2e-5


@pytest.mark.cuda
@pytest.mark.parametrize("bits,dtype,D,G", [(b, dt, d, g) for b in (2, 4) for dt in (torch.float16, torch.bfloat16)
                                             for d in (64, 128, 256) for g in (32, 64, 128) if g <= d])
def test_cuda_precision_grid(bits, dtype, D, G):
    """Every (bits, dtype, head_dim, group) of the CUDA kernel, GQA 4 (the H4 column layout
    at D >= 128): out and lse within 2x a plain attention's error in q's dtype. The shapes
    of scripts/decode_error_ratios.py, which prints the margins."""
    kw = make_inputs(Hq=16, Hkv=4, D=D, bits=bits, group=G, dtype=dtype, packed=[16 * G, 0, 5 * G, 64],
                     resid=[30, 12, 0, 63], sinks=[4, 0, 2, 1], t_cap=16 * G, r_cap=64, s_cap=4, device="cuda")
    out, lse = run(kw)
    check_result(kw, out, lse, lse_bound="lowp")


@pytest.mark.cuda
@pytest.mark.parametrize("Hq, Hkv", [(8, 2), (24, 2)])  # the H4 kernel and the 8-column kernel
def test_cuda_query_at_an_odd_address(Hq, Hkv):
    """A contiguous query 2 bytes past a 4-byte boundary (a view into a flat buffer)
    takes the kernels' 16-bit query loads and gives bit-for-bit the aligned result."""
    kw = to_device(make_inputs(Hq=Hq, Hkv=Hkv, D=128, bits=2, group=64, dtype=torch.bfloat16, packed=[700, 64],
                               resid=[3, 0], sinks=[0, 0], t_cap=768), "cuda")
    q = kw["q"]
    flat = torch.zeros(q.numel() + 1, dtype=q.dtype, device="cuda")
    odd = flat[1:].view(q.shape)
    odd.copy_(q)
    assert odd.data_ptr() % 4 == 2
    out, lse = run(kw)
    out_odd, lse_odd = run({**kw, "q": odd})
    assert bitwise_equal(out, out_odd) and bitwise_equal(lse, lse_odd)


@pytest.mark.cuda
def test_cuda_rejects_larger_key_blocks_than_value_groups():
    kw = to_device(make_inputs(D=128, bits=2, group=128, v_group=64, dtype=torch.float16), "cuda")
    with pytest.raises(RuntimeError, match="the CUDA kernel needs group_size <= v_group_size, got 128 and 64"):
        run(kw)


@pytest.mark.cuda
def test_cuda_large():
    kw = make_inputs(Hq=32, Hkv=8, D=128, bits=2, group=64, dtype=torch.bfloat16, packed=[4990, 5120, 4736, 5051],
                     resid=[62, 0, 17, 63], sinks=[4, 4, 0, 2], t_cap=5120, r_cap=64, s_cap=4, device="cuda")
    out, lse = run(kw)
    _, lowp_err = check_result(kw, out, lse, lse_bound="lowp")
    out_cpu, _ = run(to_device(kw, "cpu"))
    assert (out.cpu().double() - out_cpu.double()).abs().max().item() <= 4 * lowp_err + 2e-5


@pytest.mark.cuda
@pytest.mark.parametrize("Hkv, bits, t_cap, packed", [
    (16, 4, 2560, [2560, 2500, 1900, 0, 2560, 640, 2433, 1280]),
    (16, 2, 6144, [6144, 6000, 5200, 100, 6144, 1280, 5433, 2400]),
    (8, 2, 10240, [10240, 9990, 8000, 0, 10240, 7700, 5130, 2048]),
    (8, 2, 24576, [24576, 24000, 20000, 0, 24576, 7700, 5130, 12288]),
    (8, 4, 16384, [16384, 16000, 9000, 0, 16384, 7700, 5130, 12288]),
])
def test_cuda_big_and_small_splits(Hkv, bits, t_cap, packed):
    """Shapes whose split plan (on an H100 or H200: 132 SMs x 4 CTAs) is one wave of big
    CTAs with 85-90% of each unit's tokens and then small CTAs for the rest, the last one
    partial (plan_splits in decode_attention_cuda.cu); lengths mixed, one empty. The
    first three have short big CTAs, so the full-precision splits launch first; the last
    two (64 units of 8 big CTAs of >= 48 KB a warp) launch them last, after the small
    CTAs."""
    kw = make_inputs(Hq=32, Hkv=Hkv, D=128, bits=bits, group=64, dtype=torch.bfloat16, packed=packed,
                     resid=[64, 3, 0, 17, 64, 1, 40, 64], sinks=[4] * 8, t_cap=t_cap, r_cap=64, s_cap=4, device="cuda")
    out, lse = run(kw)
    check_result(kw, out, lse, lse_bound="lowp")


@pytest.mark.cuda
@pytest.mark.parametrize("Hq, Hkv, D, bits", [(16, 2, 256, 2), (16, 4, 128, 4), (32, 2, 64, 2)])
def test_cuda_long_full_precision_window(Hq, Hkv, D, bits):
    """Sinks and residual windows longer than the full-precision split's shared-memory
    chunk (40 rows at D = 256, ~70-90 at D = 128): chunk boundaries inside the sinks and
    inside the window, GQA 8 and 16 (a warp's second and later heads read the chunks
    again), and a sequence with no full-precision tokens."""
    kw = make_inputs(Hq=Hq, Hkv=Hkv, D=D, bits=bits, group=64, dtype=torch.float16, packed=[128, 0, 64, 192],
                     resid=[200, 150, 0, 37], sinks=[45, 3, 0, 9], t_cap=192, r_cap=200, s_cap=45, device="cuda")
    out, lse = run(kw)
    check_result(kw, out, lse, lse_bound="lowp")


@pytest.mark.cuda
def test_cuda_rejects_unaligned_residual_window():
    kw = to_device(make_inputs(D=128, bits=2, group=64, dtype=torch.float16), "cuda")
    r = kw["k_resid"]
    flat = torch.zeros(r.numel() + 1, dtype=r.dtype, device="cuda")
    odd = flat[1:].view(r.shape)
    odd.copy_(r)
    with pytest.raises(RuntimeError, match="k_resid must be 16-byte aligned on CUDA"):
        run({**kw, "k_resid": odd})


@pytest.mark.cuda
def test_cuda_graph_replay():
    """Capture one call on static inputs, then change the lengths and the data in
    place: the replay must see them (lengths are read on the device at run time)."""
    shape = dict(Hq=16, Hkv=4, D=128, bits=4, group=64, dtype=torch.float16, t_cap=1024, r_cap=64, s_cap=4)
    static = make_inputs(packed=[100, 0, 320], resid=[3, 12, 0], sinks=[1, 0, 2], device="cuda", **shape)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture
        run(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = run(static)

    for packed, resid, sinks in (([1000, 64, 0], [63, 0, 5], [4, 0, 3]), ([0, 1024, 513], [0, 40, 64], [0, 2, 4])):
        new = make_inputs(packed=packed, resid=resid, sinks=sinks, device="cuda", garbage_seed=len(packed) + packed[0],
                          **shape)
        for name in TENSOR_ARGS:
            static[name].copy_(new[name])
        graph.replay()
        torch.cuda.synchronize()
        e_out, e_lse = run(static)
        # same inputs, same kernels: the same bits (decode_attention is deterministic)
        assert bitwise_equal(out, e_out) and bitwise_equal(lse, e_lse)
        check_result(static, out, lse, lse_bound="lowp")


@pytest.mark.cuda
def test_cuda_concurrent_streams():
    """Calls interleaved on two streams, never synchronised with each other, give the
    bits of the same calls made one after another: nothing a launch uses (workspace,
    split plan, cached occupancy) is shared between launches that may overlap."""
    shapes = [dict(Hq=32, Hkv=8, D=128, bits=2, group=64, dtype=torch.bfloat16, packed=[4096, 3000, 64, 4001],
                   resid=[64, 3, 0, 17], sinks=[4, 0, 2, 1], t_cap=4096, r_cap=64, s_cap=4),
              dict(Hq=16, Hkv=4, D=64, bits=4, group=32, dtype=torch.float16, packed=[2048, 32, 1500],
                   resid=[5, 64, 0], sinks=[0, 3, 4], t_cap=2048, r_cap=64, s_cap=4)]
    inputs = [make_inputs(device="cuda", garbage_seed=i + 3, **s) for i, s in enumerate(shapes)]
    expected = [run(kw) for kw in inputs]
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    results = [[], []]
    for _ in range(6):
        for i, (s, kw) in enumerate(zip(streams, inputs)):
            with torch.cuda.stream(s):
                results[i].append(run(kw))
    torch.cuda.synchronize()
    for i in range(2):
        for out, lse in results[i]:
            assert bitwise_equal(out, expected[i][0]) and bitwise_equal(lse, expected[i][1])
    check_result(inputs[0], *expected[0], lse_bound="lowp")


@pytest.mark.cuda
def test_cuda_many_units():
    """4224 (sequence, KV head) units, between small calls: the split plan's equal-chunk
    branch with many units, and as many merge CTAs (one per query head)."""
    big = make_inputs(Hq=128, Hkv=128, D=64, bits=2, group=32, dtype=torch.bfloat16, packed=[96, 0, 64] * 11,
                      resid=[3, 7, 0] * 11, sinks=[1, 0, 2] * 11, t_cap=128, r_cap=8, s_cap=2, device="cuda")
    small = make_inputs(Hq=8, Hkv=2, D=128, bits=4, group=64, dtype=torch.float16, device="cuda")
    for kw in (small, big, small, big):
        out, lse = run(kw)
        check_result(kw, out, lse, lse_bound="lowp")
