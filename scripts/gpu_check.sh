#!/usr/bin/env bash
# On a GPU machine: build kvcore with CUDA, run the tests (the CUDA ones also under
# compute-sanitizer), run the benchmarks, and write everything to OUT_DIR (default:
# $OUT, else ./gpu_out). Wheels missing there (nvidia-cutlass) can be put in .whl/.
#   bash scripts/gpu_check.sh [OUT_DIR] [--quick|--no-bench]
# Writes run.log, tests.log, bench.txt and bench_json.tar, which holds quantize.json,
# quantize_native.json, decode_native.json, rotate.json, corrections.json,
# decode_corrections.json, eviction.json and
# decode_b8.json, decode_b1.json, decode_b32.json (--quick: decode.json, B=8 only).
# One tar because the device tool brings back at most 8 files.
set -uo pipefail
OUT_DIR=${1:-${OUT:-$PWD/gpu_out}}
MODE=${2:-}
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
status=0
RUN="$OUT_DIR/run.log"; TESTS="$OUT_DIR/tests.log"; BENCH="$OUT_DIR/bench.txt"
step() { echo; echo "=== $* ===" | tee -a "$RUN"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kv_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/kv_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$RUN"

step "build (CUDA ON)"
export KVCORE_CUDA=ON MAX_JOBS=${MAX_JOBS:-16}
python3 -m pip install --no-build-isolation --no-deps --no-index -e . > /tmp/kv_build.log 2>&1 \
  || { tail -60 /tmp/kv_build.log | tee -a "$RUN"; exit 1; }
python3 -c "import kvcore; print(kvcore.build_info())" | tee -a "$RUN"

step "tests (CPU and CUDA)"
python3 -m pytest -q tests -p no:cacheprovider > "$TESTS" 2>&1; rc=$?
tail -3 "$TESTS" | tee -a "$RUN"; [ $rc = 0 ] || status=1

step "CUDA tests under compute-sanitizer (memcheck), benchmark binaries under racecheck"
{ echo "=== memcheck: pytest -m cuda"; compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 -m pytest -q tests -m cuda -p no:cacheprovider 2>&1 | tail -8; } >> "$TESTS"; rc=${PIPESTATUS[0]}
[ $rc = 0 ] || { echo "memcheck rc=$rc" | tee -a "$RUN"; status=1; }
{ echo "=== racecheck: kvcore_bench_quantize"
  compute-sanitizer --tool racecheck --error-exitcode 9 build/cmake/bench/kvcore_bench_quantize --shape 1 2 256 128 2>&1 | tail -3
  echo "=== racecheck: kvcore_bench_decode"
  compute-sanitizer --tool racecheck --error-exitcode 9 build/cmake/bench/kvcore_bench_decode --shape 2 8 2 128 1024 2>&1 | tail -3
  compute-sanitizer --tool racecheck --error-exitcode 9 build/cmake/bench/kvcore_bench_decode --shape 2 12 3 256 1024 2>&1 | tail -3
  echo "=== racecheck: decode with outliers (H4 outlier kernel: value-sum rebase, integer sums in shared memory)"
  compute-sanitizer --tool racecheck --error-exitcode 9 python3 -m pytest -q tests/test_decode_corrections.py -m cuda \
    -p no:cacheprovider -k "rebase or few_channels or ((8-2-b2-d128-g64 or 8-2-b4-d128-g64 or 8-2-b2-d128-g32) and (counts2 or counts4))" 2>&1 | tail -3
  echo "=== racecheck: decode with outliers by ticket (dynamic tiles forced)"
  KVCORE_DECODE_DYNAMIC_TILES=always compute-sanitizer --tool racecheck --error-exitcode 9 build/cmake/bench/kvcore_bench_decode \
    --bits 2 --bf16 --outliers 1 1 --shape 2 8 2 128 4160 --shape 3 12 3 64 6000 2>&1 | tail -3
  echo "=== memcheck: kvcore_bench_decode"
  compute-sanitizer --tool memcheck --error-exitcode 9 build/cmake/bench/kvcore_bench_decode --shape 3 9 3 64 3000 2>&1 | tail -3
} >> "$TESTS"
grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "$TESTS" | tail -12 | tee -a "$RUN"
grep -qE "ERROR SUMMARY: [1-9]|RACECHECK SUMMARY: [1-9]| [1-9][0-9]* hazard| [1-9][0-9]* error" "$TESTS" && status=1

if [ "$MODE" != "--no-bench" ]; then
  step "benchmarks"
  : > "$BENCH"
  J="$OUT_DIR/json"; mkdir -p "$J"
  build/cmake/bench/kvcore_bench_quantize --json "$J/quantize_native.json" >> "$BENCH" 2>&1 || status=1
  build/cmake/bench/kvcore_bench_decode --json "$J/decode_native.json" >> "$BENCH" 2>&1 || status=1
  if [ "$MODE" = "--quick" ]; then
    python3 bench/bench_decode.py --quick --json "$J/decode.json" >> "$BENCH" 2>&1 || status=1
  else
    python3 bench/bench_quantize.py --json "$J/quantize.json" >> "$BENCH" 2>&1 || status=1
    python3 bench/bench_rotate.py --json "$J/rotate.json" >> "$BENCH" 2>&1 || status=1
    python3 bench/bench_corrections.py --json "$J/corrections.json" >> "$BENCH" 2>&1 || status=1
    python3 bench/bench_decode_corrections.py --json "$J/decode_corrections.json" >> "$BENCH" 2>&1 || status=1
    python3 bench/bench_eviction.py --json "$J/eviction.json" >> "$BENCH" 2>&1 || status=1
    # issue 6 end to end (needs transformers >= 5)
    if python3 -c "import transformers" 2>/dev/null; then
      python3 bench/bench_kvcache.py --json "$J/kvcache.json" >> "$BENCH" 2>&1 || status=1
    else
      echo "bench_kvcache.py skipped: transformers not installed" >> "$BENCH"
    fi
    # one process and file per batch size, the bar's B=8 first: a run cut short by a
    # time limit keeps what it finished
    for b in 8 1 32; do
      python3 bench/bench_decode.py --batches $b --json "$J/decode_b$b.json" >> "$BENCH" 2>&1 || status=1
    done
  fi
  tail -40 "$BENCH"
  tar cf "$OUT_DIR/bench_json.tar" -C "$OUT_DIR" json && rm -r "$J"
fi
echo "gpu_check status: $status" | tee -a "$RUN"
exit $status
