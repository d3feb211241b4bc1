"""Eviction scorers and budget allocation (python/kvcore/eviction.py) against explicit
references and the properties their papers rely on."""
import pytest
import torch

import kvcore
from kvcore import eviction as ev


def test_l2norm_scores():
    k = torch.randn(2, 3, 20, 64, dtype=torch.bfloat16)
    assert torch.allclose(ev.l2norm_scores(k), -k.float().norm(dim=-1))


@pytest.mark.parametrize("heads", [(8, 2), (9, 3), (4, 4), (6, 1)])
@pytest.mark.parametrize("kernel_size", [1, 5])
def test_snapkv_matches_loop_reference(heads, kernel_size):
    Hq, Hkv = heads
    torch.manual_seed(Hq)
    B, w, T, D = 2, 4, 30, 32
    q, k = torch.randn(B, Hq, w, D), torch.randn(B, Hkv, T, D)
    got = ev.snapkv_scores(q, k, kernel_size)
    expect = torch.zeros(B, Hkv, T)
    for b in range(B):
        for h in range(Hq):
            g = h // (Hq // Hkv)
            for i in range(w):  # query i is token T - w + i: it sees keys 0 .. T - w + i
                n = T - w + i + 1
                expect[b, g, :n] += torch.softmax(k[b, g, :n] @ q[b, h, i] / D ** 0.5, dim=-1)
    if kernel_size > 1:
        r = kernel_size // 2
        expect = torch.stack([expect[..., max(0, t - r):t + r + 1].amax(-1) for t in range(T)], dim=-1)
    assert torch.allclose(got, expect, atol=1e-5)


def test_snapkv_without_causal_mask_lets_the_window_see_everything():
    torch.manual_seed(1)
    q, k = torch.randn(1, 4, 3, 16), torch.randn(1, 2, 10, 16)
    causal, full = ev.snapkv_scores(q, k, 1), ev.snapkv_scores(q, k, 1, causal=False)
    assert causal[..., -1].sum() < full[..., -1].sum()  # only the last query sees the last key
    assert torch.allclose(full.sum(-1), torch.full((1, 2), 6.0)) and torch.allclose(causal.sum(-1), full.sum(-1))


@pytest.mark.parametrize("heads", [(8, 2), (6, 1), (4, 4)])
@pytest.mark.parametrize("chunk", [1, 7, 512])
def test_h2o_scores_match_loop_reference(heads, chunk):
    Hq, Hkv = heads
    torch.manual_seed(Hq + chunk)
    B, T, D = 2, 19, 16
    q, k = torch.randn(B, Hq, T, D), torch.randn(B, Hkv, T, D)
    expect = torch.zeros(B, Hkv, T)
    for b in range(B):
        for h in range(Hq):
            g = h // (Hq // Hkv)
            for i in range(T):
                expect[b, g, :i + 1] += torch.softmax(k[b, g, :i + 1] @ q[b, h, i] / D ** 0.5, dim=-1)
    got = ev.h2o_scores(q, k, chunk=chunk)
    assert torch.allclose(got, expect, atol=1e-5)
    assert torch.allclose(got.sum(-1), torch.full((B, Hkv), T * Hq / Hkv))


def test_qfilters_recovers_the_dominant_query_direction():
    torch.manual_seed(0)
    N, Hq, D = 512, 4, 64
    dirs = torch.nn.functional.normalize(torch.randn(Hq, D), dim=-1)
    q = 4.0 * dirs[None] * (1 + 0.2 * torch.randn(N, Hq, 1)) + 0.3 * torch.randn(N, Hq, D)
    u = ev.qfilters_calibrate(q)
    assert ((u * dirs).sum(-1) > 0.99).all()  # right direction and orientation
    k = torch.randn(1, 2, 10, D)
    expect = torch.einsum("bhtd,hd->bht", k, u.reshape(2, 2, D).sum(1))
    assert torch.allclose(ev.qfilters_scores(k, u), expect, atol=1e-5)


def test_qfilters_scores_predict_attention():
    """Keys that project strongly on the direction get the most attention from queries
    along it: the top-10 by Q-Filters score overlap the top-10 by true attention."""
    torch.manual_seed(1)
    D = 64
    dirn = torch.nn.functional.normalize(torch.randn(D), dim=0)
    q = 3.0 * dirn + 0.5 * torch.randn(200, 1, D)
    k = torch.randn(1, 1, 300, D)
    u = ev.qfilters_calibrate(q)
    s = ev.qfilters_scores(k, u)[0, 0]
    attn = torch.softmax(q[:, 0] @ k[0, 0].T / D ** 0.5, dim=-1).sum(0)
    overlap = len(set(s.topk(10).indices.tolist()) & set(attn.topk(10).indices.tolist()))
    assert overlap >= 7


def test_streaming_select():
    lengths = torch.tensor([10, 3, 5, 0], dtype=torch.int32)
    idx, count = ev.streaming_select(lengths, 5, sinks=2)
    assert idx.tolist() == [[0, 1, 7, 8, 9], [0, 1, 2, -1, -1], [0, 1, 2, 3, 4], [-1] * 5]
    assert count.tolist() == [5, 3, 5, 0]
    # the same as topk_select on scores that rank sinks first, then recency
    T = 10
    scores = torch.arange(T, dtype=torch.float32).repeat(4, 1)
    scores[:, :2] = 1e6
    t_idx, t_count = kvcore.topk_select(scores, 5, lengths)
    assert torch.equal(idx, t_idx) and torch.equal(count, t_count)


