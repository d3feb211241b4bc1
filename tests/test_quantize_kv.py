"""quantize_kv / dequantize_kv against the pure-PyTorch reference (kvcore.reference)."""
import itertools

import pytest
import torch

import kvcore
from kvcore import reference as ref
from conftest import DEVICES, DTYPES, bits_equal

# (B, H, T, D): head_dim 64/128/256, batch and heads > 1, T not a multiple of the group.
TOKEN_SHAPES = [(2, 3, 17, 64), (1, 8, 5, 128), (3, 2, 33, 256), (2, 1, 1, 128)]
CHANNEL_SHAPES = [(2, 3, 128, 64), (1, 4, 256, 128), (2, 2, 128, 256)]
# Only valid combinations (D % group for "token", T % group for "channel");
# the invalid ones are rejected with an error, tested in test_errors.py.
CASES = [
    (shape, axis, group)
    for axis, shapes in (("token", TOKEN_SHAPES), ("channel", CHANNEL_SHAPES))
    for shape in shapes
    for group in (32, 64, 128)
    if (shape[-1] if axis == "token" else shape[-2]) % group == 0
]


def kv_like(shape, dtype, device, axis):
    """Random data with per-channel outliers (what real keys look like)."""
    x = torch.randn(shape, device=device)
    if axis == "channel":
        x = x * torch.exp(torch.randn(shape[-1], device=device))
    return (x * 2).to(dtype)


def max_error_ok(x, deq, scale, group_size, axis):
    """|x - deq| <= scale/2 element-wise, up to float32 rounding of the code computation
    (< 1e-4 of a step) and the rounding of deq to its own dtype."""
    s = ref._ungrouped(
        scale.float().unsqueeze(-1).expand(*ref._grouped(x.float(), group_size, axis).shape),
        x.shape, group_size, axis)
    eps = torch.finfo(deq.dtype).eps
    tol = s * (0.5 + 1e-4) + eps * torch.maximum(x.float().abs(), deq.float().abs()) + 1e-30
    err = (x.float() - deq.float()).abs()
    return bool((err <= tol).all()), (err / tol).max().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape,axis,group_size", CASES)
