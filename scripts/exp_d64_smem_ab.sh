#!/usr/bin/env bash
# On a GPU machine, one call (~8 min): session 33's proposed A/B for issue 4's lowest point,
# 4-bit head_dim-64 value outliers (0.76-0.79x of plain from 16K on the H200). Builds the
# production extension (build/cmake) and, beside it, an experiment build with
# -DKVCORE_EXP_D64_SMEM=ON (the integer shared-memory value sums at D = 64 too; its _C goes
# to /tmp/kv_exp/pkg/kvcore with a copy of the Python package), then:
#   * plan_rule_check group dims at 4 bits with each build's kvcore_bench_decode;
#   * the CUDA tests of tests/test_decode_corrections.py on the experiment build;
#   * memcheck and racecheck of the experiment bench at D = 64, 4 bits, one a side.
# Writes OUT_DIR/d64_smem_ab.txt.   bash scripts/exp_d64_smem_ab.sh [OUT_DIR]
set -uo pipefail
OUT_DIR=${1:-${OUT:-$PWD/gpu_out}}
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
LOG="$OUT_DIR/d64_smem_ab.txt"
EXP=/tmp/kv_exp
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/kv_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/kv_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name --format=csv,noheader; } > "$LOG"
KVCORE_CUDA=ON MAX_JOBS=8 python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . \
  > /tmp/kv_build.log 2>&1 &
prod=$!
mkdir -p $EXP/pkg/kvcore
{ cmake -S . -B $EXP/build -G Ninja -DKVCORE_CUDA=ON -DKVCORE_CUDA_ARCHS=90a -DCMAKE_BUILD_TYPE=Release \
    -DKVCORE_EXP_D64_SMEM=ON -DKVCORE_OUTPUT_DIR=$EXP/pkg/kvcore -DPython_EXECUTABLE="$(command -v python3)" \
  && ninja -C $EXP/build -j8; } > /tmp/kv_exp_build.log 2>&1 || { tail -30 /tmp/kv_exp_build.log >> "$LOG"; exit 1; }
wait $prod || { tail -30 /tmp/kv_build.log >> "$LOG"; exit 1; }
(cd python/kvcore && find . -name "*.py" -exec cp --parents {} $EXP/pkg/kvcore/ \;)
echo "== builds done $(date -u +%T)" >> "$LOG"
for b in build/cmake $EXP/build; do
  echo "== bench $b" >> "$LOG"
  python3 scripts/plan_rule_check.py $b/bench/kvcore_bench_decode dims --bits 4 --no-old 2>&1 \
    | grep -v "^B[0-9]* D[0-9]* b[24] (" >> "$LOG"
done
echo "== experiment build: CUDA tests of test_decode_corrections.py" >> "$LOG"
PYTHONPATH=$EXP/pkg:$PYTHONPATH python3 -c "import kvcore, sys; print(kvcore.__file__)" >> "$LOG" 2>&1
PYTHONPATH=$EXP/pkg:$PYTHONPATH python3 -m pytest -q tests/test_decode_corrections.py -m cuda -p no:cacheprovider 2>&1 \
  | tail -3 >> "$LOG"
for t in memcheck racecheck; do
  echo "== $t" >> "$LOG"
  compute-sanitizer --tool $t --error-exitcode 9 $EXP/build/bench/kvcore_bench_decode --bits 4 --bf16 --outliers 1 1 \
    --shape 2 8 2 64 3000 --shape 3 9 3 64 2500 2>&1 | tail -3 >> "$LOG"
done
date -u >> "$LOG"
