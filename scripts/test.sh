#!/usr/bin/env bash
# Sets up a fresh machine, builds everything (CUDA code too when nvcc is present) and runs
# the whole test suite; then the CPU suite again under ASan + UBSan, the multi-threaded
# tests under TSan, and each libFuzzer target for a short bounded time.
# LSERVE_FUZZ_SECONDS sets the time per fuzz target (default 20; 0 skips fuzzing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_test_tools.sh
bash scripts/build.sh
(cd build && ctest --output-on-failure -j "$(nproc)")
bash scripts/sanitize.sh
fuzz_seconds="${LSERVE_FUZZ_SECONDS:-20}"
if [ "${fuzz_seconds}" -gt 0 ]; then
  bash scripts/fuzz.sh "${fuzz_seconds}"
fi
