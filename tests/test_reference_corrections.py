"""The reference corrections of issue 4 (kvcore.reference_corrections): rotation,
sparse outliers, low-rank error. They are the references the kernels will be tested
against, so they are checked here against independent facts (orthogonality, planted
outliers, exact low-rank residuals)."""
import pytest
import torch

import kvcore
from kvcore import reference_corrections as rc


@pytest.mark.parametrize("D", [64, 128, 256])
def test_hadamard_rotation_is_orthogonal_and_keeps_scores(D):
    h = rc.hadamard(D)
    assert torch.equal(h @ h.T, D * torch.eye(D, dtype=torch.float64))
    q, k = torch.randn(3, 5, D, dtype=torch.float64), torch.randn(3, 7, D, dtype=torch.float64)
    qr, kr = rc.hadamard_rotate(q, seed=3), rc.hadamard_rotate(k, seed=3)
    torch.testing.assert_close(qr @ kr.transpose(-1, -2), q @ k.transpose(-1, -2))
    torch.testing.assert_close(rc.hadamard_rotate(kr, seed=3, inverse=True), k)
    assert not torch.allclose(rc.hadamard_rotate(k, seed=4), kr)  # the seed matters


def test_hadamard_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="D must be a power of two, got 96"):
        rc.hadamard(96)


@pytest.mark.parametrize("axis", ["channel", "token"])
def test_outliers_find_planted_entries_and_restore_them(axis):
    torch.manual_seed(0)
    B, H, T, D, G, c = 2, 3, 128, 64, 64, 2
    x = torch.randn(B, H, T, D)
    # two planted outliers per token at distinct, known channels
    planted = torch.stack([torch.randperm(D)[:c].sort().values for _ in range(B * H * T)]).view(B, H, T, c)
    x.scatter_(-1, planted, 40.0 * torch.sign(torch.randn(B, H, T, c)))
    idx, val, dense = rc.extract_outliers(x, c, G, axis)
    assert idx.dtype == torch.uint8 and idx.shape == (B, H, T, c)
    assert torch.equal(idx.long(), planted)
    assert torch.equal(val, x.gather(-1, planted))
    assert dense.abs().max() < 10  # the planted values no longer stretch any range
    assert torch.equal(rc.apply_outliers(dense, idx, val), x)


def test_outliers_lower_the_quantization_error():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 256, 64)
    x.view(-1)[torch.randperm(x.numel())[:200]] *= 25
    err = lambda y: (y - x).norm() / x.norm()
    plain = kvcore.dequantize_kv(*kvcore.quantize_kv(x, 2, 64, "token"), 2, 64, "token", x.dtype)
    idx, val, dense = rc.extract_outliers(x, 2, 64, "token")
    fixed = rc.apply_outliers(kvcore.dequantize_kv(*kvcore.quantize_kv(dense, 2, 64, "token"), 2, 64, "token",
                                                   x.dtype), idx, val)
    assert err(fixed) < 0.5 * err(plain)


def test_lowrank_recovers_a_low_rank_residual():
    torch.manual_seed(2)
    B, H, nb, G, D, r = 2, 2, 3, 64, 64, 3
    u, w = torch.randn(B, H, nb, G, r, dtype=torch.float64), torch.randn(B, H, nb, D, r, dtype=torch.float64)
    resid = (u @ w.transpose(-1, -2)).reshape(B, H, nb * G, D)
    a, b = rc.lowrank_error(resid, r, G)
    assert a.shape == (B, H, nb, G, r) and b.shape == (B, H, nb, D, r) and a.dtype == torch.float16
    approx = rc.apply_lowrank(torch.zeros_like(resid), a, b)
    assert (approx - resid).norm() / resid.norm() < 2e-3  # fp16 factors


def test_lowrank_is_the_best_rank_r_fit():
    torch.manual_seed(3)
    resid = torch.randn(1, 1, 64, 64, dtype=torch.float64)
    a, b = rc.lowrank_error(resid, 2, 64, iters=8)
    err = (rc.apply_lowrank(torch.zeros_like(resid), a, b) - resid).norm()
    s = torch.linalg.svdvals(resid[0, 0])
    best = s[2:].pow(2).sum().sqrt()  # Eckart-Young
    assert err <= 1.01 * best
