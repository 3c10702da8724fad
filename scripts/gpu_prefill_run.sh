#!/usr/bin/env bash
# On a GPU machine, with binaries from `scripts/gpu_bundle.sh` (build-gpu/, .gpu-libs/):
# the prefill parity tests, compute-sanitizer (memcheck, racecheck) on small prefill
# cases, the prefill benchmark and its PyTorch peers (SDPA flash/cuDNN, FlexAttention)
# measured in the same run. Logs and JSON go to $OUT (default ./gpu-out). LSERVE_COMMIT
# names the commit in the JSON. Usage: scripts/gpu_prefill_run.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
quick=${1:-}
export LD_LIBRARY_PATH=$PWD/.gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LSERVE_REQUIRE_CUDA=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
rc=0
# The prefill test runs once per kernel: the default (wgmma on sm_90) and mma.sync.
for run in cuda_prefill_plan_test cuda_paged_prefill_test cuda_paged_prefill_test:mma_sync; do
  t=build-gpu/tests/kernels/cuda/${run%%:*}
  kernel=${run#*:}
  [ "$kernel" = "$run" ] && kernel=auto
  log="$out/${run/:/-}.log"
  LSERVE_PREFILL_KERNEL=$kernel timeout "${LSERVE_TEST_TIMEOUT:-400}" "$t" --gtest_brief=1 >"$log" 2>&1
  status=$?
  echo "${run}: rc=$status $(grep -E '^\[  (PASSED|FAILED)' "$log" | tr '\n' ' ')" |
    tee -a "$out/summary.txt"
  [ $status -eq 0 ] || rc=1
done
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -n "$sanitizer" ]; then
  for tool in memcheck racecheck synccheck; do
    LSERVE_DECODE_TEST_SMALL=1 timeout 300 "$sanitizer" --tool "$tool" --error-exitcode 9 \
      build-gpu/tests/kernels/cuda/cuda_paged_prefill_test --gtest_filter='*MixedLengths*' \
      >"$out/sanitizer-$tool-prefill.log" 2>&1
    echo "compute-sanitizer $tool prefill: rc=$? $(tail -1 "$out/sanitizer-$tool-prefill.log")" |
      tee -a "$out/summary.txt"
  done
fi
bench_args=()
[ "$quick" = "--quick" ] && bench_args=(--quick=1)
timeout 300 build-gpu/bench/cuda_prefill_bench "${bench_args[@]}" --json="$out/cuda_prefill.json" |
  tee "$out/cuda_prefill.txt"
timeout 400 python3 bench/prefill_baselines.py ${quick:+--quick} --json="$out/prefill_baselines.json" |
  tee "$out/prefill_baselines.txt"
cat "$out/summary.txt"
echo "tests rc=$rc"
exit $rc
