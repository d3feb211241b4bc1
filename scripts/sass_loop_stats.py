#!/usr/bin/env python3
"""Static SASS statistics of one kernel, without a GPU: total instructions and the largest
loops (backward branches) with their opcode mix, to compare two builds of a kernel.

    cuobjdump -sass OBJ.o > OBJ.sass     # cuobjdump and nvdisasm: pip wheels
                                          # nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm
    python3 scripts/sass_loop_stats.py KERNEL_NAME_PART A.sass [B.sass ...]

KERNEL_NAME_PART is a substring of the mangled name, e.g.
"decode_packed_kernelILi2ELi2ELi128ELi64ELi64ELb1ELb1ELi1ELi1E" (bf16, 2 bits, D = 128,
G = 64, the H4 outlier kernel with one outlier a side).
"""
import collections
import re
import sys


def function_instructions(path, key):
    """(address, text) of every instruction of the first function whose name contains key."""
    lines = open(path).read().split("\n")
    start = next(i for i, line in enumerate(lines) if "Function :" in line and key in line)
    end = next((i for i in range(start + 1, len(lines)) if "Function :" in lines[i]), len(lines))
    out = []
    for line in lines[start:end]:
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            out.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def backward_branches(ins):
    """(bytes spanned, target, branch address) of each branch to a lower address, largest first."""
    loops = []
    for addr, text in ins:
        m = re.search(r"\bBRA\b.*0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            loops.append((addr - int(m.group(1), 16), int(m.group(1), 16), addr))
    return sorted(loops, reverse=True)


def opcode(text):
    parts = text.split()
    return parts[1] if parts[0].startswith("@") else parts[0]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    key = sys.argv[1]
    for path in sys.argv[2:]:
        ins = function_instructions(path, key)
        loops = backward_branches(ins)
        print(f"{path}: {len(ins)} instructions; largest loops (instructions): "
              + ", ".join(f"{n // 16} at {hex(lo)}" for n, lo, _ in loops[:3]))
        if loops:
            _, lo, hi = loops[0]
            body = [t for a, t in ins if lo <= a <= hi]
            mix = collections.Counter(opcode(t) for t in body)
            print(f"  largest: {len(body)} instructions; " + ", ".join(f"{k} {v}" for k, v in mix.most_common(24)))


if __name__ == "__main__":
    main()
