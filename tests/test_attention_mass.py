"""decode_attention's optional H2O output: attn_mass [B, Hkv, S_cap + T_cap + R_cap]
gets += each valid token's attention probability summed over its KV head's query
heads, in the same call. Checked against the float64 reference (which recomputes the
softmax from dequantized tokens), on CPU and CUDA, with GQA/MQA, head_dim 64/128/256,
mixed lengths, sinks, corrections, garbage past the lengths, opcheck and bad input."""
import pytest
import torch

import kvcore
from kvcore import reference as ref
from test_decode_attention import make_inputs, to_device
from test_decode_corrections import add_corrections, poison_past_lengths

SHAPES = [  # Hq, Hkv, bits, D, G, packed lengths, t_cap
    (8, 2, 2, 128, 64, [5 * 64 + 7, 0, 3 * 64, 0], 7 * 64),
    (9, 3, 4, 64, 32, [40 * 32 + 5, 7 * 32, 32], 48 * 32),
    (16, 1, 4, 128, 32, [2000, 96], 64 * 32),                    # MQA
    (4, 4, 2, 256, 64, [20 * 64 + 3, 64], 24 * 64),              # no GQA, head_dim 256
    (12, 1, 2, 256, 32, [9 * 32, 0], 12 * 32),                   # 2 head passes on CUDA
]


def mass_inputs(shape, dtype, corrections=(0, 0, 0, 0)):
    Hq, Hkv, bits, D, G, packed, t_cap = shape
    kw = make_inputs(Hq=Hq, Hkv=Hkv, D=D, bits=bits, group=G, dtype=dtype, packed=packed, t_cap=t_cap,
                     resid=[5, 0, 17, 3][:len(packed)], sinks=[2, 6, 0, 1][:len(packed)])
    if any(corrections):
        poison_past_lengths(add_corrections(kw, *corrections, seed=D + G))
    B, S_cap, R_cap = len(packed), kw["k_sink"].shape[2], kw["k_resid"].shape[2]
    start = torch.rand(B, Hkv, S_cap + t_cap + R_cap, generator=torch.Generator().manual_seed(3))
    return kw, start


def check_mass(kw, start, mass, l1_tol):
    """mass - start against the reference: L1 distance relative to the total mass,
    untouched columns bit for bit."""
    expect = ref.attention_mass_f64(**{k: v for k, v in kw.items() if k != "attn_mass"})
    added = mass.cpu().double() - start.double()
    touched = expect != 0
    assert torch.equal(mass.cpu()[~touched], start[~touched]), "columns past the lengths changed"
    l1 = (added - expect).abs().sum().item() / max(expect.sum().item(), 1e-30)
    assert l1 <= l1_tol, f"relative L1 error of the mass {l1:.3g} > {l1_tol}"
    # every query head's probabilities sum to one: a KV head's row sums to its group size
    Hq, Hkv = kw["q"].shape[1], kw["k_codes"].shape[1]
    rows = expect.sum(-1)
    assert torch.allclose(added.sum(-1)[rows > 0], torch.full_like(rows[rows > 0], Hq // Hkv), rtol=l1_tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}-{s[1]}-b{s[2]}-d{s[3]}-g{s[4]}")
def test_cpu_mass_matches_reference(dtype, shape):
    kw, start = mass_inputs(shape, dtype)
    mass = start.clone()
    out, lse = kvcore.ops.decode_attention(**kw, attn_mass=mass)
    check_mass(kw, start, mass, 1e-5)
    plain_out, plain_lse = kvcore.ops.decode_attention(**kw)
    assert torch.equal(out, plain_out) and torch.equal(lse, plain_lse), "asking for the mass changed the attention"


def test_cpu_mass_with_corrections_and_accumulation():
    kw, start = mass_inputs(SHAPES[0], torch.bfloat16, corrections=(2, 1, 1, 2))
    mass = start.clone()
    kvcore.ops.decode_attention(**kw, attn_mass=mass)
    check_mass(kw, start, mass, 1e-5)
    once = mass - start
    kvcore.ops.decode_attention(**kw, attn_mass=mass)  # H2O accumulates over steps
    assert torch.allclose(mass - start, 2 * once, atol=1e-6)


def test_opcheck_with_mass():
    kw, start = mass_inputs(SHAPES[1], torch.float16)
    names = ("q", "k_codes", "k_scale", "k_mn", "v_codes", "v_scale", "v_mn", "k_resid", "v_resid",
             "packed_len", "resid_len")
    args = tuple(kw[n] for n in names) + (kw["bits"], kw["group_size"])
    kwargs = dict(k_sink=kw["k_sink"], v_sink=kw["v_sink"], sink_len=kw["sink_len"], attn_mass=start.clone())
    torch.library.opcheck(torch.ops.kvcore.decode_attention.default, args, kwargs)


@pytest.mark.parametrize("make, msg", [
    (lambda m: m.double(), "attn_mass must be float32"),
    (lambda m: m[:, :, :-1], r"attn_mass must have shape \[B, Hkv, S_cap \+ T_cap \+ R_cap\]"),
    (lambda m: m[:1], r"attn_mass must have shape"),
    (lambda m: m.transpose(0, 1).contiguous().transpose(0, 1), "attn_mass must be contiguous"),
])
def test_mass_errors(make, msg):
    kw, start = mass_inputs((4, 4, 2, 64, 32, [64, 32, 0, 0], 128), torch.float16)
    with pytest.raises(RuntimeError, match=r"kvcore\.decode_attention: " + msg):
        kvcore.ops.decode_attention(**kw, attn_mass=make(start))


# ---------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}-{s[1]}-b{s[2]}-d{s[3]}-g{s[4]}")
@pytest.mark.parametrize("corrections", [(0, 0, 0, 0), (1, 1, 1, 1)])
def test_cuda_mass_matches_reference_and_cpu(dtype, shape, corrections):
    kw, start = mass_inputs(shape, dtype, corrections)
    mass = start.cuda()
    out, lse = kvcore.ops.decode_attention(**to_device(kw, "cuda"), attn_mass=mass)
    check_mass(kw, start, mass, 5e-3)  # scores carry the kernel's fp16 operand rounding
    cpu_mass = start.clone()
    kvcore.ops.decode_attention(**kw, attn_mass=cpu_mass)
    assert (mass.cpu() - cpu_mass).abs().sum() <= 5e-3 * (cpu_mass - start).abs().sum()
    plain_out, plain_lse = kvcore.ops.decode_attention(**to_device(kw, "cuda"))
    assert (out.float() - plain_out.float()).abs().max().item() <= 2e-2
    assert torch.allclose(lse, plain_lse, atol=1e-3)


@pytest.mark.cuda
def test_cuda_graph_replay_with_mass():
    kw, start = mass_inputs(SHAPES[0], torch.bfloat16)
    kw = to_device(kw, "cuda")
    static_q, mass = kw["q"].clone(), torch.zeros_like(start, device="cuda")
    kvcore.ops.decode_attention(**{**kw, "q": static_q}, attn_mass=mass)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kvcore.ops.decode_attention(**{**kw, "q": static_q}, attn_mass=mass)
    mass.zero_()
    q2 = torch.randn_like(static_q)
    static_q.copy_(q2)
    graph.replay()
    graph.replay()
    expect = torch.zeros_like(mass)
    kvcore.ops.decode_attention(**{**kw, "q": q2}, attn_mass=expect)
    assert torch.allclose(mass, 2 * expect, atol=1e-5)
