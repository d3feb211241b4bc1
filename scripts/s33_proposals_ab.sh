#!/usr/bin/env bash
# On a GPU machine: session 33's two proposed A/Bs for issue 4's lowest points, unrun there.
#  1. 4-bit head_dim-64 value outliers (0.76-0.79x of plain from 16K on the H200) with the
#     integer shared-memory value sums (CMake option KVCORE_EXP_D64_SMEM) instead of L2
#     reductions;
#  2. ticket plans of half / three quarters of a wave (KVCORE_EXP 8192 / 16384), for B=8
#     D=128 2 bits 32K (0.846x) and D=64 2 bits 64K-128K (0.81-0.83x);
#  3. the value-outlier kernels' short-chunk floor up to 512 tokens a warp instead of 256
#     (KVCORE_EXP 32768), for B=1 D=128 4 bits 64K (0.843x).
# Builds the production extension (build/cmake) and an experiment build (build/exp: knobs
# on, KVCORE_EXP_D64_SMEM on; its _C in build/exp/pkg/kvcore beside a copy of the Python
# package), then times plan_rule_check group dims at 4 bits on each build's native bench,
# the ticket plans (groups grid and dims at 2 bits, where the macro changes nothing) on the
# experiment build, runs the CUDA tests of tests/test_decode_corrections.py on the
# experiment build and memcheck / racecheck of its bench at D = 64, 4 bits, one a side.
# Both builds take ~6 min in parallel and the rest ~4: two device calls, made back to back
# while the machine stays warm (the build folders are ignored paths and stay):
#   bash scripts/s33_proposals_ab.sh OUT_DIR --build-only
#   bash scripts/s33_proposals_ab.sh OUT_DIR --no-build
# Writes OUT_DIR/s33_ab.txt.
set -uo pipefail
OUT_DIR=${1:-${OUT:-$PWD/gpu_out}}
MODE=${2:-}
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
LOG="$OUT_DIR/s33_ab.txt"
EXP=$PWD/build/exp
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/kv_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/kv_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name --format=csv,noheader; echo "mode: ${MODE:-all}"; } >> "$LOG"
if [ "$MODE" != "--no-build" ]; then
  KVCORE_CUDA=ON MAX_JOBS=8 python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . \
    > /tmp/kv_build.log 2>&1 &
  prod=$!
  mkdir -p "$EXP/pkg/kvcore"
  { cmake -S . -B "$EXP" -G Ninja -DKVCORE_CUDA=ON -DKVCORE_CUDA_ARCHS=90a -DCMAKE_BUILD_TYPE=Release \
      -DKVCORE_DECODE_PLAN_KNOBS=ON -DKVCORE_EXP_D64_SMEM=ON -DKVCORE_OUTPUT_DIR="$EXP/pkg/kvcore" \
      -DPython_EXECUTABLE="$(command -v python3)" && ninja -C "$EXP" -j8; } > /tmp/kv_exp_build.log 2>&1 \
    || { tail -30 /tmp/kv_exp_build.log >> "$LOG"; exit 1; }
  wait $prod || { tail -30 /tmp/kv_build.log >> "$LOG"; exit 1; }
  (cd python/kvcore && find . -name "*.py" -exec cp --parents {} "$EXP/pkg/kvcore/" \;)
  echo "== builds done $(date -u +%T)" >> "$LOG"
  [ "$MODE" = "--build-only" ] && exit 0
fi
for b in build/cmake "$EXP"; do
  echo "== D = 64 4 bits, bench of $b" >> "$LOG"
  python3 scripts/plan_rule_check.py "$b/bench/kvcore_bench_decode" dims --bits 4 --no-old 2>&1 \
    | grep -v "^B[0-9]* D[0-9]* b[24] (" >> "$LOG"
done
echo "== ticket plans (experiment build's knobs)" >> "$LOG"
python3 scripts/plan_rule_check.py "$EXP/bench/kvcore_bench_decode" grid,dims --bits 2 --no-old --exp 8192 16384 2>&1 \
  | grep -v "^B[0-9]* D[0-9]* b[24] (" >> "$LOG"
echo "== value-outlier chunks up to 512 tokens a warp (KVCORE_EXP 32768; B=1 4 bits 64K 0.843x)" >> "$LOG"
python3 scripts/plan_rule_check.py "$EXP/bench/kvcore_bench_decode" batch --bits 2 4 --no-old --exp 32768 2>&1 \
  | grep -v "^B[0-9]* D[0-9]* b[24] (" >> "$LOG"
echo "== experiment build: CUDA tests of test_decode_corrections.py" >> "$LOG"
PYTHONPATH="$EXP/pkg:$PYTHONPATH" python3 -c "import kvcore; print(kvcore.__file__)" >> "$LOG" 2>&1
PYTHONPATH="$EXP/pkg:$PYTHONPATH" python3 -m pytest -q tests/test_decode_corrections.py -m cuda -p no:cacheprovider 2>&1 \
  | tail -3 >> "$LOG"
for t in memcheck racecheck; do
  echo "== $t" >> "$LOG"
  compute-sanitizer --tool $t --error-exitcode 9 "$EXP/bench/kvcore_bench_decode" --bits 4 --bf16 --outliers 1 1 \
    --shape 2 8 2 64 3000 --shape 3 9 3 64 2500 2>&1 | tail -3 >> "$LOG"
done
date -u >> "$LOG"
