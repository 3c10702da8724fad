#!/usr/bin/env bash
# On a GPU machine, with binaries from `scripts/gpu_bundle.sh engine_context_bench
# lserve_synthetic cuda_gemv_bench` (build-gpu/, .gpu-libs/): the decode step's GEMMs alone,
# then the end-to-end long-context benchmark of the CUDA engine, dense and hybrid, on the
# synthetic Llama-3-8B-geometry model, then transformers (SDPA) on the same checkpoint as
# the peer. Output under $OUT (default ./gpu-out). LSERVE_COMMIT names the commit in the
# JSON; LSERVE_GATES names the streaming gates (full_attention_heads.tsv) where ../shared
# is not beside the repository.
# Usage: scripts/gpu_engine_bench_run.sh [contexts, default 32768,65536,131072,262144]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
contexts=${1:-32768,65536,131072,262144}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/.gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
# The decode step's GEMMs alone first: per-shape bandwidth, stream against graph.
[ -x build-gpu/bench/cuda_gemv_bench ] &&
  timeout 120 build-gpu/bench/cuda_gemv_bench --rows=1,2,4,8 --json="$out/cuda_gemv.json" |
  tee "$out/cuda_gemv.txt"
gates=()
[ -n "${LSERVE_GATES:-}" ] && gates=(--gates="$LSERVE_GATES")
build-gpu/bench/engine_context_bench --backend=cuda --geometry=llama3-8b --contexts="$contexts" \
  "${gates[@]}" --batches=1,6,8 --json="$out/engine_context.json" | tee "$out/engine_context.txt"
model=${LSERVE_SYNTHETIC_DIR:-/tmp/lserve-llama3-8b-synthetic}
[ -f "$model/config.json" ] ||
  build-gpu/worker/model/lserve_synthetic --geometry=llama3-8b --dtype=bfloat16 --out="$model"
python3 bench/engine_baselines.py --model="$model" --contexts="$contexts" --batches=1,8 \
  --json="$out/engine_baselines.json" | tee "$out/engine_baselines.txt"
