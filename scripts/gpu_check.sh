#!/usr/bin/env bash
# On a GPU machine: runs the CUDA parity tests (built elsewhere into build-gpu/ and carried
# with their shared libraries in .gpu-libs/, or built here when the machine has the C++
# dependencies) and writes logs under $OUT (default ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
nvidia-smi -L | tee "$out/gpu.txt"
export LD_LIBRARY_PATH=$PWD/.gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LSERVE_REQUIRE_CUDA=1
rc=0
for t in build-gpu/tests/kernels/cuda/cuda_*_test; do
  [ -x "$t" ] || continue
  "$t" 2>&1 | tee -a "$out/cuda_tests.log" | tail -3
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
done
echo "cuda tests rc=$rc"
exit $rc
