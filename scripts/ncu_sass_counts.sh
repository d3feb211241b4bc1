#!/usr/bin/env bash
# On a GPU machine, after a build (build/cmake/bench/kvcore_bench_decode): per-SASS-instruction
# execution counts of the packed decode split kernel, plain against one outlier a side, so
# that the outlier path's extra instructions can be placed (ncu, session 35: at B=1 4 bits
# the outlier kernels are latency-bound and their time follows their instruction count:
# D=256 16K +19% instructions, +18% time). Writes OUT_DIR/sass_<bits>_<o>_<shape>.csv
# (ncu's source page, SASS) and OUT_DIR/sass_counts.txt (scripts/sass_counts.py's summary).
#   bash scripts/ncu_sass_counts.sh OUT_DIR [BITS] ["B Hq Hkv D L" ...]
set -uo pipefail
OUT_DIR=${1:-${OUT:-$PWD/gpu_out}}
BITS=${2:-4}
shift 2 2>/dev/null || shift $#
SHAPES=("$@")
[ ${#SHAPES[@]} -eq 0 ] && SHAPES=("1 32 8 256 16448" "1 32 8 128 65600")
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
BENCH=${BENCH:-build/cmake/bench/kvcore_bench_decode}
LOG="$OUT_DIR/sass_counts.txt"
for shape in "${SHAPES[@]}"; do
  tag=$(echo "$shape" | tr ' ' '_')
  for o in "0 0" "1 1"; do
    rep="/tmp/sass_${BITS}_${o// /}_$tag"
    ncu --clock-control none -k regex:decode_packed -s 3 -c 1 --section SourceCounters --section InstructionStats \
      -f -o "$rep" "$BENCH" --bits "$BITS" --bf16 --outliers $o --shape $shape > /dev/null 2>&1 \
      || echo "ncu failed: bits $BITS outliers $o shape $shape" >> "$LOG"
    ncu -i "$rep.ncu-rep" --page source --csv --print-source sass > "$OUT_DIR/sass_${BITS}_${o// /}_$tag.csv" 2>&1 \
      || echo "ncu source page failed: $rep" >> "$LOG"
  done
  echo "== bits $BITS shape $shape: plain against one a side" >> "$LOG"
  python3 scripts/sass_counts.py "$OUT_DIR/sass_${BITS}_00_$tag.csv" "$OUT_DIR/sass_${BITS}_11_$tag.csv" >> "$LOG" 2>&1
done
