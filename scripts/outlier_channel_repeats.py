"""How often real values repeat their outlier channel within a 16-token m-tile (the unit
in which the CUDA decode's H4 outlier kernel adds value outliers: repeats there cost the
4-bit kernel extra rounds of shared-memory adds and the 2-bit kernel serialised L2
reductions). bench/bench_decode_corrections.py's "skewed channels" variant is calibrated
to what this prints.

    python scripts/outlier_channel_repeats.py [--tokens 2048] [--outliers 1]

Captures SmolLM2-135M-Instruct's values over the Paul Graham essays (as
scripts/kv_error_study.py, whose loaders it uses) and, for every layer and KV head, takes
extract_outliers(v, c, 64, "token") with and without the Hadamard rotation; prints the
distribution over m-tiles of the number of rows on the m-tile's most repeated channel.
"""
import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import kvcore  # noqa: E402
import kv_error_study as study  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--outliers", type=int, default=1, help="outliers a token (c)")
    args = ap.parse_args()
    tok, model = study.load_model()
    ids = tok(study.load_text(), return_tensors="pt").input_ids[:, : args.tokens // 16 * 16]
    layers = study.capture_qkv(model, ids)
    for rotate in (False, True):
        hist, tiles = collections.Counter(), 0
        for _, _, v in layers:
            y = v.to(torch.bfloat16).contiguous()
            if rotate:
                y = kvcore.hadamard_rotate(y, study.SEED)
            idx, _, _ = kvcore.extract_outliers(y, args.outliers, study.GROUP, "token")
            tiles_idx = idx.transpose(-1, -2).reshape(-1, idx.shape[2] // 16, 16)  # [B*H*c, T/16, 16]
            for row in tiles_idx.reshape(-1, 16).tolist():
                hist[max(collections.Counter(row).values())] += 1
                tiles += 1
        mean = sum(k * n for k, n in hist.items()) / tiles
        shares = ", ".join(f"{k}: {100 * n / tiles:.1f}%" for k, n in sorted(hist.items()))
        print(f"{'rotated' if rotate else 'plain'}: {tiles} m-tiles, rows on the top channel: mean {mean:.2f} ({shares})")


if __name__ == "__main__":
    main()
