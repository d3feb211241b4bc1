"""Constants and shape rules shared by the fake implementations, the reference
and the wrappers (the C++ side enforces the same rules in csrc/ops/*_args.cpp)."""
import torch

AXES = ("token", "channel")
BITS = (2, 4, 8)
GROUP_SIZES = (32, 64, 128)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def quantized_shapes(shape, bits: int, group_size: int, axis: str):
    """(codes_shape, meta_shape) for an input of `shape` [..., T, D]."""
    *lead, T, D = shape
    codes = (*lead, T, D * bits // 8)
    meta = (*lead, T, D // group_size) if axis == "token" else (*lead, T // group_size, D)
    return codes, meta