def test_budgets():
    assert ev.uniform_budgets(100, 3) == [34, 33, 33]
    p = ev.pyramid_budgets(1000, 8, ratio=8.0)
    assert sum(p) == 1000 and all(a >= b for a, b in zip(p, p[1:]))
    assert 7.0 <= p[0] / p[-1] <= 9.0
    assert ev.pyramid_budgets(10, 1) == [10]


@pytest.mark.parametrize("normalise", ["sum", "softmax"])
def test_adaptive_head_budgets(normalise):
    torch.manual_seed(2)
    B, Hkv, T = 2, 4, 100
    scores = torch.rand(B, Hkv, T) * 0.01
    scores[:, 0, :3] = 50.0  # head 0: attention concentrated on 3 tokens
    lengths = torch.tensor([100, 30])
    got = ev.adaptive_head_budgets(scores, lengths, 20, normalise)
    assert got.dtype == torch.int32 and got.shape == (B, Hkv)
    assert got[0].sum().item() == 80 and (got[1] <= 30).all() and got[1].sum().item() == 80
    assert got[0, 0] < got[0, 1:].min()  # the concentrated head gives its share away
    with pytest.raises(ValueError, match="normalise must be"):
        ev.adaptive_head_budgets(scores, lengths, 20, "max")


def test_errors():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ev.snapkv_scores(torch.randn(1, 2, 2, 8), torch.randn(1, 2, 5, 8), 4)
    with pytest.raises(ValueError, match="Hq=3 must be a multiple of Hkv=2"):
        ev.snapkv_scores(torch.randn(1, 3, 2, 8), torch.randn(1, 2, 5, 8))
    with pytest.raises(ValueError, match="sinks <= budget"):
        ev.streaming_select(torch.tensor([5], dtype=torch.int32), 2, sinks=4)


def test_hashevict_replace():
    torch.manual_seed(4)
    R, T, D = 4, 6, 3
    k, sig = torch.randn(R, T, D), torch.randint(0, 100, (R, T, 2), dtype=torch.int32)
    new_k, new_sig = torch.randn(R, D), torch.randint(0, 100, (R, 2), dtype=torch.int32)
    scores = torch.tensor([[5, 1, 7, 1, 9, 9], [3, 3, 3, 3, 3, 3], [0, 0, 0, 0, 0, 0], [4, 2, 8, 0, 0, 0]])
    lengths = torch.tensor([6, 6, 2, 3], dtype=torch.int32)
    expect_k, expect_sig = k.clone(), sig.clone()
    slots = []
    for r in range(R):
        n = int(lengths[r])
        s = n if n < T else min(range(n), key=lambda t: (int(scores[r, t]), t))
        slots.append(s)
        expect_k[r, s], expect_sig[r, s] = new_k[r], new_sig[r]
    slot, n = ev.hashevict_replace([k, sig], [new_k, new_sig], scores, lengths)
    assert slot.tolist() == slots == [1, 0, 2, 3]
    assert n.tolist() == [6, 6, 3, 4]
    assert torch.equal(k, expect_k) and torch.equal(sig, expect_sig)


def test_block_select_keeps_packed_keys_exact():
    """Whole-block eviction of a packed key cache: after compacting codes by tokens and
    scales/mins by blocks, the kept keys dequantize exactly as before."""
    torch.manual_seed(5)
    B, Hkv, T, D, G = 2, 2, 256, 64, 32
    k = torch.randn(B, Hkv, T, D, dtype=torch.bfloat16)
    codes, scale, mn = kvcore.quantize_kv(k, 2, G, "channel")
    full = kvcore.dequantize_kv(codes, scale, mn, 2, G, "channel").view(B * Hkv, T, D)
    scores = torch.randn(B * Hkv, T)
    lengths = torch.tensor([256, 200, 64, 0], dtype=torch.int32)  # 200 -> 6 whole blocks
    bidx, bcount, tidx, tcount = ev.block_select(scores, lengths, G, 96)
    assert bcount.tolist() == [3, 3, 2, 0] and tcount.tolist() == [96, 96, 64, 0]
    # each kept block holds the row's best remaining token score
    blk = scores.view(4, T // G, G).amax(-1)
    assert set(bidx[0].tolist()) == set(blk[0].topk(3).indices.tolist())
    kvcore.compact_kv(codes.view(B * Hkv, T, -1), tidx, tcount)
    for part in (scale, mn):
        kvcore.compact_kv(part.view(B * Hkv, T // G, -1), bidx, bcount)
    kept = kvcore.dequantize_kv(codes[:, :, :96].contiguous(), scale[:, :, :3].contiguous(),
                                mn[:, :, :3].contiguous(), 2, G, "channel").view(B * Hkv, 96, D)
    for r in range(3):
        n = int(tcount[r])
        assert torch.equal(kept[r, :n], full[r, tidx[r, :n].long()])
    with pytest.raises(ValueError, match="keeps no whole block"):
        ev.block_select(scores, lengths, G, 16)
