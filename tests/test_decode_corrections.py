"""decode_attention with the issue-4 corrections of the packed tokens: sparse outliers
(channel index + residual per token) and GEAR low-rank terms (A @ B.T per block), on
the CPU against the float64 reference, plus an end-to-end check that the corrections
built by extract_outliers / lowrank_error bring decode closer to exact attention."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import kvcore
from kvcore import reference as ref
from kvcore import reference_corrections as rc
from test_decode_attention import make_inputs, sm_scale_of, to_device

CORR_ARGS = ("k_outlier_idx", "k_outlier_res", "v_outlier_idx", "v_outlier_res",
             "k_lowrank_a", "k_lowrank_b", "v_lowrank_a", "v_lowrank_b")


def add_corrections(kw, k_count=0, v_count=0, k_rank=0, v_rank=0, seed=0):
    """Random corrections of plausible size (a tenth of the values' spread), some outlier
    indices out of range (>= D: must be ignored)."""
    gen = torch.Generator().manual_seed(seed)
    B, Hkv, T, _ = kw["k_codes"].shape
    D, G, dt = kw["q"].shape[-1], kw["group_size"], kw["q"].dtype
    for side, count, rank in (("k", k_count, k_rank), ("v", v_count, v_rank)):
        if count:
            idx = torch.randint(0, D + 8, (B, Hkv, T, count), generator=gen).to(torch.uint8)
            kw[f"{side}_outlier_idx"] = idx
            kw[f"{side}_outlier_res"] = (3 * torch.randn(B, Hkv, T, count, generator=gen)).to(dt)
        if rank:
            kw[f"{side}_lowrank_a"] = (0.3 * torch.randn(B, Hkv, T // G, G, rank, generator=gen)).half()
            kw[f"{side}_lowrank_b"] = (0.3 * torch.randn(B, Hkv, T // G, D, rank, generator=gen)).half()
    return kw


def lowp_error(kw, ref_out, heads=slice(None)):
    """Max error of SDPA in q's dtype on the same corrected tokens (the tests' yardstick),
    over the query heads `heads`."""
    q, err = kw["q"], 0.0
    cache = {k: v for k, v in kw.items() if k not in ("q", "sm_scale")}
    for b, (k, v) in enumerate(ref.decode_kv_tokens(**cache)):
        if k.shape[1] == 0:
            continue
        o = F.scaled_dot_product_attention(q[b][None, :, None], k.to(q.dtype)[None], v.to(q.dtype)[None],
                                           scale=sm_scale_of(kw), enable_gqa=True)
        err = max(err, (o[0, :, 0].double() - ref_out[b])[heads].abs().max().item())
    return err


def assert_parity(out, cpu_out, bound):
    """CUDA and CPU outputs agree within `bound` plus one unit in the last place of the
    output dtype at each element: both round an fp32 result to q's dtype, and two close
    fp32 values on either side of a rounding boundary land one ulp apart however small
    their difference (the bound can be below an ulp where outputs are large)."""
    _, e = torch.frexp(cpu_out.float())
    ulp = torch.ldexp(torch.full_like(cpu_out, torch.finfo(cpu_out.dtype).eps, dtype=torch.float64), e.long() - 1)
    excess = (out.double() - cpu_out.double()).abs() - ulp
    assert excess.max().item() <= bound, f"CUDA vs CPU: {excess.max().item():.3g} beyond an ulp > {bound:.3g}"


def check_against_reference(kw, out, lse):
    """out/lse (on the CPU) against the float64 reference on the corrected tokens: out
    within twice the error of SDPA in q's dtype, lse within float32 rounding. Returns
    the out bound."""
    ref_out, ref_lse = ref.decode_attention_f64(**kw)
    empty = torch.isinf(ref_lse)
    assert (out[empty] == 0).all() and torch.isinf(lse[empty]).all()
    err = (out.double() - ref_out).abs().max().item()
    bound = 2 * lowp_error(kw, ref_out) + 1e-5
    assert err <= bound, f"out error {err:.3g} > {bound:.3g}"
    lse_err = (lse.double() - ref_lse)[~empty].abs().max().item()
    assert lse_err <= 1e-4 * (1 + ref_lse[~empty].abs().max().item())
    return bound


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits, D, G", [(2, 128, 64), (4, 64, 32), (2, 256, 128)])
@pytest.mark.parametrize("counts", [(1, 0, 0, 0), (0, 3, 0, 0), (0, 0, 2, 0), (0, 0, 0, 4), (2, 1, 1, 2)])
def test_cpu_matches_reference(dtype, bits, D, G, counts):
    kw = make_inputs(Hq=8, Hkv=2, D=D, bits=bits, group=G, dtype=dtype)
    add_corrections(kw, *counts, seed=D + G)
    out, lse = kvcore.ops.decode_attention(**kw)
    check_against_reference(kw, out, lse)


def test_corrections_change_the_result():
    kw = make_inputs(Hq=8, Hkv=2, D=128, bits=2, group=64, dtype=torch.float16)
    plain, _ = kvcore.ops.decode_attention(**kw)
    for counts in ((2, 0, 0, 0), (0, 2, 0, 0), (0, 0, 2, 0), (0, 0, 0, 2)):
        corrected, _ = kvcore.ops.decode_attention(**add_corrections(dict(kw), *counts))
        assert not torch.equal(corrected, plain), counts  # every kind of term is read


def test_extracted_corrections_approach_exact_attention():
    """x -> outliers + quantized rest + low-rank of the remaining residual, as a cache
    would store them: decode gets closer to attention over the exact x."""
    torch.manual_seed(0)
    B, Hq, Hkv, T, D, G = 1, 8, 2, 256, 128, 64
    k = (torch.randn(B, Hkv, T, D) * torch.exp(torch.randn(D)) + torch.randn(D)).half()
    v = torch.randn(B, Hkv, T, D).half()
    k.view(-1)[torch.randperm(k.numel())[:300]] *= 8
    q = torch.randn(B, Hq, D).half()
    lens = dict(packed_len=torch.tensor([T], dtype=torch.int32), resid_len=torch.tensor([0], dtype=torch.int32),
                k_resid=torch.zeros(B, Hkv, 0, D).half(), v_resid=torch.zeros(B, Hkv, 0, D).half(),
                bits=2, group_size=G)
    kw, corr = {}, {}
    for side, x, axis in (("k", k, "channel"), ("v", v, "token")):
        idx, val, dense = kvcore.extract_outliers(x, 2, G, axis)
        codes, scale, mn = kvcore.quantize_kv(dense, 2, G, axis)
        kw.update({f"{side}_codes": codes, f"{side}_scale": scale, f"{side}_mn": mn})
        rec = kvcore.dequantize_kv(codes, scale, mn, 2, G, axis)
        res = (val.float() - rec.float().gather(-1, idx.long())).half()
        a, b = kvcore.lowrank_error((rc.apply_outliers(x, idx, val).float() - rc.apply_outliers(rec, idx, val).float()),
                                    4, G, iters=4)
        corr.update({f"{side}_outlier_idx": idx, f"{side}_outlier_res": res,
                     f"{side}_lowrank_a": a, f"{side}_lowrank_b": b})
    exact = F.scaled_dot_product_attention(q.float()[:, :, None], k.float(), v.float(), enable_gqa=True)[:, :, 0]
    plain_codes = {}
    for side, x, axis in (("k", k, "channel"), ("v", v, "token")):
        c, s, m = kvcore.quantize_kv(x, 2, G, axis)
        plain_codes.update({f"{side}_codes": c, f"{side}_scale": s, f"{side}_mn": m})
    plain, _ = kvcore.ops.decode_attention(q, **plain_codes, **lens)
    fixed, _ = kvcore.ops.decode_attention(q, **kw, **lens, **corr)
    e_plain = (plain.float() - exact).norm() / exact.norm()
    e_fixed = (fixed.float() - exact).norm() / exact.norm()
    assert e_fixed < 0.7 * e_plain, (e_fixed.item(), e_plain.item())


def test_opcheck_with_corrections():
    kw = add_corrections(make_inputs(Hq=4, Hkv=2, D=64, bits=2, group=32, dtype=torch.bfloat16), 2, 1, 1, 2)
    names = ("q", "k_codes", "k_scale", "k_mn", "v_codes", "v_scale", "v_mn", "k_resid", "v_resid",
             "packed_len", "resid_len")
    args = tuple(kw[n] for n in names)
    kwargs = dict(bits=kw["bits"], group_size=kw["group_size"], k_sink=kw["k_sink"], v_sink=kw["v_sink"],
                  sink_len=kw["sink_len"], **{n: kw[n] for n in CORR_ARGS})
    torch.library.opcheck(torch.ops.kvcore.decode_attention.default, args, kwargs)


@pytest.mark.parametrize("change, msg", [
    (lambda kw: kw.pop("k_outlier_res"), r"k_outlier_idx and k_outlier_res must be given together or not at all; k_outlier_res is missing"),
    (lambda kw: kw.pop("v_lowrank_a"), r"v_lowrank_a and v_lowrank_b must be given together or not at all; v_lowrank_a is missing"),
    (lambda kw: kw.update(k_outlier_res=kw["k_outlier_res"].float()), r"k_outlier_res must be float16 \(the dtype of q\), got float32"),
    (lambda kw: kw.update(k_outlier_idx=kw["k_outlier_idx"].to(torch.int16)), r"k_outlier_idx must be uint8, got Short"),
    (lambda kw: kw.update(k_outlier_idx=torch.zeros(*kw["k_outlier_idx"].shape[:3], 17, dtype=torch.uint8),
                          k_outlier_res=torch.zeros(*kw["k_outlier_idx"].shape[:3], 17, dtype=torch.float16)),
     r"k_outlier_idx must hold between 1 and 16 outliers per token \(size\(3\)\), got 17"),
    (lambda kw: kw.update(v_lowrank_a=kw["v_lowrank_a"].float()), r"v_lowrank_a must be float16( \(the dtype of q\))?, got float32"),
    (lambda kw: kw.update(k_lowrank_b=kw["k_lowrank_b"][..., :1].contiguous()),
     r"k_lowrank_b must have shape \[B, Hkv, T_cap/group_size, D, rank\] = \[4, 2, 7, 128, 2\]"),
])
def test_errors(change, msg):
    kw = add_corrections(make_inputs(Hq=4, Hkv=2, D=128, bits=2, group=64, dtype=torch.float16), 1, 1, 2, 2)
    change(kw)
    with pytest.raises(RuntimeError, match=r"kvcore\.decode_attention: " + msg):
        kvcore.ops.decode_attention(**kw)


def poison_past_lengths(kw):
    """NaN in every correction past each sequence's packed length (and in the low-rank
    B of blocks past it): a kernel that lets them into the result returns NaN."""
    G = kw["group_size"]
    n = ref.clamped_lengths(kw["packed_len"], kw["k_codes"].shape[2], G)
    for b, nb in enumerate(n):
        for side in ("k", "v"):
            if f"{side}_outlier_res" in kw:
                kw[f"{side}_outlier_res"][b, :, nb:] = float("nan")
            if f"{side}_lowrank_a" in kw:
                kw[f"{side}_lowrank_a"].view(*kw[f"{side}_lowrank_a"].shape[:2], -1, kw[f"{side}_lowrank_a"].shape[-1])[
                    b, :, nb:] = float("nan")
                kw[f"{side}_lowrank_b"][b, :, nb // G:] = float("nan")
    return kw


def run_against_reference(kw, finite=False, device="cuda"):
    """decode_attention on `device` (optionally asserting a finite output), checked
    against the float64 reference and against the CPU kernel; returns (out, bound)."""
    out, lse = kvcore.ops.decode_attention(**to_device(kw, device))
    out, lse = out.cpu(), lse.cpu()
    if finite:
        assert torch.isfinite(out.float()).all()
    bound = check_against_reference(kw, out, lse)
    cpu_out, _ = kvcore.ops.decode_attention(**kw)
    assert_parity(out, cpu_out, bound)
    return out, bound


CUDA_SHAPES = [  # Hq, Hkv, bits, D, G, packed lengths, t_cap
    (8, 2, 2, 128, 64, [5 * 64 + 7, 0, 3 * 64, 0], 7 * 64),
    (9, 3, 4, 64, 32, [40 * 32 + 5, 7 * 32, 32], 48 * 32),      # GQA 3, several splits
    (32, 8, 2, 128, 128, [30 * 128, 3 * 128 + 100], 32 * 128),  # blocks over two stages and warps
    (16, 1, 4, 128, 32, [2000, 96], 64 * 32),                    # MQA, two blocks a stage
    (4, 4, 2, 256, 64, [20 * 64 + 3, 64], 24 * 64),              # head_dim 256: blocks over two stages
    (12, 1, 2, 256, 32, [9 * 32, 0], 12 * 32),                   # 2 head passes
    (8, 2, 4, 128, 64, [22 * 64 + 9, 64 + 3], 24 * 64),          # 4-bit H4 outliers (32-token stages)
    (8, 2, 4, 256, 64, [14 * 64 + 5, 64], 16 * 64),              # 4-bit H4 outliers at head_dim 256
    (8, 2, 4, 128, 128, [9 * 128 + 50, 128], 10 * 128),          # 4-bit H4 outliers, blocks over 4 stages
    (4, 2, 4, 128, 32, [40 * 32 + 3, 5 * 32], 48 * 32),          # 4-bit H4 outliers, GQA 2 (2 padding heads)
    (8, 2, 2, 128, 32, [33 * 32, 2 * 32 + 5, 0], 33 * 32),       # 2-bit H4 outliers, blocks of 32 (best-2's), part stage
    (9, 3, 2, 64, 64, [40 * 64 + 5, 7 * 64, 64], 48 * 64),       # 2-bit H4 at head_dim 64 (the bundled model's heads)
    (8, 2, 2, 64, 32, [33 * 32, 2 * 32 + 5, 0], 33 * 32),        # the same, blocks of 32
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=lambda s: f"{s[0]}-{s[1]}-b{s[2]}-d{s[3]}-g{s[4]}")
@pytest.mark.parametrize("counts", [(1, 0, 0, 0), (0, 1, 0, 0), (1, 1, 0, 0), (2, 0, 0, 0), (2, 1, 0, 0), (0, 3, 0, 0),
                                    (16, 16, 0, 0), (0, 0, 2, 0), (0, 0, 0, 4), (2, 1, 1, 2), (16, 16, 8, 8),
                                    (0, 2, 0, 0), (1, 2, 0, 0), (2, 2, 0, 0)])
def test_cuda_matches_reference(dtype, shape, counts):
    """Up to two key outliers and two value outliers a token, alone, at GQA groups <= 4
    (any head_dim) run the H4 outlier kernel (its CK, CV = 2 instantiations; at 2 bits the
    stage copy takes two chunks in some lanes, for two a side from a second table of
    sources); every other combination the 8-column kernel."""
    Hq, Hkv, bits, D, G, packed, t_cap = shape
    kw = make_inputs(Hq=Hq, Hkv=Hkv, D=D, bits=bits, group=G, dtype=dtype, packed=packed, t_cap=t_cap,
                     resid=[5] * len(packed), sinks=[2] * len(packed))
    poison_past_lengths(add_corrections(kw, *counts, seed=D + G + Hq))
    run_against_reference(kw)


DYNAMIC_SHAPES = [  # Hq, Hkv, bits, D, G, packed lengths, t_cap
    # value sums in global memory, G == TT: tickets in every build
    (8, 2, 2, 128, 64, [40 * 64 + 7, 9 * 64, 0], 48 * 64),
    (9, 3, 2, 64, 64, [40 * 64 + 5, 7 * 64, 64], 48 * 64),
    # 4 bits, one value outlier a token: sums in shared memory, tickets in runs of whole key
    # blocks (since session 35); two value outliers a token: sums in global memory, static
    (8, 2, 4, 64, 64, [33 * 64, 2 * 64 + 5, 20 * 64], 36 * 64),
    (8, 2, 4, 128, 64, [37 * 64 + 9, 3 * 64, 20 * 64], 40 * 64),
    (12, 3, 4, 128, 128, [30 * 128, 5 * 128 + 33, 0], 32 * 128),
    (8, 2, 4, 256, 64, [29 * 64 + 3, 4 * 64, 17 * 64], 32 * 64),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", DYNAMIC_SHAPES, ids=lambda s: f"{s[0]}-{s[1]}-b{s[2]}-d{s[3]}-g{s[4]}")
@pytest.mark.parametrize("counts", [(0, 1, 0, 0), (1, 1, 0, 0), (2, 1, 0, 0), (0, 2, 0, 0), (1, 2, 0, 0), (2, 2, 0, 0)])
def test_cuda_dynamic_tiles_match_reference(dtype, shape, counts, monkeypatch):
    """The value-outlier kernels that take tiles by ticket (long sequences only, see
    plan_splits), forced at these shapes: sequences of unequal lengths (one empty), a
    partial last stage, every outlier count they serve."""
    monkeypatch.setenv("KVCORE_DECODE_DYNAMIC_TILES", "always")
    Hq, Hkv, bits, D, G, packed, t_cap = shape
    kw = make_inputs(Hq=Hq, Hkv=Hkv, D=D, bits=bits, group=G, dtype=dtype, packed=packed, t_cap=t_cap,
                     resid=[5] * len(packed), sinks=[2] * len(packed))
    poison_past_lengths(add_corrections(kw, *counts, seed=D + G + Hq))
    run_against_reference(kw)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("scores", ["climb", "high", "low"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("per_token", [1, 2])
@pytest.mark.parametrize("tiles", ["auto", "always"])
def test_cuda_value_outlier_sums_rebase(dtype, bits, scores, D, per_token, tiles, monkeypatch):
    """The H4 outlier kernel keeps each warp's value-outlier sums relative to a head's first
    running max and rebases every head's sums when one head's max outgrows it by 2^64.
    "climb": head 0 of each KV group sees key-outlier scores that climb 1.5 (log2) a token
    in 128-token saw teeth, so every warp's max outgrows its reference; heads 1-3 do not
    see them (q[..., 0] = 0), so their sums are rescaled by factors that matter.
    "high" / "low": head 0's scores are all 100 (log2) above / below the others', far
    outside the range of the others' references and factors. (Two value outliers a token:
    the sums in global memory at either width.) tiles: the plan's choice (static at this
    length) or tickets wherever the kernel takes them (KVCORE_DECODE_DYNAMIC_TILES)."""
    monkeypatch.setenv("KVCORE_DECODE_DYNAMIC_TILES", "1" if tiles == "auto" else "always")
    Hq, Hkv, G, t_cap = 8, 2, 64, 4096
    kw = make_inputs(Hq=Hq, Hkv=Hkv, D=D, bits=bits, group=G, dtype=dtype, packed=[4000, 3000 + 17],
                     resid=[5, 3], sinks=[2, 0], t_cap=t_cap)
    B = 2
    scale = sm_scale_of(kw) * 1.4426950408889634
    q = kw["q"].float()
    q[:, :, 0] = 0.0
    q[:, ::Hq // Hkv, 0] = 1.0
    kw["q"] = q.to(dtype)
    tok = torch.arange(t_cap, dtype=torch.float32)
    kw["k_outlier_idx"] = torch.zeros(B, Hkv, t_cap, 1, dtype=torch.uint8)
    shift = {"climb": 1.5 * (tok % 128), "high": torch.full_like(tok, 100.0), "low": torch.full_like(tok, -100.0)}
    kw["k_outlier_res"] = (shift[scores] / scale).expand(B, Hkv, t_cap)[..., None].contiguous().to(dtype)
    gen = torch.Generator().manual_seed(5)
    kw["v_outlier_idx"] = torch.randint(0, D, (B, Hkv, t_cap, per_token), generator=gen).to(torch.uint8)
    kw["v_outlier_res"] = (3 * torch.randn(B, Hkv, t_cap, per_token, generator=gen)).to(dtype)
    poison_past_lengths(kw)
    out, bound = run_against_reference(kw, finite=True)
    # heads 1-3 on their own yardstick (head 0's peaked softmax dominates the one above)
    ref_out, _ = ref.decode_attention_f64(**kw)
    others = torch.arange(Hq) % (Hq // Hkv) != 0
    err = (out.double() - ref_out)[:, others].abs().max().item()
    bound_others = 2 * lowp_error(kw, ref_out, others) + 1e-5
    assert err <= bound_others, f"heads 1-3: out error {err:.3g} > {bound_others:.3g}"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("per_token", [1, 2])
def test_cuda_value_outliers_on_few_channels(dtype, bits, channels, per_token):
    """Value outliers concentrated on 1 or 3 channels (as real caches have them), so that
    most tokens of an m-tile add to the same rows of the H4 kernel's value sums: the 4-bit
    kernel's integer atomics in shared memory then hit the same addresses, none lost. Two
    a token (sums in global memory at both widths): a token's second outlier is on its
    successor's first channel (1 channel: the same row twice)."""
    Hq, Hkv, D, G, t_cap = 8, 2, 128, 64, 1536
    kw = make_inputs(Hq=Hq, Hkv=Hkv, D=D, bits=bits, group=G, dtype=dtype, packed=[1400 + 9, 600],
                     resid=[4, 0], sinks=[2, 0], t_cap=t_cap)
    gen = torch.Generator().manual_seed(11 + bits + channels)
    tok = torch.arange(t_cap)
    idx = torch.stack([7 + 41 * ((tok + j) % channels) for j in range(per_token)], -1).expand(2, Hkv, t_cap, per_token)
    kw["v_outlier_idx"] = idx.contiguous().to(torch.uint8)
    kw["v_outlier_res"] = (3 * torch.randn(2, Hkv, t_cap, per_token, generator=gen)).to(dtype)
    poison_past_lengths(kw)
    out, bound = run_against_reference(kw)
    # the outlier channels carry a sum of ~100s of terms: compare them on their own scale
    ref_out, _ = ref.decode_attention_f64(**kw)
    chans = sorted({7 + 41 * c for c in range(channels)})
    err = (out.double() - ref_out)[..., chans].abs().max().item()
    assert err <= bound, f"outlier channels: error {err:.3g} > {bound:.3g}"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("D", [128, 256])
