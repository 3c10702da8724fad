#!/usr/bin/env bash
# Configures and builds lserve into build/ (CUDA code too when nvcc is present).
# Usage: scripts/build.sh [ninja targets...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${LSERVE_CMAKE_ARGS:-} >/dev/null
ninja -C build -j "${LSERVE_BUILD_JOBS:-$(nproc)}" "$@"
