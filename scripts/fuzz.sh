#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang, ASan and UBSan into build-fuzz/,
# then runs each over a fresh copy of its seed corpus. Exits non-zero when any target
# crashes, leaks, times out or runs out of memory; its log and input stay in
# build-fuzz/fuzz-run/<target>/.
# Usage: scripts/fuzz.sh [seconds_per_target]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
targets=(safetensors_fuzzer checkpoint_index_fuzzer model_config_fuzzer gate_table_fuzzer)

# libclang-rt-dev pulls in the libFuzzer and sanitizer runtimes of the default clang
# (libclang-rt-14-dev on Debian 12).
bash scripts/setup.sh clang libclang-rt-dev

mkdir -p build-fuzz
if ! CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DLSERVE_FUZZ=ON -DLSERVE_CUDA=OFF \
  -DLSERVE_BUILD_BENCH=OFF -DLSERVE_NATIVE_ARCH=OFF >build-fuzz/configure.log 2>&1 ||
  ! ninja -C build-fuzz -j "${LSERVE_BUILD_JOBS:-$(nproc)}" "${targets[@]}" >build-fuzz/build.log 2>&1; then
  tail -n 30 build-fuzz/configure.log build-fuzz/build.log 2>/dev/null
  echo "fuzz: build failed"
  exit 1
fi

rm -rf build-fuzz/corpus build-fuzz/fuzz-run
python3 scripts/make_fuzz_corpus.py build-fuzz/corpus
failed=0
for target in "${targets[@]}"; do
  run="build-fuzz/fuzz-run/${target}"
  mkdir -p "${run}/corpus" "${run}/artifacts"
  cp build-fuzz/corpus/"${target}"/* "${run}/corpus/"
  status=ok
  if ! "build-fuzz/tests/fuzz/${target}" -max_total_time="${seconds}" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="${run}/artifacts/" \
    "${run}/corpus" >"${run}/log" 2>&1; then
    status=FAILED
    failed=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "${run}/log" | tail -n 1)
  echo "fuzz: ${target}: ${execs:-?} execs in ${seconds}s, ${status}"
  if [ "${status}" != ok ]; then
    grep -m 3 -E 'ERROR: |runtime error|deadly signal|Test unit written' "${run}/log" || tail -n 5 "${run}/log"
  fi
done
exit "${failed}"
