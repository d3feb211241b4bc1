"""kvcore.lowrank_error (GEAR) against independent facts: exact recovery of a low-rank
residual, the Eckart-Young optimum from an SVD, the float64 reference
(kvcore.reference_corrections.lowrank_error), orthonormal factors, zero input, opcheck
and bad input."""
import pytest
import torch

import kvcore
from kvcore import reference_corrections as rc

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def approx(a, b, like):
    return rc.apply_lowrank(torch.zeros_like(like, dtype=torch.float64), a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("G, D, r", [(32, 64, 1), (64, 128, 3), (128, 64, 8), (64, 256, 2)])
def test_recovers_low_rank_residual(dtype, G, D, r):
    torch.manual_seed(G + D + r)
    u, w = torch.randn(2, 3, G, r), torch.randn(2, 3, D, r)
    resid = (u @ w.transpose(-1, -2)).reshape(1, 2, 3 * G, D).to(dtype)
    a, b = kvcore.lowrank_error(resid, r, G)
    assert a.shape == (1, 2, 3, G, r) and b.shape == (1, 2, 3, D, r) and a.dtype == b.dtype == torch.float16
    ref = resid.double()
    assert (approx(a, b, resid) - ref).norm() / ref.norm() < 4e-3  # fp16 factors


@pytest.mark.parametrize("r", [1, 2, 4])
def test_close_to_the_best_rank_r_fit(r):
    torch.manual_seed(r)
    x = torch.randn(1, 4, 128, 128)
    resid = x - kvcore.dequantize_kv(*kvcore.quantize_kv(x, 2, 64, "channel"), 2, 64, "channel")
    a, b = kvcore.lowrank_error(resid, r, 64, iters=6)
    err = (approx(a, b, resid) - resid.double()).reshape(1, 4, 2, 64, 128).pow(2).sum((-1, -2)).sqrt()
    blocks = resid.double().reshape(1, 4, 2, 64, 128)
    best = torch.linalg.svdvals(blocks)[..., r:].pow(2).sum(-1).sqrt()  # Eckart-Young
    assert (err <= 1.03 * best).all()
    ar, br = rc.lowrank_error(resid, r, 64, iters=6)
    err_ref = (approx(ar, br, resid) - resid.double()).norm()
    assert (approx(a, b, resid) - resid.double()).norm() <= 1.01 * err_ref


def test_factors_are_orthonormal_and_zero_input_is_zero():
    torch.manual_seed(5)
    a, _ = kvcore.lowrank_error(torch.randn(2, 128, 64), 4, 64)
    gram = a.double().transpose(-1, -2) @ a.double()
    torch.testing.assert_close(gram, torch.eye(4, dtype=torch.float64).expand_as(gram), atol=3e-3, rtol=0)
    a0, b0 = kvcore.lowrank_error(torch.zeros(1, 64, 64), 2, 64)
    assert torch.isfinite(a0).all() and (approx(a0, b0, torch.zeros(1, 64, 64)) == 0).all()


def test_opcheck():
    torch.library.opcheck(torch.ops.kvcore.lowrank_error.default, (torch.randn(2, 64, 64), 2, 32, 2, 1))


@pytest.mark.parametrize("x, args, msg", [
    (torch.randn(64, 64), (0, 64), r"rank must be between 1 and 8, got 0"),
    (torch.randn(64, 64), (9, 64), r"rank must be between 1 and 8, got 9"),
    (torch.randn(96, 64), (2, 64), r"T \(residual.shape\[-2\]\) must be a multiple of group_size \(64\), got 96"),
    (torch.randn(64, 64), (2, 16), r"group_size must be 32, 64 or 128, got 16"),
    (torch.randn(64, 64), (2, 64, -1), r"iters must be between 0 and 16, got -1"),
    (torch.randn(64, 64), (2, 64, 3, -2), r"seed must be >= 0, got -2"),
    (torch.randint(0, 3, (64, 64)), (2, 64), r"residual must be float16, bfloat16 or float32, got Long"),
    (torch.randn(64, 128)[:, ::2], (2, 64), r"residual must be contiguous"),
])
def test_errors(x, args, msg):
    with pytest.raises(RuntimeError, match=r"kvcore\.lowrank_error: " + msg):
        kvcore.lowrank_error(x, *args)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("G, D, r, iters", [(32, 64, 1, 0), (64, 128, 4, 3), (128, 256, 8, 2)])
def test_cuda_equals_cpu_bit_for_bit(dtype, G, D, r, iters):
    torch.manual_seed(G + D)
    resid = torch.randn(2, 3, 2 * G, D).to(dtype)
    cpu = kvcore.lowrank_error(resid, r, G, iters=iters, seed=4)
    gpu = kvcore.lowrank_error(resid.cuda(), r, G, iters=iters, seed=4)
    for c, g in zip(cpu, gpu):
        assert torch.equal(c.view(torch.int16), g.cpu().view(torch.int16))  # same operations, same order
