#!/usr/bin/env bash
# On a GPU machine, with binaries from `scripts/gpu_bundle.sh` (build-gpu/, .gpu-libs/):
# the CUDA parity tests, compute-sanitizer (memcheck, racecheck) on small decode-path
# cases, the decode benchmark and its PyTorch baselines measured in the same run.
# Logs and JSON go to $OUT (default ./gpu-out). LSERVE_COMMIT names the commit in the JSON.
# Usage: scripts/gpu_decode_run.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
quick=${1:-}
export LD_LIBRARY_PATH=$PWD/.gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LSERVE_REQUIRE_CUDA=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
rc=0
for t in build-gpu/tests/kernels/cuda/cuda_*_test; do
  case "$t" in *prefill*) continue ;; esac
  timeout 300 "$t" --gtest_brief=1 >"$out/$(basename "$t").log" 2>&1
  status=$?
  echo "$(basename "$t"): rc=$status $(grep -E '^\[  (PASSED|FAILED)' "$out/$(basename "$t").log" | tr '\n' ' ')" |
    tee -a "$out/summary.txt"
  [ $status -eq 0 ] || rc=1
done
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -n "$sanitizer" ]; then
  for tool in memcheck racecheck; do
    timeout 300 "$sanitizer" --tool "$tool" --error-exitcode 9 \
      build-gpu/tests/kernels/cuda/cuda_page_select_test --gtest_filter='*Ties*' \
      >"$out/sanitizer-$tool-select.log" 2>&1
    echo "compute-sanitizer $tool page select: rc=$? $(tail -1 "$out/sanitizer-$tool-select.log")" |
      tee -a "$out/summary.txt"
    LSERVE_DECODE_TEST_SMALL=1 timeout 300 "$sanitizer" --tool "$tool" --error-exitcode 9 \
      build-gpu/tests/kernels/cuda/cuda_paged_decode_test \
      --gtest_filter='*DenseAndStreaming*:*OddGroups*' >"$out/sanitizer-$tool-decode.log" 2>&1
    echo "compute-sanitizer $tool decode: rc=$? $(tail -1 "$out/sanitizer-$tool-decode.log")" |
      tee -a "$out/summary.txt"
    timeout 300 "$sanitizer" --tool "$tool" --error-exitcode 9 \
      build-gpu/tests/kernels/cuda/cuda_decode_graph_test >"$out/sanitizer-$tool-graph.log" 2>&1
    echo "compute-sanitizer $tool graph: rc=$? $(tail -1 "$out/sanitizer-$tool-graph.log")" |
      tee -a "$out/summary.txt"
  done
fi
bench_args=()
[ "$quick" = "--quick" ] && bench_args=(--quick=1)
timeout 300 build-gpu/bench/cuda_decode_bench "${bench_args[@]}" --json="$out/cuda_decode.json" \
  | tee "$out/cuda_decode.txt"
timeout 300 python3 bench/decode_baselines.py ${quick:+--quick} --json="$out/decode_baselines.json" \
  | tee "$out/decode_baselines.txt"
# Kernel-level profile of the two shapes that set the targets (when Nsight Compute exists).
ncu_bin=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
if [ -n "$ncu_bin" ] && [ "$quick" != "--quick" ]; then
  ncu_run() {
    timeout 200 "$ncu_bin" --section SpeedOfLight --section LaunchStats --section Occupancy \
      --launch-skip 5 "$@" >>"$out/ncu.txt" 2>&1
  }
  ncu_run -k regex:DecodeMma --launch-count 1 build-gpu/bench/cuda_decode_bench --batch=1 \
    --keys=131072 --hybrid=0
  ncu_run -k regex:DecodeMma --launch-count 1 --section WarpStateStats --section SchedulerStats \
    --section MemoryWorkloadAnalysis build-gpu/bench/cuda_decode_bench --batch=8 --keys=32768 \
    --hybrid=0
  ncu_run -k regex:"Score|Select" --launch-count 2 build-gpu/bench/cuda_decode_bench --batch=1 \
    --keys=131072
  grep -E "DecodeMma|ScoreKernel|SelectKernel|Duration|DRAM Through|Memory Through" "$out/ncu.txt" |
    head -80 >"$out/ncu-summary.txt"
fi
cat "$out/summary.txt"
echo "tests rc=$rc"
exit $rc
