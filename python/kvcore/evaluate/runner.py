"""Runs every method on the same perplexity windows and needle trials, and gathers one
result row per method (plus what the run was)."""
import platform
import time

import torch

from . import needle, perplexity
from .memory import process_peak_rss_bytes
from .methods import BASELINE
from .prefill_replay import PrefillReplay
from .text import windows


def _progress(total, desc, enabled, leave=False):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=leave, disable=not enabled, unit="step", dynamic_ncols=True)


def method_row(method, ppl_res, outcomes, seconds) -> dict:
    """The flat result row of one method (the baseline-relative columns are filled later)."""
    return dict(
        method=method.name, family=method.family, provider=method.provider, quant_bits=method.quant_bits,
        ppl=ppl_res.ppl, nll=ppl_res.nll, ppl_tokens=ppl_res.tokens,
        kv_bytes=ppl_res.kv_bytes, peak_kv_bytes=ppl_res.peak_kv_bytes,
        needle_accuracy=needle.accuracy(outcomes), needle_trials=len(outcomes),
        needle_by_length={str(k): v for k, v in needle.accuracy(outcomes, key=lambda t: t.length).items()},
        needle_by_depth={str(k): v for k, v in needle.accuracy(outcomes, key=lambda t: t.depth).items()},
        decode_tokens_per_s=ppl_res.decode_tokens_per_s, prefill_s=ppl_res.prefill_s, decode_s=ppl_res.decode_s,
        peak_memory_bytes=ppl_res.peak_memory_bytes, seconds=seconds,
        needle_answers=[dict(length=o.trial.length, depth=o.trial.depth, city=o.trial.city, expected=o.trial.number,
                             answer=o.answer, correct=o.correct) for o in outcomes],
    )


def packed_bits(method_name: str, head_dim: int):
    """The preset's bits per packed key/value element, all-in, at this head_dim."""
    import kvcore

    cfg = kvcore.preset(method_name)
    return cfg.bits_per_element(head_dim) if getattr(cfg, "quantized", False) else None


def add_relative_columns(rows: list, dtype_bits: int) -> None:
    """ppl increase (%), compression ratio and bits per element, against the baseline row."""
    base = next(r for r in rows if r["method"] == BASELINE)
    for r in rows:
        r["ppl_increase_pct"] = 100.0 * (r["ppl"] / base["ppl"] - 1.0)
        r["compression_ratio"] = base["kv_bytes"] / r["kv_bytes"] if r["kv_bytes"] else float("inf")
        r["bits_per_element"] = dtype_bits * r["kv_bytes"] / base["kv_bytes"]


def run_eval(loaded, corpus, methods, settings, device, progress=True, log=print) -> dict:
    """Measure every method; returns the report dict (rows, run description)."""
    dtype = getattr(torch, settings.dtype)
    model, tok = loaded.model, loaded.tokenizer
    ppl_windows = windows(corpus, settings.ppl_batch, settings.context + settings.decode_tokens + 1)
    trials = needle.build_trials(tok, corpus, settings.needle_lengths, settings.needle_depths,
                                 settings.needles_per_depth, settings.seed)
    n_lengths = len(set(len(t.ids) for t in trials))
    steps = settings.decode_tokens + n_lengths * settings.needle_gen_tokens
    rows, t_run = [], time.perf_counter()
    outer = _progress(len(methods), "kvcore eval", progress, leave=True)
    replay = PrefillReplay()  # the model's prefill of each prompt runs once, for the first method
    for method in methods:
        outer.set_postfix_str(method.name)
        t0 = time.perf_counter()
        bar = _progress(steps, method.name, progress)
        ppl_res = perplexity.decode_perplexity(model, method, ppl_windows, settings.context, device, dtype, bar.update,
                                               replay=replay)
        outcomes = needle.run_trials(model, tok, method, trials, device, dtype, settings.needle_gen_tokens, bar.update,
                                     replay=replay)
        bar.close()
        row = method_row(method, ppl_res, outcomes, time.perf_counter() - t0)
        rows.append(row)
        outer.update(1)
        outer.write(f"  {method.name:28} ppl {row['ppl']:8.3f}  needle {100 * row['needle_accuracy']:5.1f}%  "
                    f"KV {row['kv_bytes'] / 2**20:8.2f} MiB  {row['decode_tokens_per_s']:7.1f} tok/s  "
                    f"({row['seconds']:.0f} s)")
    outer.close()
    replay.clear()
    add_relative_columns(rows, torch.finfo(dtype).bits)
    cfg = model.config.get_text_config()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    for r in rows:  # bits of one packed element all-in (codes, metadata, outliers, low rank)
        r["packed_bits_per_element"] = packed_bits(r["method"], head_dim) if r["quant_bits"] else None
    return dict(
        kvcore_version=_kvcore_version(), created=time.strftime("%Y-%m-%d %H:%M:%S %z"),
        device=_device_description(device), python=platform.python_version(), torch=torch.__version__,
        model=dict(name=loaded.name, source=loaded.source, dtype=settings.dtype, layers=cfg.num_hidden_layers,
                   kv_heads=cfg.num_key_value_heads,
                   head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
                   load_seconds=loaded.load_seconds),
        text=dict(name=corpus.name, tokens=int(corpus.ids.numel())),
        settings=settings.as_dict(),
        runtime_s=time.perf_counter() - t_run, process_peak_rss_bytes=process_peak_rss_bytes(),
        rows=rows,
    )


def _kvcore_version():
    import kvcore

    return kvcore.__version__


def _device_description(device) -> dict:
    device = torch.device(device)
    if device.type == "cuda":
        return dict(type="cuda", name=torch.cuda.get_device_name(device))
    return dict(type="cpu", name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
