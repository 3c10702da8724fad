#!/usr/bin/env bash
# On a machine with two GPUs, with binaries from `scripts/gpu_bundle.sh`: the KV hand-off
# over NCCL. Runs the link test, the hand-off bandwidth bench (against raw NCCL), the
# two-GPU cluster tests (equivalence and faults), and time to first and second token at
# ~128K prompt tokens on the synthetic Llama-3-8B model (hybrid), unified worker against
# prefill on GPU 0 -> NCCL -> decode on GPU 1, with the KV sent during the prefill's last
# chunk and only after it. Logs, JSON and summary.txt go to $OUT
# (default ./gpu-out). GATES names the streaming-head gate file (default build-gpu/gates.tsv);
# TTFT_TOKENS the long prompt's length (default 130000; 0 skips that part); PARTS picks
# parts (link,bench,sweep,cluster,checkpoints,ttft; default all), TTFT_ONLY=1 the last.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
build=${LSERVE_GPU_BUILD_DIR:-build-gpu}
gates=${GATES:-build-gpu/gates.tsv}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/${LSERVE_GPU_LIBS:-.gpu-libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# NCCL: the machine's, else the one PyTorch ships with.
if ! ldconfig -p | grep -q 'libnccl.so.2 '; then
  nccl_dir=$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))" 2>/dev/null)
  export LD_LIBRARY_PATH=$nccl_dir:$LD_LIBRARY_PATH
fi
export LSERVE_TEST_GPUS=$(nvidia-smi -L | wc -l)
export LSERVE_GEMM_TUNE=0 # the same GEMM algorithms in every process: bitwise comparable
export LSERVE_WORKER_BINARY=$PWD/$build/worker/lserve-worker
export LSERVE_ROUTER_BINARY=$PWD/$build/router/lserve-router
nvidia-smi -L | tee "$out/gpu.txt"
nvidia-smi topo -m >"$out/topo.txt" 2>&1
summary=$out/summary.txt
find_bin() { find "$build" -name "$1" -type f -perm -u+x | head -1; }

# PARTS picks what runs (default all): link, bench, sweep, cluster, checkpoints, ttft.
parts=",${PARTS:-link,bench,sweep,cluster,checkpoints,ttft},"
[ -n "${TTFT_ONLY:-}" ] && parts=",ttft,"
[ "${TTFT_TOKENS:-130000}" -gt 0 ] || parts=${parts/,ttft,/,}
want() { [[ $parts == *",$1,"* ]]; }

if want link; then
bin=$(find_bin cuda_nccl_link_test)
timeout 120 "$bin" >"$out/nccl_link_test.log" 2>&1
echo "cuda_nccl_link_test: rc=$? $(grep -E '^\[  (PASSED|FAILED|SKIPPED)' "$out/nccl_link_test.log" | tr '\n' ' ')" | tee -a "$summary"

fi

bin=$(find_bin cuda_kv_handoff_bench)
if want bench; then
NCCL_DEBUG=INFO timeout 300 "$bin" --gates="$gates" --json="$out/handoff.json" >"$out/handoff_bench.log" 2>"$out/handoff_bench.err"
echo "cuda_kv_handoff_bench: rc=$?" | tee -a "$summary"
grep -v '^$' "$out/handoff_bench.log" | tee -a "$summary"
grep -E 'via|P2P|SHM' "$out/handoff_bench.err" | head -4 | tee -a "$summary"

fi
# Communicator memory against bandwidth under NCCL's p2p channel and buffer settings.
want sweep && for env in "" "NCCL_NVLS_ENABLE=0" "NCCL_MAX_P2P_NCHANNELS=16" "NCCL_MAX_P2P_NCHANNELS=8" \
  "NCCL_MAX_P2P_NCHANNELS=8 NCCL_BUFFSIZE=2097152" "NCCL_MAX_P2P_NCHANNELS=4"; do
  tag=$(echo "${env:-default}" | tr ' =' '_-')
  env $env timeout 120 "$bin" --lengths=32768 --modes=dense --layouts=fresh --raw_mib=256,4096 \
    --json="$out/nccl-env-$tag.json" >"$out/nccl-env-$tag.log" 2>&1
  python3 - "${env:-default}" "$out/nccl-env-$tag.json" <<'PY' | tee -a "$summary"
import json, sys
try:
    d = json.load(open(sys.argv[2]))
    c = d["communicator"]
    h = d["handoff"][0]
    raw = max(r["gbs"] for r in d.get("raw", [])) if d.get("raw") else float("nan")
    print(f"nccl env {sys.argv[1]}: init {[b >> 20 for b in c['device_bytes_at_init']]} MiB, "
          f"connected {[b >> 20 for b in c['device_bytes_connected']]} MiB, raw {raw:.0f} GB/s, "
          f"32K dense hand-off {h['gbs']:.0f} GB/s")
except Exception as e:
    print(f"nccl env {sys.argv[1]}: no result ({e})")
PY
done

