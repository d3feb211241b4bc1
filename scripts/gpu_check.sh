#!/usr/bin/env bash
# On a GPU machine: build kvcore with CUDA, run the tests (also the CUDA tests
# under compute-sanitizer), run the benchmarks, and write everything to $1
# (default: $OUT, else ./gpu_out). Wheels missing there (nvidia-cutlass) can be
# placed in .whl/ and are installed first.
#   bash scripts/gpu_check.sh [OUT_DIR] [--quick]
set -uo pipefail
OUT_DIR=${1:-${OUT:-$PWD/gpu_out}}
QUICK=${2:-}
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
status=0
step() { echo; echo "=== $* ==="; }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kv_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/kv_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT_DIR/gpu.txt"

step "build (CUDA ON)"
export KVCORE_CUDA=ON MAX_JOBS=${MAX_JOBS:-16}
python3 -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT_DIR/build.log" 2>&1 \
  || { tail -50 "$OUT_DIR/build.log"; exit 1; }
python3 -c "import kvcore; print(kvcore.build_info())" | tee -a "$OUT_DIR/gpu.txt"

step "tests (CPU and CUDA)"
python3 -m pytest -q -x tests -p no:cacheprovider 2>&1 | tee "$OUT_DIR/pytest.log" | tail -5
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "CUDA tests under compute-sanitizer (memcheck)"
compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -x tests -m cuda -p no:cacheprovider \
  > "$OUT_DIR/sanitizer.log" 2>&1; rc=$?
tail -3 "$OUT_DIR/sanitizer.log"; [ $rc = 0 ] || { echo "sanitizer rc=$rc"; status=1; }
for b in build/cmake/bench/kvcore_bench_*; do
  compute-sanitizer --tool racecheck --error-exitcode 9 "$b" --shape 1 2 256 128 >> "$OUT_DIR/sanitizer.log" 2>&1 \
    || { echo "racecheck failed: $b"; status=1; }
done
grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT_DIR/sanitizer.log" | sort | uniq -c

if [ "$QUICK" != "--quick" ]; then
  step "benchmarks"
  build/cmake/bench/kvcore_bench_quantize --json "$OUT_DIR/bench_quantize_native.json" | tee "$OUT_DIR/bench_quantize_native.txt"
  python3 bench/bench_quantize.py --json "$OUT_DIR/bench_quantize.json" | tee "$OUT_DIR/bench_quantize.txt"
fi
echo "gpu_check status: $status"
exit $status