def test_matches_reference_and_error_bound(shape, axis, group_size, bits, dtype, device):
    x = kv_like(shape, dtype, device, axis)
    codes, scale, mn = kvcore.quantize_kv(x, bits, group_size, axis)
    r_codes, r_scale, r_mn = ref.quantize_kv(x.cpu(), bits, group_size, axis)
    assert codes.dtype == torch.uint8 and scale.dtype == dtype and mn.dtype == dtype
    assert bits_equal(scale, r_scale) and bits_equal(mn, r_mn)
    assert torch.equal(codes.cpu(), r_codes), "codes differ from the reference"
    deq = kvcore.dequantize_kv(codes, scale, mn, bits, group_size, axis)
    assert deq.shape == x.shape and deq.dtype == dtype and deq.device == x.device
    ok, worst = max_error_ok(x, deq, scale, group_size, axis)
    assert ok, f"error exceeds half a step (worst ratio {worst:.3f})"
    r_deq = ref.dequantize_kv(r_codes, r_scale, r_mn, bits, group_size, axis)
    torch.testing.assert_close(deq.cpu(), r_deq, rtol=0, atol=0)
    deq32 = kvcore.dequantize_kv(codes, scale, mn, bits, group_size, axis, torch.float32)
    assert deq32.dtype == torch.float32
    torch.testing.assert_close(deq32.cpu(), ref.dequantize_kv(r_codes, r_scale, r_mn, bits, group_size, axis, torch.float32), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_groups_are_exact(axis, dtype, device):
    x = torch.full((2, 2, 64, 128), 3.140625, dtype=dtype, device=device)
    x[0, 1] = -7.5
    x[1, 0] = 0.0
    for bits in (2, 4, 8):
        codes, scale, mn = kvcore.quantize_kv(x, bits, 64, axis)
        deq = kvcore.dequantize_kv(codes, scale, mn, bits, 64, axis)
        assert not torch.isnan(deq).any()
        assert torch.equal(deq, x)
        assert (scale == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("axis", ["token", "channel"])
def test_nonfinite_poisons_only_its_group(axis, device):
    x = torch.randn(1, 2, 64, 128, device=device, dtype=torch.float16)
    x[0, 0, 3, 5] = float("nan")
    x[0, 1, 10, 100] = float("inf")
    codes, scale, mn = kvcore.quantize_kv(x, 4, 32, axis)
    deq = kvcore.dequantize_kv(codes, scale, mn, 4, 32, axis)
    bad = torch.zeros_like(x, dtype=torch.bool)
    if axis == "token":
        bad[0, 0, 3, 0:32] = True
        bad[0, 1, 10, 96:128] = True
    else:
        bad[0, 0, 0:32, 5] = True
        bad[0, 1, 0:32, 100] = True
    assert torch.isnan(deq[bad]).all()
    assert torch.isfinite(deq[~bad]).all()
    assert torch.isnan(scale).sum() == 2 and torch.isnan(mn).sum() == 2


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_leading_dims(device):
    x = torch.randn(0, 4, 7, 64, device=device, dtype=torch.bfloat16)
    codes, scale, mn = kvcore.quantize_kv(x, 2, 32, "token")
    assert codes.shape == (0, 4, 7, 16) and scale.shape == (0, 4, 7, 2)
    assert kvcore.dequantize_kv(codes, scale, mn, 2, 32, "token").shape == x.shape
    x = torch.randn(64, 128, device=device)  # 2-D: [T, D]
    codes, scale, mn = kvcore.quantize_kv(x, 4, 64, "channel")
    assert codes.shape == (64, 64) and scale.shape == (1, 128)


@pytest.mark.parametrize("device", DEVICES)
def test_layout_worked_example(device):
    """The worked example of docs/FORMAT.md, byte for byte."""
    x = torch.arange(32, dtype=torch.float32, device=device).reshape(1, 32) % 4  # codes 0,1,2,3,...
    codes, scale, mn = kvcore.quantize_kv(x, 2, 32, "token")
    assert scale.item() == 1.0 and mn.item() == 0.0
    # word 0 holds channels 0..15: even channels in bits 0-15, odd channels in bits 16-31
    # even channels have codes 0,2,0,2,... -> 0b10_00_10_00... = 0x8888; odd 1,3,1,3 -> 0xDDDD
    assert codes.cpu().tolist() == [[0x88, 0x88, 0xDD, 0xDD, 0x88, 0x88, 0xDD, 0xDD]]


def _opcheck_samples(device):
    for dtype, axis, bits in itertools.product(DTYPES, ("token", "channel"), (2, 4, 8)):
        yield torch.randn(2, 3, 64, 128, device=device, dtype=dtype), bits, 64, axis


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for x, bits, group, axis in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.kvcore.quantize_kv.default, (x, bits, group, axis))
        codes, scale, mn = kvcore.quantize_kv(x, bits, group, axis)
        torch.library.opcheck(torch.ops.kvcore.dequantize_kv.default, (codes, scale, mn, bits, group, axis, None))
        torch.library.opcheck(torch.ops.kvcore.dequantize_kv.default, (codes, scale, mn, bits, group, axis, torch.float32))


def test_torch_compile_fullgraph_cpu():
    @torch.compile(fullgraph=True, backend="inductor")
    def roundtrip(k, v):
        kc, ks, km = kvcore.ops.quantize_kv(k, 2, 64, "channel")
        vc, vs, vm = kvcore.ops.quantize_kv(v, 4, 32, "token")
        return (kvcore.ops.dequantize_kv(kc, ks, km, 2, 64, "channel") * 2,
                kvcore.ops.dequantize_kv(vc, vs, vm, 4, 32, "token"))

    k = torch.randn(2, 4, 128, 64, dtype=torch.bfloat16)
    v = torch.randn(2, 4, 128, 64, dtype=torch.bfloat16)
    ck, cv = roundtrip(k, v)
    ek = kvcore.dequantize_kv(*kvcore.quantize_kv(k, 2, 64, "channel"), 2, 64, "channel") * 2
    ev = kvcore.dequantize_kv(*kvcore.quantize_kv(v, 4, 32, "token"), 4, 32, "token")
    assert torch.equal(ck, ek) and torch.equal(cv, ev)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_cpu_cuda_parity(group_size, bits, axis, dtype):
    x = kv_like((3, 4, 256, 128), dtype, "cpu", axis)
    x[0, 0, :64, :] = 1.5  # constant groups
    x[1, 2, 7, 9] = float("nan")
    c_cpu, s_cpu, m_cpu = kvcore.quantize_kv(x, bits, group_size, axis)
    c_gpu, s_gpu, m_gpu = kvcore.quantize_kv(x.cuda(), bits, group_size, axis)
    assert torch.equal(c_cpu, c_gpu.cpu()), "codes differ between CPU and CUDA"
    assert bits_equal(s_cpu, s_gpu) and bits_equal(m_cpu, m_gpu)
    for out in (None, torch.float32, torch.float16, torch.bfloat16):
        d_cpu = kvcore.dequantize_kv(c_cpu, s_cpu, m_cpu, bits, group_size, axis, out)
        d_gpu = kvcore.dequantize_kv(c_gpu, s_gpu, m_gpu, bits, group_size, axis, out)
        assert bits_equal(d_cpu, d_gpu), "dequantized values differ between CPU and CUDA"


@pytest.mark.cuda
def test_cuda_large_shape_matches_reference():
    """A long sequence: many blocks per launch, grid tails, every axis/bits."""
    x = torch.randn(2, 8, 4096, 128, device="cuda", dtype=torch.bfloat16)
    for axis, bits in itertools.product(("token", "channel"), (2, 4, 8)):
        codes, scale, mn = kvcore.quantize_kv(x, bits, 64, axis)
        r_codes, r_scale, r_mn = ref.quantize_kv(x.cpu(), bits, 64, axis)
        assert torch.equal(codes.cpu(), r_codes)
        assert bits_equal(scale, r_scale)
