"""Bad input gets an error that names the argument and what was expected."""
import pytest
import torch

import kvcore
from conftest import DEVICES


@pytest.mark.parametrize("device", DEVICES)
def test_quantize_errors(device):
    x = torch.randn(2, 4, 64, 128, device=device, dtype=torch.float16)
    cases = [
        (dict(x=x.to(torch.int32)), r"x must be float16, bfloat16 or float32"),
        (dict(x=x.to(torch.float64)), r"x must be float16, bfloat16 or float32"),
        (dict(bits=3), r"bits must be 2, 4 or 8, got 3"),
        (dict(group_size=48), r"group_size must be 32, 64 or 128, got 48"),
        (dict(axis="head"), r"axis must be \"token\" or \"channel\", got \"head\""),
        (dict(x=x.transpose(-1, -2)), r"x must be contiguous"),
        (dict(x=x[..., :96].contiguous(), group_size=64), r"D=96\) must be a multiple of group_size=64"),
        (dict(x=x[:, :, :50].contiguous(), axis="channel"), r"T=50\) must be a multiple of group_size=64"),
        (dict(x=x[..., :120].contiguous(), axis="channel"), r"D=120\) must be a multiple of 16"),
        (dict(x=x[0, 0, 0]), r"x must have shape \[..., T, D\]"),
    ]
    for kw, msg in cases:
        args = dict(x=x, bits=4, group_size=64, axis="token")
        args.update(kw)
        with pytest.raises(RuntimeError, match=msg):
            kvcore.quantize_kv(args["x"], args["bits"], args["group_size"], args["axis"])


@pytest.mark.parametrize("device", DEVICES)
def test_dequantize_errors(device):
    x = torch.randn(2, 4, 64, 128, device=device, dtype=torch.bfloat16)
    codes, scale, mn = kvcore.quantize_kv(x, 4, 64, "token")
    good = dict(codes=codes, scale=scale, mn=mn, bits=4, group_size=64, axis="token", dtype=None)
    cases = [
        (dict(codes=codes.to(torch.int32)), r"codes must be uint8"),
        (dict(scale=scale.to(torch.int32)), r"scale must be float16, bfloat16 or float32"),
        (dict(mn=mn.float()), r"mn must have the dtype of scale"),
        (dict(scale=scale[:, :2].contiguous()), r"scale must have shape \[2, 4, 64, 2\]"),
        (dict(mn=mn[:, :2].contiguous()), r"mn must have the shape of scale"),
        (dict(bits=5), r"bits must be 2, 4 or 8, got 5"),
        (dict(bits=2), r"scale must have shape \[2, 4, 64, 4\]"),
        (dict(axis="channel"), r"scale must have shape \[2, 4, 1, 128\]"),
        (dict(dtype=torch.int8), r"dtype must be float16, bfloat16 or float32"),
        (dict(codes=codes.transpose(-1, -2)), r"codes must be contiguous"),
        (dict(scale=torch.empty(2, 4, 2, 64, device=device, dtype=torch.bfloat16).transpose(-1, -2)), r"scale must be contiguous"),
    ]
    for kw, msg in cases:
        args = dict(good)
        args.update(kw)
        with pytest.raises(RuntimeError, match=msg):
            kvcore.dequantize_kv(**args)


@pytest.mark.cuda
def test_mixed_devices_rejected():
    x = torch.randn(2, 4, 64, 128, device="cuda", dtype=torch.bfloat16)
    codes, scale, mn = kvcore.quantize_kv(x, 4, 64, "token")
    with pytest.raises(RuntimeError, match=r"scale is on cpu but codes is on cuda"):
        kvcore.dequantize_kv(codes, scale.cpu(), mn, 4, 64, "token")
    with pytest.raises(RuntimeError, match=r"mn is on cpu but codes is on cuda"):
        kvcore.dequantize_kv(codes, scale, mn.cpu(), 4, 64, "token")


@pytest.mark.cuda
def test_misaligned_view_rejected_or_correct():
    x = torch.randn(4 * 128 + 8, device="cuda", dtype=torch.float16)[8:].view(4, 128)  # offset 16 B: aligned
    codes, scale, mn = kvcore.quantize_kv(x, 4, 64, "token")
    assert torch.equal(codes.cpu(), kvcore.quantize_kv(x.cpu(), 4, 64, "token")[0])
    y = torch.randn(4 * 128 + 1, device="cuda", dtype=torch.float16)[1:].view(4, 128)  # offset 2 B
    with pytest.raises(RuntimeError, match=r"x must be 16-byte aligned"):
        kvcore.quantize_kv(y, 4, 64, "token")
