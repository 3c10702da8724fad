#!/usr/bin/env bash
# The main job: sets up a fresh machine, builds lserve, and runs a local cluster on
# 127.0.0.1 — lserve-router, one prefill worker and one decode worker on the CPU backend —
# waits for health, streams a real request through the router (its prompt long enough to
# be prefilled on the prefill worker and handed to the decode worker), prints the tokens
# and where the metrics are, and stops everything cleanly.
#
# Usage: scripts/main_job.sh [MODEL_FOLDER] [lserve generate flags...]
#   MODEL_FOLDER: a Hugging Face folder (default: the built-in synthetic model)
#   e.g. scripts/main_job.sh ../shared/models/stories260K --max_tokens=64 --temperature=0.8
set -euo pipefail
cd "$(dirname "$0")/.."
model_args=()
if [ $# -gt 0 ] && [ -d "$1" ]; then
  model_args=(--model="$1")
  shift
fi
bash scripts/build.sh lserve-router lserve-worker lserve

run_dir=$(mktemp -d -t lserve-cluster-XXXXXX)
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$run_dir"
}
trap stop_all EXIT

# Starts a server in the background with --port_file, then waits for the file.
start() {  # start NAME BINARY ARGS...
  local name=$1 binary=$2
  shift 2
  "$binary" --port_file="$run_dir/$name.ports" "$@" >"$run_dir/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 600); do
    [ -s "$run_dir/$name.ports" ] && return 0
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then
      echo "$name failed to start:" >&2
      cat "$run_dir/$name.log" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "$name did not start in 30 s" >&2
  return 1
}
port() { sed -n "s/^$2=//p" "$run_dir/$1.ports"; }

start router build/router/lserve-router --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
  --disaggregation_min_prompt_tokens=8 --health_interval_s=0.2
router="127.0.0.1:$(port router grpc_port)"
for role in prefill decode; do
  start "$role" build/worker/lserve-worker --role="$role" --router="$router" \
    --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 "${model_args[@]}"
done
build/client/lserve health --target="$router" --wait_s=30

echo "lserve cluster up: router $router, prefill and decode workers registered"
echo "request: 12 prompt tokens through the router (prefill worker -> KV hand-off -> decode worker)"
printf 'tokens: '
build/client/lserve generate --target="$router" --prompt_ids=1,403,407,261,375,290,330,261,356,401,266,406 \
  --max_tokens=32 "$@"
echo "metrics (Prometheus text format):"
for name in router prefill decode; do
  echo "  $name: http://127.0.0.1:$(port "$name" metrics_port)/metrics"
done
grep -E "^lserve_router_(kv_handoff_bytes_total|requests_total)" \
  <(exec 3<>"/dev/tcp/127.0.0.1/$(port router metrics_port)"; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3; cat <&3) || true
echo "stopping the cluster"
