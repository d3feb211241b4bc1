#!/usr/bin/env bash
# On a GPU machine: issue 4's speed bar in one call. Builds kvcore with CUDA (unless
# --no-build), then times one outlier a side (and values only) against the plain kernel at
# every shape group of scripts/plan_rule_check.py, with and without the dynamic tiles, and
# the Python bench's CUDA-graph and read-flush timings. Writes OUT_DIR/bar.txt.
#   bash scripts/outlier_bar_check.sh [OUT_DIR] [--no-build]
set -uo pipefail
OUT_DIR=${1:-${OUT:-$PWD/gpu_out}}
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
LOG="$OUT_DIR/bar.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/kv_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/kv_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__)"; } > "$LOG"
if [ "${2:-}" != "--no-build" ]; then
  KVCORE_CUDA=ON MAX_JOBS=${MAX_JOBS:-16} python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . \
    > /tmp/kv_build.log 2>&1 || { tail -40 /tmp/kv_build.log >> "$LOG"; exit 1; }
fi
BENCH=build/cmake/bench/kvcore_bench_decode
# (plan lines dropped: the tables name the lengths; --static: KVCORE_DECODE_DYNAMIC_TILES=0)
python3 scripts/plan_rule_check.py $BENCH grid,batch,dims,d256 --bits 2 4 --no-old --static 2>&1 \
  | grep -v "^B[0-9]* D[0-9]* b[24] (" >> "$LOG"
# B = 1-32 at D = 64 and short steps at B = 1-2 (session 34), the built-in plan only
python3 scripts/plan_rule_check.py $BENCH d64,short --bits 2 4 --no-old 2>&1 \
  | grep -v "^B[0-9]* D[0-9]* b[24] (" >> "$LOG"
python3 bench/bench_decode_corrections.py --lengths 8192 16384 32768 131072 --variants plain "outliers 1" \
  "value outliers 1" --no-mass >> "$LOG" 2>&1
date -u >> "$LOG"
