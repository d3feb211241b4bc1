"""One decode step (B=8, Hq=32, Hkv=8, D=128, L=32K or $NCU_L) for Nsight Compute:
    python bench/decode_step_for_ncu.py BITS [KC VC KR VR]   (outliers and ranks, default none)"""
import os, sys, torch
sys.path.insert(0, "bench")
import bench_decode as BD
import kvcore
bits = int(sys.argv[1]) if len(sys.argv) > 1 else 2
k, v = BD.random_cache(8, 8, int(os.environ.get("NCU_L", 32768)), 128)
q = torch.randn(8, 32, 128, device="cuda", dtype=torch.bfloat16)
c = BD.packed_cache(k, v, bits)
if len(sys.argv) > 2:
    import bench_decode_corrections as BC
    c.update(BC.corrections(k, v, c, *[int(x) for x in sys.argv[2:6]]))
for _ in range(3):
    kvcore.ops.decode_attention(q, **c)
torch.cuda.synchronize()
