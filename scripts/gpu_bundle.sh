#!/usr/bin/env bash
# Builds CUDA test and bench binaries for the GPU machine, which has the CUDA toolkit but
# none of the C++ dependencies: portable CPU code (no -march=native) into build-gpu/,
# and the shared libraries they need that the GPU machine lacks into .gpu-libs/.
# It also writes $build/bundle.tar.xz: the stripped binaries and the libraries in one
# archive (the fat binaries differ little, so it is a few MB) to carry to the GPU machine
# and unpack there with `tar xJf build-gpu/bundle.tar.xz` in the repository root.
# Usage: scripts/gpu_bundle.sh [ninja targets...]   (default: every cuda_*_test)
# LSERVE_GPU_BUILD_DIR and LSERVE_GPU_LIBS choose other folders (default build-gpu, .gpu-libs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
build=${LSERVE_GPU_BUILD_DIR:-build-gpu}
libs=${LSERVE_GPU_LIBS:-.gpu-libs}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLSERVE_NATIVE_ARCH=OFF \
  -DLSERVE_CUDA=ON >/dev/null
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ninja -C "$build" -t targets all | sed -n 's/^\(cuda_[a-z_]*_test\):.*/\1/p')
fi
ninja -C "$build" -j "${LSERVE_BUILD_JOBS:-$(nproc)}" "${targets[@]}"
rm -rf "$libs"
mkdir -p "$libs"
# Everything a binary links from this machine's system except the C/C++ runtime and CUDA
# (cudart, cuBLAS, NCCL), which the GPU machine has in newer versions.
find "$build" -type f -perm -u+x \( -name '*_test' -o -name '*_bench' -o -name 'lserve[_-]*' \
  -o -name lserve \) -not -path '*/CMakeFiles/*' |
  xargs -r ldd 2>/dev/null | awk '/=> \// {print $3}' | sort -u |
  grep -v -E '/(libc|libm|libgcc_s|libstdc\+\+|libpthread|libdl|librt|ld-linux|libcuda|libcudart|libcublas|libcublasLt|libnccl)[.-]' |
  xargs -r -I{} cp -L {} "$libs"/
mapfile -t binaries < <(find "$build" -type f -perm -u+x \( -name '*_test' -o -name '*_bench' -o \
  -name 'lserve[_-]*' -o -name lserve \) -not -path '*/CMakeFiles/*')
strip --strip-unneeded "${binaries[@]}"
tar -cf - "${binaries[@]}" "$libs" | xz -9 -T2 >"$build/bundle.tar.xz"
du -sh "$libs" "$build" "$build/bundle.tar.xz" | cat
