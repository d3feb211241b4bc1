#!/usr/bin/env bash
# On a GPU machine: session 34's proposed A/B, unrun there: tickets (dynamic tiles) for the
# 4-bit value-outlier kernels whose sums are in shared memory (CMake option
# KVCORE_EXP_SMEM_TICKETS: runs of whole key blocks, G / TT tiles). At B=1 D=128 4 bits 64K
# (0.836-0.847x of plain on the H200) their CTAs of equal work ended up to 5.6 us apart by
# launch rank on their SM (bench/RESULTS.md, session 34, the timeline).
# One experiment build (build/exp: plan knobs on, KVCORE_EXP_SMEM_TICKETS on; its _C in
# build/exp/pkg/kvcore beside a copy of the Python package). In it, planner "static"
# (KVCORE_DECODE_DYNAMIC_TILES=0) is production's plan, "new" takes tickets from 10 tiles a
# warp (H200) or 5 (H100), x256 from 5, x32 from 3 (KVCORE_EXP bits). Two device calls made
# back to back while the machine stays warm (build folders are ignored paths and stay):
#   bash scripts/s34_smem_tickets_ab.sh OUT_DIR --build-only   # build, tests, sanitizers (~5 min)
#   bash scripts/s34_smem_tickets_ab.sh OUT_DIR --no-build     # timings (~6 min)
#   bash scripts/s34_smem_tickets_ab.sh OUT_DIR --graded       # (after a build) rank-graded
#     equal chunks at B = 1-2 (KVCORE_PLAN_GRADED; ~3 min): the older CTAs of an SM get more
#   bash scripts/s34_smem_tickets_ab.sh OUT_DIR --ncu          # (after a build) ncu of the
#     4-bit D = 256 split kernel at B=1 16K, plain against one a side (why its stage loop
#     is ~20% longer with outliers, against 8% at D = 128; ~2 min)
# Writes OUT_DIR/s34_ab.txt.
set -uo pipefail
OUT_DIR=${1:-${OUT:-$PWD/gpu_out}}
MODE=${2:-}
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
LOG="$OUT_DIR/s34_ab.txt"
EXP=$PWD/build/exp
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/kv_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/kv_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name --format=csv,noheader; echo "mode: ${MODE:-all}"; } >> "$LOG"
BENCH="$EXP/bench/kvcore_bench_decode"
if [ "$MODE" != "--no-build" ] && [ "$MODE" != "--graded" ] && [ "$MODE" != "--ncu" ]; then
  mkdir -p "$EXP/pkg/kvcore"
  { cmake -S . -B "$EXP" -G Ninja -DKVCORE_CUDA=ON -DKVCORE_CUDA_ARCHS=90a -DCMAKE_BUILD_TYPE=Release \
      -DKVCORE_DECODE_PLAN_KNOBS=ON -DKVCORE_EXP_SMEM_TICKETS=ON -DKVCORE_OUTPUT_DIR="$EXP/pkg/kvcore" \
      -DPython_EXECUTABLE="$(command -v python3)" && ninja -C "$EXP" -j16; } > /tmp/kv_exp_build.log 2>&1 \
    || { tail -30 /tmp/kv_exp_build.log >> "$LOG"; exit 1; }
  (cd python/kvcore && find . -name "*.py" -exec cp --parents {} "$EXP/pkg/kvcore/" \;)
  echo "== build done $(date -u +%T)" >> "$LOG"
  export PYTHONPATH="$EXP/pkg:$PYTHONPATH"
  python3 -c "import kvcore; print(kvcore.__file__)" >> "$LOG" 2>&1
  echo "== CUDA tests of test_decode_corrections.py and test_decode_attention.py (experiment build)" >> "$LOG"
  python3 -m pytest -q tests/test_decode_corrections.py tests/test_decode_attention.py -m cuda -p no:cacheprovider 2>&1 \
    | tail -3 >> "$LOG"
  echo "== memcheck of the tests that force tickets, 4 bits" >> "$LOG"
  timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q tests/test_decode_corrections.py \
    -m cuda -p no:cacheprovider -k "dynamic or ticket" 2>&1 | tail -3 >> "$LOG"
  for t in memcheck racecheck; do
    echo "== $t, tickets forced, 4 bits one a side, D = 64 / 128 / 256" >> "$LOG"
    KVCORE_DECODE_DYNAMIC_TILES=always compute-sanitizer --tool $t --error-exitcode 9 "$BENCH" --bits 4 --bf16 \
      --outliers 1 1 --shape 2 8 2 128 4160 --shape 3 12 3 64 3000 --shape 2 8 2 256 2500 2>&1 | tail -4 >> "$LOG"
  done
  echo "== checksums: tickets forced against static (KVCORE_BENCH_CHECKSUM)" >> "$LOG"
  for d in always 0; do
    KVCORE_BENCH_CHECKSUM=1 KVCORE_DECODE_DYNAMIC_TILES=$d "$BENCH" --bits 4 --bf16 --outliers 1 1 \
      --shape 2 32 8 128 20544 --shape 1 32 8 64 16448 2>&1 | grep -i checksum >> "$LOG"
  done
  echo "== checks done $(date -u +%T)" >> "$LOG"
  [ "$MODE" = "--build-only" ] && exit 0
fi
if [ "$MODE" = "--ncu" ]; then
  for o in "0 0" "1 1"; do
    for shape in "1 32 8 256 16448" "1 32 8 128 65600"; do
      echo "== ncu, 4 bits, outliers $o, shape $shape" >> "$LOG"
      ncu --clock-control none -k regex:decode_packed -s 3 -c 1 --section SpeedOfLight --section Occupancy \
        --section SchedulerStats --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis \
        "$BENCH" --bits 4 --bf16 --outliers $o --shape $shape 2>&1 | grep -vE "^==PROF==|^\s+[0-9]+\s+32\s" >> "$LOG"
    done
  done
  date -u >> "$LOG"
  exit 0
fi
if [ "$MODE" = "--graded" ]; then
  python3 scripts/plan_rule_check.py "$BENCH" b1,short --bits 4 --no-old --graded "10 10" "20 20" 2>&1 \
    | grep -v "^B[0-9]* D[0-9]* b[24] (" >> "$LOG"
  date -u >> "$LOG"
  exit 0
fi
python3 scripts/plan_rule_check.py "$BENCH" b1,grid,dims --bits 4 --no-old --static --exp 256 32 2>&1 \
  | grep -v "^B[0-9]* D[0-9]* b[24] (" >> "$LOG"
python3 scripts/plan_rule_check.py "$BENCH" batch --bits 4 --no-old --static --exp 32 2>&1 \
  | grep -v "^B[0-9]* D[0-9]* b[24] (" >> "$LOG"
date -u >> "$LOG"