@pytest.mark.parametrize("pattern", ["grow", "shrink", "spike", "zero_then"])
def test_cuda_value_outlier_sums_scale(dtype, bits, D, pattern):
    """The 4-bit H4 kernel keeps one value outlier a token in 32-bit integer sums whose
    scale follows a bound on them (the 2-bit kernel's float sums in global memory see the
    same residuals): residual magnitudes that sweep 2^-8 .. 2^14 over the sequence
    ("grow": the sums are shifted right many times; "shrink": the first stages set a
    coarse scale), one huge residual among tiny ones ("spike"), or zeros before the first
    nonzero ("zero_then": the first nonzero stage sets the scale). Each must match the
    reference, the small residuals included where they matter."""
    Hq, Hkv, G, t_cap = 8, 2, 64, 3072
    kw = make_inputs(Hq=Hq, Hkv=Hkv, D=D, bits=bits, group=G, dtype=dtype, packed=[3000 + 7, 1100],
                     resid=[5, 2], sinks=[2, 0], t_cap=t_cap)
    gen = torch.Generator().manual_seed(D + len(pattern))
    tok = torch.arange(t_cap, dtype=torch.float32)
    frac = tok / t_cap
    mag = {"grow": 2.0 ** (-8 + 22 * frac), "shrink": 2.0 ** (14 - 22 * frac),
           "spike": torch.where(tok == 1500, torch.tensor(2.0 ** 14), torch.tensor(2.0 ** -6)),
           "zero_then": torch.where(tok < 700, torch.tensor(0.0), torch.tensor(3.0))}[pattern]
    kw["v_outlier_idx"] = torch.randint(0, D, (2, Hkv, t_cap, 1), generator=gen).to(torch.uint8)
    sign = torch.randn(2, Hkv, t_cap, 1, generator=gen).sign()
    kw["v_outlier_res"] = (sign * mag[:, None]).to(dtype)
    poison_past_lengths(kw)
    run_against_reference(kw, finite=True)


