"""kvcore.hadamard_rotate against the float64 dense-matrix reference
(kvcore.reference_corrections.hadamard_rotate), plus the properties a cache relies on:
scores unchanged, exact inverse, seeds that matter, opcheck, torch.compile, errors."""
import math

import pytest
import torch

import kvcore
from kvcore import reference_corrections as rc

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
U = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


def error_bound(x, ref, dtype):
    """fp32 butterflies (log2 D additions, one scale) plus one rounding to dtype."""
    D = x.shape[-1]
    fp32 = (math.log2(D) + 2) * 2.0 ** -24 * x.double().abs().sum(-1, keepdim=True) / math.sqrt(D)
    return fp32 + U[dtype] * ref.abs() + 1e-30


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [16, 64, 128, 256])
@pytest.mark.parametrize("inverse", [False, True])
def test_matches_reference(dtype, D, inverse):
    torch.manual_seed(D)
    x = (torch.randn(2, 3, 37, D) * torch.exp(torch.randn(D))).to(dtype)  # uneven channel scales
    out = kvcore.hadamard_rotate(x, seed=11, inverse=inverse)
    assert out.shape == x.shape and out.dtype == dtype
    ref = rc.hadamard_rotate(x.double(), seed=11, inverse=inverse)
    err = (out.double() - ref).abs()
    assert (err <= error_bound(x, ref, dtype)).all(), f"max error {err.max().item():.3g}"


def test_scores_unchanged_and_inverse_exact():
    torch.manual_seed(0)
    q, k = torch.randn(4, 9, 128), torch.randn(4, 300, 128) * 3
    qr, kr = kvcore.hadamard_rotate(q, 5), kvcore.hadamard_rotate(k, 5)
    s, sr = q @ k.transpose(-1, -2), qr @ kr.transpose(-1, -2)
    assert (sr - s).abs().max() <= 1e-4 * s.abs().max()
    back = kvcore.hadamard_rotate(kr, 5, inverse=True)
    assert (back - k).abs().max() <= 1e-5 * k.abs().max()


def test_spreads_an_outlier_channel():
    x = torch.zeros(1, 64)
    x[0, 3] = 100.0
    y = kvcore.hadamard_rotate(x, 1)
    assert torch.allclose(y.abs(), torch.full_like(y, 100.0 / 8))  # 100 / sqrt(64) in every channel


def test_seed_matters_and_signs_are_balanced():
    x = torch.randn(16, 128)
    assert not torch.allclose(kvcore.hadamard_rotate(x, 0), kvcore.hadamard_rotate(x, 1))
    s = rc.rotation_signs(4096, 0)
    assert abs(s.sum().item()) < 4 * math.sqrt(4096)  # a fair coin, not a constant


def test_opcheck_and_compile():
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.kvcore.hadamard_rotate.default, (x, 2, False))
    f = torch.compile(lambda t: kvcore.hadamard_rotate(t, 2), fullgraph=True)
    assert torch.equal(f(x), kvcore.hadamard_rotate(x, 2))


@pytest.mark.parametrize("x, kwargs, msg", [
    (torch.randn(4, 96), {}, r"the last dimension of x must be a power of two between 2 and 1024, got 96"),
    (torch.randn(4, 1), {}, r"the last dimension of x must be .*, got 1$"),
    (torch.randn(4, 2048), {}, r"the last dimension of x must be .*, got 2048"),
    (torch.randint(0, 5, (4, 64)), {}, r"x must be float16, bfloat16 or float32, got Long"),
    (torch.randn(64, 4).t(), {}, r"x must be contiguous"),
    (torch.randn(4, 64), dict(seed=-1), r"seed must be >= 0, got -1"),
])
def test_errors(x, kwargs, msg):
    with pytest.raises(RuntimeError, match=r"kvcore\.hadamard_rotate: " + msg):
        kvcore.hadamard_rotate(x, **kwargs)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [4, 16, 32, 64, 128, 256, 1024])
@pytest.mark.parametrize("inverse", [False, True])
def test_cuda_equals_cpu_bit_for_bit(dtype, D, inverse):
    torch.manual_seed(D)
    x = (torch.randn(3, 333, D) * torch.exp(torch.randn(D))).to(dtype)
    cpu = kvcore.hadamard_rotate(x, seed=9, inverse=inverse)
    gpu = kvcore.hadamard_rotate(x.cuda(), seed=9, inverse=inverse)
    assert torch.equal(gpu.cpu(), cpu)  # same operations in the same order


@pytest.mark.cuda
def test_cuda_opcheck():
    torch.library.opcheck(torch.ops.kvcore.hadamard_rotate.default,
                          (torch.randn(5, 128, device="cuda", dtype=torch.float16), 1, True))
