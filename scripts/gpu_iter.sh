#!/usr/bin/env bash
# Temporary (not committed): gpu_check without its long benchmarks, then the issue-4 benchmarks.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/gpu_check.sh /tmp/gc --no-bench; cp /tmp/gc/run.log /tmp/gc/tests.log $OUT/
export PYTHONUNBUFFERED=1
python3 bench/bench_corrections.py --json $OUT/corrections.json 2>&1 | tee $OUT/bench.txt
python3 bench/bench_rotate.py --json $OUT/rotate.json 2>&1 | tee -a $OUT/bench.txt
python3 bench/bench_decode_corrections.py --lengths 32768 --json $OUT/decode_corrections.json 2>&1 | tee -a $OUT/bench.txt
python3 bench/bench_decode.py --quick --json $OUT/decode_quick.json 2>&1 | tail -4 | tee -a $OUT/bench.txt
