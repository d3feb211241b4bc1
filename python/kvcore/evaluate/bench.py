"""``kvcore bench``: runs the kernel benchmarks of the repository's ``bench/`` folder
(``bench/bench_*.py``), each printing its own table (time, GB/s, % of the copy-bandwidth
roofline, the torch baseline side by side).

They time CUDA kernels with CUDA events, so they need an NVIDIA GPU and a CUDA build of
kvcore. Without a GPU the command prints why and exits with status 2 (nothing was
measured; measured numbers are in bench/RESULTS.md). The scripts live in the source
tree, not in the installed package: the folder is found next to the kvcore package of a
checkout or editable install, or given with ``--bench-dir``.
"""
import subprocess
import sys
from pathlib import Path

NO_GPU_STATUS = 2


def default_bench_dir():
    """``<repo>/bench`` when kvcore runs from a source checkout (python/kvcore/..), else None."""
    here = Path(__file__).resolve().parents[3] / "bench"
    return here if (here / "timing.py").is_file() else None


def add_arguments(ap) -> None:
    ap.add_argument("--only", default=None, metavar="A,B",
                    help="benchmarks to run, by name without bench_ (e.g. decode,quantize); default: all")
    ap.add_argument("--quick", action="store_true", help="pass --quick to the benchmarks that have it")
    ap.add_argument("--bench-dir", default=None, help="the bench/ folder of a kvcore checkout")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")


def _scripts(folder: Path) -> dict:
    return {p.stem[len("bench_"):]: p for p in sorted(folder.glob("bench_*.py"))}


def run(args) -> int:
    import torch

    folder = Path(args.bench_dir) if args.bench_dir else default_bench_dir()
    if folder is None or not folder.is_dir():
        print("kvcore bench: error: the bench/ folder was not found (it is part of the source checkout, not of the "
              "installed package); pass --bench-dir PATH/TO/kvcore/bench", file=sys.stderr)
        return 2
    scripts = _scripts(folder)
    names = list(scripts) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in scripts]
    if unknown:
        print(f"kvcore bench: error: unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(scripts)}",
              file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(f"{n:20} {scripts[n]}" for n in names))
        return 0
    if not torch.cuda.is_available():
        print("kvcore bench: the kernel benchmarks time CUDA kernels and need an NVIDIA GPU with a CUDA build of "
              "kvcore; no GPU is visible here, so nothing was measured (measured numbers: bench/RESULTS.md).",
              file=sys.stderr)
        return NO_GPU_STATUS
    failed = []
    for n in names:
        cmd = [sys.executable, str(scripts[n])]
        if args.quick and "--quick" in scripts[n].read_text():
            cmd.append("--quick")
        print(f"== {n}: {' '.join(cmd)}", flush=True)
        if subprocess.run(cmd, cwd=folder.parent).returncode != 0:
            failed.append(n)
    if failed:
        print(f"kvcore bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
