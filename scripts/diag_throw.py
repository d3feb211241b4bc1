# Diagnostic: raise each kind of input error once, to find native crashes in error paths.
import sys
import torch
import kvcore

x = torch.randn(2, 4, 64, 128, dtype=torch.float16)
cases = {
    "dtype": lambda: kvcore.quantize_kv(x.to(torch.int32), 4, 64, "token"),
    "bits": lambda: kvcore.quantize_kv(x, 3, 64, "token"),
    "axis": lambda: kvcore.quantize_kv(x, 4, 64, "head"),
    "deq_bits": lambda: kvcore.dequantize_kv(*kvcore.quantize_kv(x, 4, 64, "token"), 5, 64, "token"),
}
name = sys.argv[1]
try:
    cases[name]()
    print(name, "no error")
except RuntimeError as e:
    print(name, "OK:", str(e).splitlines()[0][:100])