bin=$(find_bin cluster_gpu_test)
if want cluster; then
timeout 400 "$bin" >"$out/cluster_gpu_test.log" 2>&1
echo "cluster_gpu_test: rc=$? $(grep -E '^\[  (PASSED|FAILED|SKIPPED)|^\[       OK|^\[  FAILED' "$out/cluster_gpu_test.log" | tr '\n' ' ')" | tee -a "$summary"
fi
# Equivalence on small checkpoints that transformers writes (GPU-sized heads).
if want checkpoints; then
checkpoints=$(mktemp -d)
timeout 120 python3 scripts/make_gpu_fixtures.py --out "$checkpoints" --checkpoints_only \
  --only=llama3_d128_g4,qwen2_d64_bias_tied >"$out/checkpoints.log" 2>&1
for model in llama3_d128_g4 qwen2_d64_bias_tied; do
  LSERVE_GPU_MODEL=$checkpoints/$model timeout 200 "$bin" \
    --gtest_filter=ClusterGpuTest.NcclHandOffGivesTheUnifiedWorkersGreedyTokens >"$out/cluster_gpu_test_$model.log" 2>&1
  echo "cluster_gpu_test on $model: rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$out/cluster_gpu_test_$model.log" | tr '\n' ' ')" | tee -a "$summary"
done
fi

tokens=${TTFT_TOKENS:-130000}
want ttft || exit 0
run=$(mktemp -d)
python3 -c "import random; random.seed(7); print(','.join(str(random.randrange(1000, 128000)) for _ in range($tokens)))" >"$run/long.ids"
python3 -c "import random; random.seed(8); print(','.join(str(random.randrange(1000, 128000)) for _ in range(8192)))" >"$run/warm.ids"
cat >"$run/hybrid.cfg" <<CFG
attention { gate_file: "$PWD/$gates" streaming_ratio: 0.5 }
max_batch_tokens: 8192
kv_lease_ms: 120000
CFG
pids=()
start() {  # start NAME ARGS...: a server with --port_file, waited for (300 s)
  local name=$1
  shift
  rm -f "$run/$name.ports"  # a previous run's
  "$@" --port_file="$run/$name.ports" >"$out/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 3000); do
    [ -s "$run/$name.ports" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "$name exited" | tee -a "$summary"; return 1; }
    sleep 0.1
  done
  echo "$name did not start" | tee -a "$summary"
  return 1
}
port() { sed -n "s/^$2=//p" "$run/$1.ports"; }
stop_all() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null; pids=(); }
worker=("$build/worker/lserve-worker" --backend=cuda --builtin_model=llama3-8b
  --config="$run/hybrid.cfg" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0
  --gpu_memory_utilization=0.85 --max_context=$((tokens + 64)))
ask() {  # ask NAME TARGET: the warm-up, then the long prompt (4 greedy tokens)
  "$build/client/lserve" generate --target="$2" --prompt_ids_file="$run/warm.ids" \
    --max_tokens=2 --timeout_ms=600000 --json >/dev/null 2>>"$out/$1_client.log"
  "$build/client/lserve" generate --target="$2" --prompt_ids_file="$run/long.ids" \
    --max_tokens=4 --timeout_ms=600000 --json >"$out/$1_long.json" 2>>"$out/$1_client.log"
  echo "$1: $(tail -1 "$out/$1_client.log") ids $(python3 -c "import json,sys; print([t['tokenId'] for t in json.load(open(sys.argv[1]))['tokens']])" "$out/$1_long.json" 2>&1)" | tee -a "$summary"
}
start unified "${worker[@]}" --device=0 && ask unified "127.0.0.1:$(port unified grpc_port)"
stop_all
# disaggregated: the KV goes layer by layer while the prefill's last chunk computes it;
# disaggregated_after: only once the prefill is done (--kv_send_during_prefill=false).
for mode in disaggregated disaggregated_after; do
  extra=()
  [ "$mode" = disaggregated_after ] && extra=(--kv_send_during_prefill=false)
  start router "$build/router/lserve-router" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
    --disaggregation_min_prompt_tokens=256 --health_interval_s=0.2 &&
    start prefill "${worker[@]}" "${extra[@]}" --device=0 --role=prefill --router="127.0.0.1:$(port router grpc_port)" &&
    start decode "${worker[@]}" --device=1 --role=decode --router="127.0.0.1:$(port router grpc_port)" &&
    "$build/client/lserve" health --target="127.0.0.1:$(port router grpc_port)" --wait_s=60 &&
    ask "$mode" "127.0.0.1:$(port router grpc_port)"
  for name in prefill decode; do
    python3 - "$mode $name" "$(port $name metrics_port)" <<'PY' | tee -a "$summary"
import sys, urllib.request
name, port = sys.argv[1], sys.argv[2]
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
keep = [l for l in text.splitlines() if l.startswith(("lserve_kv_transfer_bytes_total", "lserve_kv_transfer_seconds_sum", "lserve_kv_transport_fallbacks_total", "lserve_kv_handoffs_during_prefill_total"))]
print(name, "metrics:", "; ".join(keep) or "none")
PY
  done
  grep -h "NCCL KV link\|falls back\|aborted\|during its prefill failed" "$out/prefill.log" "$out/decode.log" | head -5 | tee -a "$summary"
  cp "$out/prefill.log" "$out/${mode}_prefill.log"
  cp "$out/decode.log" "$out/${mode}_decode.log"
  stop_all
done
