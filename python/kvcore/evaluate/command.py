"""``kvcore eval``: arguments, then load, run, report. Input errors exit with status 2 and
one line on stderr."""
import argparse
import sys
import time
from pathlib import Path

from .errors import EvalError
from .settings import DEFAULT, QUICK


def _int_list(s: str) -> tuple:
    try:
        vals = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not vals or min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return vals


def _float_list(s: str) -> tuple:
    try:
        vals = tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None
    if not vals or not all(0.0 <= v <= 1.0 for v in vals):
        raise argparse.ArgumentTypeError(f"depths are fractions in [0, 1], got {s!r}")
    return vals


def _positive(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s}")
    return v


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default=None, metavar="PATH",
                    help="a Hugging Face model folder or a .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--text", default=None, metavar="FILE",
                    help="a UTF-8 text file to score and hide needles in (default: the embedded Paul Graham essays)")
    ap.add_argument("--methods", default=None, metavar="A,B,C",
                    help="methods to run (default: all; the uncompressed baseline 'none' always runs)")
    ap.add_argument("--list-methods", action="store_true", help="print the available methods and exit")
    ap.add_argument("--out", default="kvcore_eval", metavar="DIR",
                    help="folder for results.json, results.csv and quality_vs_compression.png (default: ./kvcore_eval)")
    ap.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                    help="model and uncompressed cache dtype (default bfloat16)")
    ap.add_argument("--quick", action="store_true",
                    help=f"small sizes for a smoke test (context {QUICK.context}, {QUICK.decode_tokens} decoded tokens, "
                         f"needles at {','.join(map(str, QUICK.needle_lengths))} tokens)")
    ap.add_argument("--context", type=_positive, default=None,
                    help=f"perplexity: tokens prefilled before decoding (default {DEFAULT.context})")
    ap.add_argument("--decode-tokens", type=_positive, default=None,
                    help=f"perplexity: tokens decoded and scored per window (default {DEFAULT.decode_tokens})")
    ap.add_argument("--ppl-batch", type=_positive, default=None,
                    help=f"perplexity: text windows decoded together (default {DEFAULT.ppl_batch})")
    ap.add_argument("--needle-lengths", type=_int_list, default=None, metavar="N,N",
                    help=f"needle haystack lengths in tokens (default {','.join(map(str, DEFAULT.needle_lengths))})")
    ap.add_argument("--needle-depths", type=_float_list, default=None, metavar="F,F",
                    help=f"needle depths (default {','.join(f'{d:g}' for d in DEFAULT.needle_depths)})")
    ap.add_argument("--needles-per-depth", type=_positive, default=None,
                    help=f"needle trials per length and depth (default {DEFAULT.needles_per_depth})")
    ap.add_argument("--seed", type=int, default=None, help="needle cities, numbers and haystack offsets")
    ap.add_argument("--threads", type=_positive, default=None,
                    help="CPU threads for torch (default on CPU: half the cores, at least 1; see docs/EVAL.md)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--strict", action="store_true", help="exit with status 1 when a quality bar fails")


def settings_from_args(args):
    base = QUICK if args.quick else DEFAULT
    return base.replace(context=args.context, decode_tokens=args.decode_tokens, ppl_batch=args.ppl_batch,
                        needle_lengths=args.needle_lengths, needle_depths=args.needle_depths,
                        needles_per_depth=args.needles_per_depth, seed=args.seed, dtype=args.dtype)


def default_cpu_threads() -> int:
    """Half the cores, at least 1. A decode step is hundreds of small ops; with every core
    busy, one more process (a build, a test) stalls each op's OpenMP barrier: on a 2-core
    machine with one other busy process, 2 threads decoded 4-10x slower than 1."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // 2)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args, argv_text: str = None) -> int:
    """Run ``kvcore eval`` for parsed ``args``; returns the exit status."""
    import torch

    threads = torch.get_num_threads()
    try:
        return _run(args, argv_text)
    except EvalError as e:
        print(f"kvcore eval: error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)   # for callers of main() in the same process


def _run(args, argv_text) -> int:
    import torch

    from . import bars, methods, model, plot, report, runner, text

    if args.list_methods:
        for m in methods.available_methods().values():
            print(f"{m.name:28} {m.family:12} {m.provider}")
        return 0
    chosen = methods.resolve_methods(args.methods.split(",") if args.methods else None)
    settings = settings_from_args(args)
    device = model.resolve_device(args.device)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or default_cpu_threads())
    text.read_text(args.text)      # a bad --text fails before the model loads
    t0 = time.perf_counter()
    loaded = model.load_model(args.model, device, getattr(torch, settings.dtype), log=log)
    corpus = text.load_corpus(loaded.tokenizer, args.text)
    log(f"kvcore eval: {loaded.name} loaded in {loaded.load_seconds:.1f} s on {device}; {corpus.name}: "
        f"{corpus.ids.numel()} tokens; {len(chosen)} method{'s' if len(chosen) > 1 else ''}")
    result = runner.run_eval(loaded, corpus, chosen, settings, device, progress=not args.no_progress, log=log)
    result["command"] = argv_text
    result["wall_s"] = time.perf_counter() - t0
    result["bars"] = [b.__dict__ for b in bars.check_bars(result["rows"])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [report.write_json(result, out / "results.json"), report.write_csv(result, out / "results.csv"),
             plot.plot_quality_vs_compression(result, out / "quality_vs_compression.png")]
    print(report.format_table(result))
    print("wrote " + ", ".join(map(str, paths)))
    failed = [b["key"] for b in result["bars"] if b["status"] == "fail"]
    return 1 if args.strict and failed else 0
