"""The ``kvcore`` command.

    kvcore eval [--model PATH] [--text FILE] [--methods a,b,c] [--out DIR] [--device auto|cpu|cuda] [--quick] ...
    kvcore bench [--only decode,quantize] [--quick]
    kvcore info

``eval`` runs every compression method on a real model and real text (by default the
embedded SmolLM2-135M-Instruct and Paul Graham essays) and reports perplexity, needle
retrieval, KV bytes, decode speed and peak memory as a table, JSON, CSV and a PNG plot
(see docs/EVAL.md). ``bench`` runs the kernel benchmarks of bench/ (needs a GPU).
"""
import argparse
import json
import shlex
import sys

import torch


def cmd_eval(args):
    from .evaluate import command

    return command.run(args, argv_text="kvcore eval " + " ".join(map(shlex.quote, args.argv_rest)))


def cmd_bench(args):
    from .evaluate import bench

    return bench.run(args)


def cmd_info(_args):
    import kvcore

    info = kvcore.build_info()
    info["torch_runtime"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    print(json.dumps(info, indent=1))
    return 0


def main(argv=None):
    from .evaluate import bench, command

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="kvcore", description="Compressed KV caches for LLM inference")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ev = sub.add_parser("eval", help="quality, memory and speed of every compression method on a real model",
                        description="Perplexity, needle retrieval, KV bytes, decode speed and peak memory of every "
                                    "compression method on a real model and text; writes a table, JSON, CSV and a PNG.")
    command.add_arguments(ev)
    ev.set_defaults(fn=cmd_eval)
    be = sub.add_parser("bench", help="run the kernel benchmarks of bench/ (needs an NVIDIA GPU)")
    bench.add_arguments(be)
    be.set_defaults(fn=cmd_bench)
    info = sub.add_parser("info", help="what this kvcore build contains")
    info.set_defaults(fn=cmd_info)
    args = ap.parse_args(argv)
    args.argv_rest = argv[1:]
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
