"""The eviction primitives of issue 5 (lsh_signature, hamming_scores, topk_select)
against plain-PyTorch references written from their definitions: exact selection on
ties, GQA/MQA, ragged lengths, opcheck and bad-input errors."""
import math

import pytest
import torch

import kvcore
from kvcore import reference_eviction as ref

LOWP = [torch.float32, torch.float16, torch.bfloat16]


# ---------------------------------------------------------------- lsh_signature

def test_projection_matches_its_definition():
    """Every entry of the kernel's projection, recovered through one-hot inputs."""
    D, nbits, seed = 16, 64, 5
    P = ref.lsh_projection(D, nbits, seed)
    eye = torch.eye(D)
    for sign in (1.0, -1.0):
        sig = kvcore.lsh_signature(sign * eye, nbits, seed)  # row d: bits of sign * P[d] > 0
        bits = ((sig.to(torch.int64)[..., None] >> torch.arange(32)) & 1).reshape(D, nbits).bool()
        assert torch.equal(bits, sign * P > 0)
    assert abs(P.mean().item()) < 0.1 and abs(P.std().item() - 1.0) < 0.1


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("nbits", [32, 64, 128, 256])
def test_signature_matches_reference(dtype, nbits):
    x = torch.randn(3, 5, 40, 64).to(dtype)
    sig = kvcore.lsh_signature(x, nbits, 11)
    assert sig.shape == (3, 5, 40, nbits // 32) and sig.dtype == torch.int32
    expect = ref.lsh_signature(x.float(), nbits, 11)
    # bits may differ only where the projection is within float32 rounding of zero
    proj = x.double() @ ref.lsh_projection(64, nbits, 11).double()
    near_zero = proj.abs() < 1e-4 * x.double().abs().sum(-1, keepdim=True)
    diff = ((sig ^ expect).to(torch.int64)[..., None] >> torch.arange(32)) & 1
    diff = diff.reshape(*proj.shape).bool()
    assert not (diff & ~near_zero).any()


def test_signature_bits_estimate_the_angle():
    torch.manual_seed(0)
    D, nbits, n = 128, 256, 400
    x = torch.randn(n, D)
    theta = torch.rand(n) * math.pi
    u = torch.randn(n, D)
    u -= (u * x).sum(-1, keepdim=True) / (x * x).sum(-1, keepdim=True) * x  # orthogonal to x
    y = torch.cos(theta)[:, None] * x / x.norm(dim=-1, keepdim=True) + torch.sin(theta)[:, None] * u / u.norm(dim=-1, keepdim=True)
    sx, sy = kvcore.lsh_signature(x, nbits, 3), kvcore.lsh_signature(y, nbits, 3)
    differ = ref.popcount32(sx ^ sy).sum(-1).double()
    expected = nbits * theta.double() / math.pi
    assert (differ - expected).abs().mean() < 0.06 * nbits
    assert torch.corrcoef(torch.stack([differ, expected]))[0, 1] > 0.97


def test_signature_seed_and_determinism():
    x = torch.randn(10, 128)
    a, b, c = kvcore.lsh_signature(x, 64, 1), kvcore.lsh_signature(x, 64, 1), kvcore.lsh_signature(x, 64, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------- hamming_scores

@pytest.mark.parametrize("heads", [(4, 4), (9, 3), (8, 2), (16, 2), (8, 1)])
@pytest.mark.parametrize("W", [1, 2, 4, 8])
def test_hamming_matches_reference(heads, W):
    Hq, Hkv = heads
    gen = torch.Generator().manual_seed(Hq * 10 + W)
    q = torch.randint(-2**31, 2**31 - 1, (3, Hq, W), generator=gen, dtype=torch.int32)
    k = torch.randint(-2**31, 2**31 - 1, (3, Hkv, 37, W), generator=gen, dtype=torch.int32)
    k[0, :, 5] = q[0, 0]  # an exact match for the first query head
    lengths = torch.tensor([37, 0, 12], dtype=torch.int32)
    out = kvcore.hamming_scores(q, k, lengths)
    assert out.dtype == torch.int32 and out.shape == (3, Hkv, 37)
    assert torch.equal(out, ref.hamming_scores(q, k, lengths))
    assert (out[1] == -1).all() and (out[2, :, 12:] == -1).all()


def test_hamming_lengths_are_clamped():
    q = torch.zeros(2, 2, 1, dtype=torch.int32)
    k = torch.zeros(2, 2, 5, 1, dtype=torch.int32)
    out = kvcore.hamming_scores(q, k, torch.tensor([-3, 99], dtype=torch.int32))
    assert (out[0] == -1).all() and (out[1] == 32).all()


def test_hamming_of_signatures_ranks_by_similarity():
    torch.manual_seed(1)
    q = torch.randn(1, 4, 128)
    k = torch.randn(1, 1, 200, 128)
    k[0, 0, 7] = q[0].mean(0)  # the group's mean query: the closest key
    s = kvcore.hamming_scores(kvcore.lsh_signature(q, 256), kvcore.lsh_signature(k, 256),
                              torch.tensor([200], dtype=torch.int32))
    assert s[0, 0].argmax().item() == 7


# ---------------------------------------------------------------- topk_select

def check_topk(scores, k, lengths):
    idx, count = kvcore.topk_select(scores, k, lengths)
    e_idx, e_count = ref.topk_select(scores, k, lengths)
    assert idx.dtype == torch.int32 and count.dtype == torch.int32
    assert torch.equal(count, e_count)
    assert torch.equal(idx, e_idx)


@pytest.mark.parametrize("k", [1, 3, 8, 40])
def test_topk_float_with_ties_and_nan(k):
    gen = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 4, (6, 33), generator=gen).float()  # many ties
    scores[1, ::5] = float("nan")
    scores[2] = float("nan")
    scores[3, 3] = float("inf")
    scores[4, :] = -0.0
    scores[4, ::2] = 0.0  # -0 and +0 tie
    lengths = torch.tensor([33, 30, 33, 10, 33, 0], dtype=torch.int32)
    check_topk(scores, k, lengths)


@pytest.mark.parametrize("k", [1, 16, 100])
def test_topk_int_scores(k):
    gen = torch.Generator().manual_seed(7)
    scores = torch.randint(-5, 6, (5, 200), generator=gen, dtype=torch.int32)
    lengths = torch.tensor([200, 150, 16, 3, -4], dtype=torch.int32)
    check_topk(scores, k, lengths)


def test_topk_prefers_recent_on_ties_and_clamps():
    idx, count = kvcore.topk_select(torch.ones(1, 6), 2, torch.tensor([99], dtype=torch.int32))
    assert idx.tolist() == [[4, 5]] and count.tolist() == [2]


def test_topk_hamming_pipeline():
    """HashEvict's step: keep the k keys closest to the current queries."""
    torch.manual_seed(2)
    B, Hq, Hkv, T, k = 2, 8, 2, 64, 16
    q = kvcore.lsh_signature(torch.randn(B, Hq, 128), 128)
    ks = kvcore.lsh_signature(torch.randn(B, Hkv, T, 128), 128)
    lengths = torch.tensor([64, 40], dtype=torch.int32)
    scores = kvcore.hamming_scores(q, ks, lengths).reshape(B * Hkv, T)
    idx, count = kvcore.topk_select(scores, k, lengths.repeat_interleave(Hkv))
    assert count.tolist() == [k] * (B * Hkv)
    assert (idx[2:] < 40).all()
    check_topk(scores, k, lengths.repeat_interleave(Hkv))


# ---------------------------------------------------------------- opcheck and errors

def test_opcheck():
    x = torch.randn(2, 3, 64)
    torch.library.opcheck(torch.ops.kvcore.lsh_signature.default, (x, 64, 1))
    q = torch.randint(0, 1000, (2, 4, 2), dtype=torch.int32)
    k = torch.randint(0, 1000, (2, 2, 9, 2), dtype=torch.int32)
    torch.library.opcheck(torch.ops.kvcore.hamming_scores.default, (q, k, torch.tensor([9, 4], dtype=torch.int32)))
    s = torch.randn(3, 20)
    torch.library.opcheck(torch.ops.kvcore.topk_select.default, (s, 5, torch.tensor([20, 3, 0], dtype=torch.int32)))


@pytest.mark.parametrize("call, msg", [
    (lambda: kvcore.lsh_signature(torch.randn(4, 64), 48), r"nbits must be 32, 64, 128 or 256, got 48"),
    (lambda: kvcore.lsh_signature(torch.randn(4, 64).to(torch.int32), 64), r"x must be float16, bfloat16 or float32"),
    (lambda: kvcore.lsh_signature(torch.randn(4, 64), 64, -1), r"seed must be >= 0"),
    (lambda: kvcore.lsh_signature(torch.randn(64, 4).t(), 64), r"x must be contiguous"),
    (lambda: kvcore.hamming_scores(torch.zeros(2, 4, 2, dtype=torch.int32), torch.zeros(2, 3, 5, 2, dtype=torch.int32),
                                   torch.zeros(2, dtype=torch.int32)), r"Hq=4 \(q_sig.size\(1\)\) must be a multiple of the KV heads Hkv=3"),
    (lambda: kvcore.hamming_scores(torch.zeros(2, 4, 2, dtype=torch.int32), torch.zeros(2, 2, 5, 1, dtype=torch.int32),
                                   torch.zeros(2, dtype=torch.int32)), r"k_sig must have shape \[B, Hkv, T, W\] = \[2, \*, \*, 2\]"),
    (lambda: kvcore.hamming_scores(torch.zeros(2, 4, 2), torch.zeros(2, 2, 5, 2, dtype=torch.int32),
                                   torch.zeros(2, dtype=torch.int32)), r"q_sig must be int32"),
    (lambda: kvcore.hamming_scores(torch.zeros(2, 4, 3, dtype=torch.int32), torch.zeros(2, 2, 5, 3, dtype=torch.int32),
                                   torch.zeros(2, dtype=torch.int32)), r"q_sig must hold 1, 2, 4 or 8 words"),
    (lambda: kvcore.hamming_scores(torch.zeros(2, 4, 2, dtype=torch.int32), torch.zeros(2, 2, 5, 2, dtype=torch.int32),
                                   torch.zeros(3, dtype=torch.int32)), r"lengths must have shape \[B\] = \[2\]"),
    (lambda: kvcore.topk_select(torch.randn(2, 5), 0, torch.zeros(2, dtype=torch.int32)), r"k must be at least 1, got 0"),
    (lambda: kvcore.topk_select(torch.randn(2, 5).double(), 2, torch.zeros(2, dtype=torch.int32)), r"scores must be float32 or int32"),
    (lambda: kvcore.topk_select(torch.randn(2, 5), 2, torch.zeros(2, dtype=torch.int64)), r"lengths must be int32"),
    (lambda: kvcore.topk_select(torch.randn(2, 5), 2, torch.zeros(3, dtype=torch.int32)), r"lengths must have shape \[R\] = \[2\]"),
    (lambda: kvcore.topk_select(torch.randn(10), 2, torch.zeros(1, dtype=torch.int32)), r"scores must have shape \[R, L\]"),
])
def test_errors(call, msg):
    with pytest.raises(RuntimeError, match=msg):
        call()


# ---------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("heads", [(8, 2), (9, 3), (8, 1), (32, 32)])
@pytest.mark.parametrize("W", [1, 2, 4, 8])
@pytest.mark.parametrize("T", [1000, 1001, 4102, 9000])  # odd T: whole 16-byte chunks at W >= 4 only
def test_hamming_cuda_equals_cpu(heads, W, T):
    Hq, Hkv = heads
    gen = torch.Generator().manual_seed(W + T)
    q = torch.randint(-2**31, 2**31 - 1, (3, Hq, W), generator=gen, dtype=torch.int32)
    k = torch.randint(-2**31, 2**31 - 1, (3, Hkv, T, W), generator=gen, dtype=torch.int32)
    lengths = torch.tensor([T, 0, 333 + T // 2], dtype=torch.int32)
    out = kvcore.hamming_scores(q.cuda(), k.cuda(), lengths.cuda())
    assert torch.equal(out.cpu(), kvcore.hamming_scores(q, k, lengths))


@pytest.mark.cuda
@pytest.mark.parametrize("W", [1, 2, 4, 8])
def test_hamming_cuda_odd_lengths_and_offset_views(W):
    """Rows that are not whole 16-byte chunks (T * W % 4 != 0: W = 1, 2 here), and
    signatures at a 4-byte offset, take the per-token kernel."""
    gen = torch.Generator().manual_seed(10 + W)
    q = torch.randint(-2**31, 2**31 - 1, (2, 6, W), generator=gen, dtype=torch.int32)
    k = torch.randint(-2**31, 2**31 - 1, (2, 3, 1001, W), generator=gen, dtype=torch.int32)
    lengths = torch.tensor([1001, 998], dtype=torch.int32)
    expect = kvcore.hamming_scores(q, k, lengths)
    assert torch.equal(kvcore.hamming_scores(q.cuda(), k.cuda(), lengths.cuda()).cpu(), expect)
    flat = torch.zeros(k.numel() + 1, dtype=torch.int32).cuda()
    flat[1:] = k.flatten().cuda()
    k_view = flat[1:].view(k.shape)  # 4 bytes past a 16-byte boundary
    assert torch.equal(kvcore.hamming_scores(q.cuda(), k_view, lengths.cuda()).cpu(), expect)
    k4 = k[:, :, :1000].contiguous()  # T multiple of 4 but the view is misaligned: per-token kernel
    flat4 = torch.zeros(k4.numel() + 1, dtype=torch.int32).cuda()
    flat4[1:] = k4.flatten().cuda()
    assert torch.equal(kvcore.hamming_scores(q.cuda(), flat4[1:].view(k4.shape), lengths.cuda()).cpu(),
                       kvcore.hamming_scores(q, k4, lengths))


# ---------------------------------------------------------------- compact_kv

def reference_compact(x, idx, count):
    out = x.clone()
    for r in range(x.shape[0]):
        n = int(count[r])
        if n:
            out[r, :n] = x[r, idx[r, :n].long()]
    return out


@pytest.mark.parametrize("shape, dtype", [((6, 50, 32), torch.uint8), ((6, 50, 4, 128), torch.bfloat16),
                                          ((6, 50), torch.float32), ((6, 50, 2), torch.int32)])
def test_compact_matches_reference(shape, dtype):
    gen = torch.Generator().manual_seed(len(shape))
    x = (torch.randn(*shape, generator=gen) * 50).to(dtype)
    scores = torch.randn(shape[0], shape[1], generator=gen)
    lengths = torch.tensor([50, 30, 7, 0, 50, 12], dtype=torch.int32)
    idx, count = kvcore.topk_select(scores, 10, lengths)
    expect = reference_compact(x, idx, count)
    out = kvcore.compact_kv(x, idx, count)
    assert out.data_ptr() == x.data_ptr()
    assert torch.equal(x, expect)


def test_compact_all_parts_of_a_packed_cache_alike():
    """Codes, value scales and residual tokens of one cache, compacted with one selection,
    still dequantize to the kept tokens."""
    torch.manual_seed(3)
    B, Hkv, T, D = 2, 2, 64, 128
    v = torch.randn(B, Hkv, T, D, dtype=torch.bfloat16)
    codes, scale, mn = kvcore.quantize_kv(v, 4, 64, "token")
    full = kvcore.dequantize_kv(codes, scale, mn, 4, 64, "token")
    idx, count = kvcore.topk_select(torch.randn(B * Hkv, T), 20, torch.full((B * Hkv,), T, dtype=torch.int32))
    for part in (codes, scale, mn):
        kvcore.compact_kv(part.view(B * Hkv, T, -1), idx, count)
    kept = kvcore.dequantize_kv(codes[:, :, :20].contiguous(), scale[:, :, :20].contiguous(),
                                mn[:, :, :20].contiguous(), 4, 64, "token")
    expect = torch.stack([full.view(B * Hkv, T, D)[r, idx[r].long()] for r in range(B * Hkv)]).view(B, Hkv, 20, D)
    assert torch.equal(kept, expect)


def test_compact_rejects_bad_rows_and_moves_nothing():
    x = torch.arange(20.).reshape(2, 10)
    before = x.clone()
    for idx, count, msg in [
        ([[1, 3], [5, 5]], [2, 2], r"row 1 of idx/count is invalid"),
        ([[1, 3], [5, 10]], [2, 2], r"row 1 of idx/count is invalid"),
        ([[3, 1], [0, 1]], [2, 2], r"row 0 of idx/count is invalid"),
        ([[1, 3], [0, 1]], [2, 3], r"row 1 of idx/count is invalid: count must be in \[0, 2\]"),
    ]:
        with pytest.raises(RuntimeError, match=msg):
            kvcore.compact_kv(x, torch.tensor(idx, dtype=torch.int32), torch.tensor(count, dtype=torch.int32))
        assert torch.equal(x, before)
    with pytest.raises(RuntimeError, match=r"idx must be int32"):
        kvcore.compact_kv(x, torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"x must be contiguous"):
        kvcore.compact_kv(x.t(), torch.zeros(10, 2, dtype=torch.int32), torch.zeros(10, dtype=torch.int32))


def test_compact_opcheck():
    x = torch.randn(3, 12, 4)
    idx, count = kvcore.topk_select(torch.randn(3, 12), 5, torch.tensor([12, 4, 0], dtype=torch.int32))
    torch.library.opcheck(torch.ops.kvcore.compact_kv.default, (x, idx, count))


def _topk_cuda_vs_cpu(scores, k, lengths):
    idx, count = kvcore.topk_select(scores.cuda(), k, lengths.cuda())
    e_idx, e_count = kvcore.topk_select(scores, k, lengths)
    assert torch.equal(count.cpu(), e_count)
    assert torch.equal(idx.cpu(), e_idx)


def _mixed_scores(R, L, gen):
    """Few distinct values (ties), NaN of both signs and a payload, -0/+0, infinities, denormals."""
    s = torch.randint(-2, 3, (R, L), generator=gen).float()
    s[torch.rand(R, L, generator=gen) < 0.2] = float("nan")
    s[torch.rand(R, L, generator=gen) < 0.2] = -0.0
    s[torch.rand(R, L, generator=gen) < 0.05] = float("inf")
    s[torch.rand(R, L, generator=gen) < 0.05] = float("-inf")
    bits = s.view(torch.int32)
    bits[torch.rand(R, L, generator=gen) < 0.05] = -1  # NaN with the sign bit and a payload
    bits[torch.rand(R, L, generator=gen) < 0.02] = 1  # smallest positive denormal
    bits[torch.rand(R, L, generator=gen) < 0.02] = -2**31 + 1  # smallest negative denormal
    return s


@pytest.mark.cuda
@pytest.mark.parametrize("L", [1, 33, 1000, 5000])
@pytest.mark.parametrize("k", [1, 7, "L/8", "L", "L+3"])
@pytest.mark.parametrize("kind", ["mixed", "randn", "int_small", "int_full", "all_nan", "signed_zeros"])
def test_topk_cuda_equals_cpu(L, k, kind):
    k = {"L/8": max(1, L // 8), "L": L, "L+3": L + 3}.get(k, k)
    gen = torch.Generator().manual_seed(L + 7 * (k if isinstance(k, int) else 0))
    R = 9
    if kind == "mixed":
        s = _mixed_scores(R, L, gen)
    elif kind == "randn":
        s = torch.randn(R, L, generator=gen)
    elif kind == "int_small":
        s = torch.randint(-3, 4, (R, L), generator=gen, dtype=torch.int32)
    elif kind == "int_full":
        s = torch.randint(-2**31, 2**31 - 1, (R, L), generator=gen, dtype=torch.int32)
    elif kind == "all_nan":
        s = torch.full((R, L), float("nan"))
    else:
        s = torch.where(torch.rand(R, L, generator=gen) < 0.5, torch.tensor(0.0), torch.tensor(-0.0))
    lengths = torch.tensor([L, L + 100, 0, -5, L // 2, max(L - 1, 0), min(k, L), max(k - 1, 0), 1], dtype=torch.int32)
    _topk_cuda_vs_cpu(s, k, lengths)


@pytest.mark.cuda
@pytest.mark.parametrize("L", [4096, 20000, 32768, 131072])  # 11-bit and 8-bit digits, one CTA or a cluster
@pytest.mark.parametrize("dtype", [torch.float32, torch.int32])
def test_topk_cuda_equals_cpu_long_rows(L, dtype):
    gen = torch.Generator().manual_seed(L)
    R = 64
    if dtype == torch.float32:
        s = torch.randn(R, L, generator=gen)
        s[::4] = _mixed_scores(R // 4, L, gen)
    else:  # Hamming-like scores: a few hundred distinct values, heavy ties
        s = torch.randint(0, 1025, (R, L), generator=gen, dtype=torch.int32)
    lengths = torch.randint(L // 2, L + 1, (R,), generator=gen, dtype=torch.int32)
    lengths[0] = L
    _topk_cuda_vs_cpu(s, L // 8, lengths)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["float", "few_values", "all_equal"])
@pytest.mark.parametrize("k", [1, 777, 50000])
def test_topk_cuda_few_long_rows_split_across_ctas(kind, k):
    """Few rows of 128K: each row is split over a cluster of CTAs (8 on an H100/H200),
    so ties at the k-th value span slices and their kept/skipped split crosses CTAs."""
    gen = torch.Generator().manual_seed(k)
    R, L = 3, 131072
    if kind == "float":
        s = torch.randn(R, L, generator=gen)
    elif kind == "few_values":
        s = torch.randint(0, 7, (R, L), generator=gen, dtype=torch.int32)
    else:
        s = torch.zeros(R, L, dtype=torch.int32)
    lengths = torch.tensor([L, L - 3, 70001], dtype=torch.int32)
    _topk_cuda_vs_cpu(s, k, lengths)


@pytest.mark.cuda
def test_topk_cuda_unaligned_rows():
    """Rows that are not 16-byte aligned take the scalar loads."""
    gen = torch.Generator().manual_seed(3)
    for L in (1001, 4099):
        s = _mixed_scores(5, L, gen)
        _topk_cuda_vs_cpu(s, 100, torch.tensor([L, 999, 500, 0, L], dtype=torch.int32))
        flat = torch.randn(5 * L + 1, generator=gen)
        on_gpu = flat.cuda()[1:].reshape(5, L)  # a view at a 4-byte offset into the GPU buffer
        idx, count = kvcore.topk_select(on_gpu, 100, torch.full((5,), L, dtype=torch.int32).cuda())
        e_idx, e_count = kvcore.topk_select(flat[1:].reshape(5, L), 100, torch.full((5,), L, dtype=torch.int32))
        assert torch.equal(idx.cpu(), e_idx) and torch.equal(count.cpu(), e_count)


@pytest.mark.cuda
@pytest.mark.parametrize("shape, dtype", [((4, 50, 7), torch.uint8), ((4, 50, 3), torch.float16),
                                          ((4, 50, 2, 16), torch.bfloat16), ((64, 300, 64), torch.uint8),
                                          ((3, 40), torch.float32),
                                          # rows of several 8192-unit chunks, one boundary inside a token
                                          ((3, 20000, 32), torch.uint8), ((3, 30001, 12), torch.uint8)])
def test_compact_cuda_equals_cpu(shape, dtype):
    gen = torch.Generator().manual_seed(shape[0])
    R, T = shape[:2]
    x = torch.randint(0, 255, shape, generator=gen).to(dtype)
    k = T // 3
    scores = torch.randn(R, T, generator=gen)
    lengths = torch.randint(-2, T + 2, (R,), generator=gen, dtype=torch.int32)
    idx, count = kvcore.topk_select(scores, k, lengths)
    idx[0, :k], count[0] = torch.arange(k, dtype=torch.int32), k  # already in place
    idx[1, :k], count[1] = torch.arange(1, k + 1, dtype=torch.int32), k  # every source is the previous target
    y = x.cuda()
    out = kvcore.compact_kv(y, idx.cuda(), count.cuda())
    assert out is y
    assert torch.equal(y.cpu(), kvcore.compact_kv(x.clone(), idx, count))


@pytest.mark.cuda
def test_compact_cuda_rejects_bad_rows_and_moves_nothing():
    x = torch.arange(3 * 6, dtype=torch.float32).reshape(3, 6, 1).cuda()
    before = x.clone()
    idx = torch.tensor([[0, 2, 4], [1, 1, 3], [0, 1, 2]], dtype=torch.int32).cuda()
    count = torch.tensor([3, 3, 3], dtype=torch.int32).cuda()
    with pytest.raises(RuntimeError, match=r"row 1 of idx/count is invalid"):
        kvcore.compact_kv(x, idx, count)
    assert torch.equal(x, before)
    with pytest.raises(RuntimeError, match=r"row 2 of idx/count is invalid"):
        kvcore.compact_kv(x, idx[[0, 2, 2]], torch.tensor([3, 3, 4], dtype=torch.int32).cuda())
    assert torch.equal(x, before)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("nbits", [32, 64, 128, 256])
@pytest.mark.parametrize("D", [64, 100, 128, 1024])
def test_lsh_cuda_equals_cpu(dtype, nbits, D):
    x = torch.randn(3, 7, 33, D).to(dtype)  # 693 rows: not a multiple of the 8 rows a warp takes
    x[0, 0, 0] = 0.0  # an all-zero row: every projection is 0, no bit set
    sig = kvcore.lsh_signature(x.cuda(), nbits, 9)
    cpu = kvcore.lsh_signature(x, nbits, 9)
    assert torch.equal(sig.cpu(), cpu)
    assert (cpu[0, 0, 0] == 0).all()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("nbits", [64, 256])
@pytest.mark.parametrize("D", [100, 128])
def test_lsh_cuda_many_rows_equals_cpu(dtype, nbits, D):
    """More rows than one CTA per SM takes: the projection is read from L1/L2 instead of
    being staged in shared memory (the path prefill takes)."""
    x = torch.randn(4, 8, 601, D).to(dtype)
    assert torch.equal(kvcore.lsh_signature(x.cuda(), nbits, 3).cpu(), kvcore.lsh_signature(x, nbits, 3))
