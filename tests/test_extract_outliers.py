"""kvcore.extract_outliers against kvcore.reference_corrections.extract_outliers (equal
bit for bit: the selection is defined in float32 with an explicit tie-break), plus
planted outliers, constant groups, non-finite input, the error it removes from
quantization, opcheck, torch.compile and bad input."""
import pytest
import torch

import kvcore
from kvcore import reference_corrections as rc

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def real_like(shape, dtype, seed):
    """Per-channel scales and offsets (keys) with a sprinkle of large entries."""
    gen = torch.Generator().manual_seed(seed)
    D = shape[-1]
    x = torch.randn(shape, generator=gen) * torch.exp(torch.randn(D, generator=gen)) + torch.randn(D, generator=gen)
    flat = x.view(-1)
    flat[torch.randperm(flat.numel(), generator=gen)[: flat.numel() // 100]] *= 12
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("D, G", [(64, 32), (64, 64), (128, 64), (128, 128), (256, 64)])
@pytest.mark.parametrize("count", [1, 4])
def test_matches_reference_bit_for_bit(dtype, axis, D, G, count):
    x = real_like((2, 3, 2 * G, D), dtype, seed=D + G + count)
    got = kvcore.extract_outliers(x, count, G, axis)
    want = rc.extract_outliers(x, count, G, axis)
    for name, g, w in zip(("index", "value", "dense"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g, w), f"{name} differs"


@pytest.mark.parametrize("axis", ["token", "channel"])
def test_finds_planted_outliers(axis):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 64, 128, dtype=torch.bfloat16)
    planted = torch.stack([torch.randperm(128)[:2].sort().values for _ in range(2 * 2 * 64)]).view(2, 2, 64, 2)
    x.scatter_(-1, planted, torch.full(planted.shape, -50.0, dtype=x.dtype))
    idx, val, dense = kvcore.extract_outliers(x, 2, 64, axis)
    assert torch.equal(idx.long(), planted)
    assert (val == -50).all() and dense.abs().max() < 10
    assert torch.equal(rc.apply_outliers(dense, idx, val), x)


def test_constant_groups_pick_the_lowest_channels():
    x = torch.full((1, 64, 64), 3.0)
    idx, val, dense = kvcore.extract_outliers(x, 3, 64, "token")
    assert torch.equal(idx, torch.tensor([0, 1, 2], dtype=torch.uint8).expand(1, 64, 3))
    assert torch.equal(dense, x) and (val == 3).all()


def test_non_finite_entries_become_outliers():
    x = torch.randn(1, 64, 64)
    x[0, 5, 17] = float("nan")
    x[0, 9, 40] = float("inf")
    idx, val, dense = kvcore.extract_outliers(x, 1, 64, "channel")
    assert idx[0, 5, 0] == 17 and torch.isnan(val[0, 5, 0])
    assert idx[0, 9, 0] == 40 and val[0, 9, 0] == float("inf")
    assert torch.isfinite(dense).all()  # the group's range stays finite: nothing is poisoned


@pytest.mark.parametrize("axis", ["token", "channel"])
def test_lowers_quantization_error(axis):
    x = real_like((2, 4, 256, 128), torch.float16, seed=7)
    def rel(y):
        return ((y.float() - x.float()).norm() / x.float().norm()).item()
    plain = kvcore.dequantize_kv(*kvcore.quantize_kv(x, 2, 64, axis), 2, 64, axis)
    idx, val, dense = kvcore.extract_outliers(x, 2, 64, axis)
    fixed = rc.apply_outliers(kvcore.dequantize_kv(*kvcore.quantize_kv(dense, 2, 64, axis), 2, 64, axis), idx, val)
    assert rel(fixed) < 0.8 * rel(plain)


def test_opcheck_and_compile():
    x = real_like((2, 64, 64), torch.bfloat16, seed=1)
    torch.library.opcheck(torch.ops.kvcore.extract_outliers.default, (x, 2, 64, "channel"))
    f = torch.compile(lambda t: kvcore.extract_outliers(t, 2, 64, "token"), fullgraph=True)
    for g, w in zip(f(x), kvcore.extract_outliers(x, 2, 64, "token")):
        assert torch.equal(g, w)


@pytest.mark.parametrize("x, args, msg", [
    (torch.randn(64, 64), (0, 64, "token"), r"count must be between 1 and min\(16, D - 1\), got 0 for D = 64"),
    (torch.randn(64, 64), (17, 64, "token"), r"count must be between 1 and min\(16, D - 1\), got 17"),
    (torch.randn(64, 512), (2, 64, "token"), r"D \(the last dimension of x\) must be at most 256 .*, got 512"),
    (torch.randn(96, 64), (2, 64, "channel"), r"with axis=\"channel\", T must be a multiple of group_size \(64\), got T = 96"),
    (torch.randn(64, 96), (2, 64, "token"), r"with axis=\"token\", D must be a multiple of group_size \(64\), got D = 96"),
    (torch.randn(64, 64), (2, 48, "token"), r"group_size must be 32, 64 or 128, got 48"),
    (torch.randn(64, 64), (2, 64, "tokens"), r"axis must be \"token\" or \"channel\", got \"tokens\""),
    (torch.randint(0, 9, (64, 64)), (2, 64, "token"), r"x must be float16, bfloat16 or float32, got Long"),
    (torch.randn(64, 128)[:, ::2], (2, 64, "token"), r"x must be contiguous"),
    (torch.randn(64), (2, 64, "token"), r"x must have shape \[\.\.\., T, D\], got 1 dimension"),
])
def test_errors(x, args, msg):
    with pytest.raises(RuntimeError, match=r"kvcore\.extract_outliers: " + msg):
        kvcore.extract_outliers(x, *args)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("D, G, count", [(64, 32, 1), (128, 64, 2), (128, 128, 4), (256, 64, 16)])
def test_cuda_equals_cpu_bit_for_bit(dtype, axis, D, G, count):
    x = real_like((2, 3, 2 * G, D), dtype, seed=D + count)
    x.view(-1)[5] = float("nan")
    cpu = kvcore.extract_outliers(x, count, G, axis)
    gpu = kvcore.extract_outliers(x.cuda(), count, G, axis)
    for name, c, g in zip(("index", "value", "dense"), cpu, gpu):
        assert torch.equal(c.view(torch.uint8), g.cpu().view(torch.uint8)), name  # bits, NaN included
