#!/usr/bin/env bash
# Temporary iteration script (not committed): CUDA tests, sanitizers, corrections benches, ncu.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kv_site .whl/*.whl
export PYTHONPATH=/tmp/kv_site PYTHONUNBUFFERED=1 KVCORE_CUDA=ON MAX_JOBS=16
T0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps --no-index -e . > /tmp/kv_build.log 2>&1 || { tail -60 /tmp/kv_build.log; exit 1; }
echo "build $(( $(date +%s) - T0 )) s"
python3 -m pytest -q tests -m cuda -p no:cacheprovider > $OUT/tests.log 2>&1; tail -3 $OUT/tests.log
grep -E "^FAILED|Error" $OUT/tests.log | head -20
{ compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_extract_outliers.py tests/test_hadamard_rotate.py tests/test_lowrank_error.py tests/test_decode_corrections.py -k "not graph" 2>&1 | tail -3
  compute-sanitizer --tool racecheck python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_decode_corrections.py -k "b2-d128-g64 and 2-1-1-2 and bfloat" 2>&1 | tail -2
  compute-sanitizer --tool racecheck python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_extract_outliers.py -k "cuda and bfloat" 2>&1 | tail -2
} > $OUT/sanitizers.log 2>&1; cat $OUT/sanitizers.log | grep -E "SUMMARY|passed|failed"
python3 bench/bench_corrections.py --json $OUT/corrections.json 2>&1 | tee $OUT/bench.txt
python3 bench/bench_rotate.py --json $OUT/rotate.json 2>&1 | tee -a $OUT/bench.txt
python3 bench/bench_decode_corrections.py --lengths 32768 131072 --json $OUT/decode_corrections.json 2>&1 | tee -a $OUT/bench.txt
python3 bench/bench_decode.py --quick --json $OUT/decode_quick.json 2>&1 | tail -8 | tee -a $OUT/bench.txt
for v in "2" "2 1 1 0 0"; do
  ncu --clock-control none -k regex:decode_packed -s 2 -c 1 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section InstructionStats --section SchedulerStats python3 bench/decode_step_for_ncu.py $v 2>&1 | grep -vE "^==PROF==|^\s*$" | tail -80
done > $OUT/ncu.txt 2>&1
grep -E "Duration|Registers|Achieved Occupancy|Theoretical Occupancy|Executed Instructions  |Issued Ipc|Dynamic Shared|Block Limit" $OUT/ncu.txt
