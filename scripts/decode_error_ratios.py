"""Error of the CUDA decode_attention against the float64 reference, as a fraction of
the bound tests/test_decode_attention.py enforces (2x the error of a plain attention
in q's dtype), for every bits x dtype x head_dim x group. On a GPU machine:

    python scripts/decode_error_ratios.py      # last line: WORST ratio (must be <= 1)
"""
import sys, itertools, torch
sys.path.insert(0, "tests")
import test_decode_attention as T
from kvcore import reference as ref
torch.manual_seed(0)
worst = 0
for bits, dtype, D, G in itertools.product([2, 4], [torch.float16, torch.bfloat16], [64, 128, 256], [32, 64, 128]):
    if G > D:
        continue
    kw = T.make_inputs(Hq=16, Hkv=4, D=D, bits=bits, group=G, dtype=dtype, packed=[16 * G, 0, 5 * G, 64],
                       resid=[30, 12, 0, 63], sinks=[4, 0, 2, 1], t_cap=16 * G, r_cap=64, s_cap=4, device="cuda")
    out, lse = T.run(kw)
    ref_out, ref_lse = ref.decode_attention_f64(**kw)
    lo, llse = T.lowp_attention_errors(kw, ref_out, ref_lse)
    err = (out.cpu().double() - ref_out).abs().max().item()
    e = torch.isinf(ref_lse)
    lerr = (lse.cpu().double() - ref_lse).abs()[~e].max().item()
    r, rl = err / (2 * lo + 1e-5), lerr / (2 * llse + 1e-5)
    worst = max(worst, r, rl)
    print(f"bits={bits} {str(dtype)[6:]:8s} D={D:3d} G={G:3d}  out {err:.2e} / bound {2*lo+1e-5:.2e} = {r:.2f}   lse {lerr:.2e} / {2*llse+1e-5:.2e} = {rl:.2f}")
print(f"WORST ratio {worst:.2f} (must be <= 1)")