@pytest.mark.cuda
@pytest.mark.parametrize("bits", [2, 4])
def test_cuda_nan_value_outlier_shows(bits):
    """A NaN value residual of a stored token is not dropped: the output of its KV group's
    heads is NaN at its channel (the 4-bit kernel's integer sums turn the warp's sums NaN)."""
    Hq, Hkv, D, G, t_cap = 8, 2, 128, 64, 1024
    kw = add_corrections(make_inputs(Hq=Hq, Hkv=Hkv, D=D, bits=bits, group=G, dtype=torch.float16,
                                     packed=[900, 500], resid=[3, 0], sinks=[0, 0], t_cap=t_cap), 1, 1, 0, 0, seed=3)
    kw["v_outlier_idx"][1, 0, 200, 0] = 17
    kw["v_outlier_res"][1, 0, 200, 0] = float("nan")
    out, _ = kvcore.ops.decode_attention(**to_device(kw, "cuda"))
    out = out.cpu()
    cpu_out, _ = kvcore.ops.decode_attention(**kw)
    assert cpu_out[1, :Hq // Hkv, 17].isnan().all()
    assert out[1, :Hq // Hkv, 17].isnan().all()
    assert not out[0].isnan().any() and not out[1, Hq // Hkv:].isnan().any()


@pytest.mark.cuda
def test_cuda_graph_replay_with_corrections():
    kw = to_device(add_corrections(make_inputs(Hq=8, Hkv=2, D=128, bits=2, group=64, dtype=torch.bfloat16,
                                               packed=[900, 300], resid=[5, 0], sinks=[2, 0],
                                               t_cap=1024), 1, 1, 1, 1), "cuda")
    expect, _ = kvcore.ops.decode_attention(**kw)
    static_q = kw["q"].clone()
    kvcore.ops.decode_attention(**{**kw, "q": static_q})
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, _ = kvcore.ops.decode_attention(**{**kw, "q": static_q})
    q2 = torch.randn_like(static_q)
    static_q.copy_(q2)
    graph.replay()
    again, _ = kvcore.ops.decode_attention(**{**kw, "q": q2})
    assert torch.equal(out, again) or (out.float() - again.float()).abs().max().item() < 1e-2
    assert not torch.equal(again, expect)


@pytest.mark.cuda
@pytest.mark.parametrize("bits, D", [(2, 128), (4, 64)])
def test_cuda_dynamic_tiles_across_graph_replays(bits, D, monkeypatch):
    """The value-outlier kernels (2 bits, sums in global memory; 4 bits, sums in shared
    memory, since session 35) hand out tiles by ticket, from per-unit counters in the
    workspace that no kernel zeroes: each grid opens them with its own epoch (%gridid).
    Eager calls over a workspace of garbage, and replays of a captured call, whose previous
    replay left the counters past the end, must still see every tile: each matches the
    reference. (These shapes are below the length where the plan takes tickets by itself:
    "always".)"""
    monkeypatch.setenv("KVCORE_DECODE_DYNAMIC_TILES", "always")
    kw = add_corrections(make_inputs(Hq=16, Hkv=4, D=D, bits=bits, group=64, dtype=torch.bfloat16,
                                     packed=[4000, 2500 + 7, 64], resid=[5, 0, 3], sinks=[2, 0, 1], t_cap=4096),
                         1, 1, 0, 0, seed=5)
    dev = to_device(kw, "cuda")
    static_q = dev["q"].clone()
    junk = torch.full((1 << 22,), -1, dtype=torch.int32, device="cuda")  # freed: the workspace may reuse it
    del junk
    for _ in range(2):  # eager (the second over the first's counters); the first also warms up the capture
        out, lse = kvcore.ops.decode_attention(**{**dev, "q": static_q})
        check_against_reference({**kw, "q": dev["q"].cpu()}, out.cpu(), lse.cpu())
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = kvcore.ops.decode_attention(**{**dev, "q": static_q})
    gen = torch.Generator().manual_seed(11)
    for _ in range(3):
        q = torch.randn(kw["q"].shape, generator=gen).to(kw["q"].dtype)
        static_q.copy_(q)
        graph.replay()
        torch.cuda.synchronize()
        check_against_reference({**kw, "q": q}, out.cpu(), lse.cpu())


@pytest.mark.cuda
def test_cuda_rejects_misaligned_corrections():
    kw = to_device(add_corrections(make_inputs(Hq=4, Hkv=2, D=128, bits=2, group=64, dtype=torch.float16),
                                   1, 0, 0, 0), "cuda")
    flat = torch.zeros(kw["k_outlier_idx"].numel() + 1, dtype=torch.uint8, device="cuda")
    kw["k_outlier_idx"] = flat[1:].view(kw["k_outlier_idx"].shape)
    with pytest.raises(RuntimeError, match="k_outlier_idx must be 16-byte aligned on CUDA"):
        kvcore.ops.decode_attention(**kw)


@pytest.mark.cuda
@pytest.mark.parametrize("shape, counts, why", [
    ((8, 2), (3, 0, 0, 0), "more than 2 outliers a token"),
    ((8, 2), (1, 1, 1, 0), "outliers together with low-rank terms"),
    ((16, 2), (1, 1, 0, 0), "a GQA group of more than 4"),
    ((8, 2), (1, 1, 0, 0), None),
    ((8, 2), (2, 2, 0, 0), None),
    ((8, 2), (0, 0, 2, 2), None),  # low rank alone: the general kernel is its only path
])
def test_cuda_says_when_outliers_miss_the_fast_kernel(shape, counts, why, capfd):
    """Outliers the fast outlier kernel cannot serve run on the general corrections kernel
    (~0.3-0.6x of plain): the op says so once a process (TORCH_WARN_ONCE; warn-always here
    so that every case is seen), naming the reason, and says nothing where the fast kernel
    serves them. torch.ops calls do not route C++ warnings to Python's warnings module
    before pytorch/pytorch#193451 (torch 2.11 prints them to stderr through c10's handler),
    so the message is looked for in both places, and must appear exactly once in all."""
    Hq, Hkv = shape
    kw = to_device(add_corrections(make_inputs(Hq=Hq, Hkv=Hkv, D=128, bits=2, group=64, dtype=torch.bfloat16,
                                               packed=[300, 64], resid=[5, 0], sinks=[2, 0]), *counts), "cuda")
    was = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    capfd.readouterr()
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            kvcore.ops.decode_attention(**kw)
    finally:
        torch.set_warn_always(was)
    key = "general corrections kernel"
    said = [str(w.message) for w in seen if key in str(w.message)]
    said += [line for line in capfd.readouterr().err.splitlines() if key in line]
    if why is None:
        assert not said, said
    else:
        assert len(said) == 1 and why in said[0], said
