#!/usr/bin/env bash
# On a GPU machine, with binaries from `scripts/gpu_bundle.sh`: the engine end to end on
# the cuda backend. Writes the transformers fixtures (scripts/make_gpu_fixtures.py), runs
# the engine parity test and the backend tests, and the CLI with --backend=cuda against
# --backend=cpu on one fixture. Logs, summary.txt and engine_parity.json go to $OUT
# (default ./gpu-out). LSERVE_GPU_BUILD_DIR and LSERVE_GPU_LIBS name the bundle's folders
# (default build-gpu, .gpu-libs); LSERVE_COMMIT names the commit in the JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
build=${LSERVE_GPU_BUILD_DIR:-build-gpu}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/${LSERVE_GPU_LIBS:-.gpu-libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LSERVE_REQUIRE_CUDA=1
fixtures=$(mktemp -d)
export LSERVE_GPU_FIXTURES=$fixtures
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
start=$(date +%s)
timeout 300 python3 scripts/make_gpu_fixtures.py --out "$fixtures" >"$out/fixtures.log" 2>&1
echo "fixtures: rc=$? in $(($(date +%s) - start)) s" | tee -a "$out/summary.txt"
tail -n 5 "$out/fixtures.log" | tee -a "$out/summary.txt"
rc=0
for t in cuda_engine_parity_test cuda_engine_graph_test cuda_backend_test backend_registry_test; do
  bin=$(find "$build/tests" -name "$t" -type f | head -1)
  timeout 400 "$bin" --gtest_brief=1 >"$out/$t.log" 2>&1
  status=$?
  echo "$t: rc=$status $(grep -E '^\[  (PASSED|FAILED)' "$out/$t.log" | tr '\n' ' ')" |
    tee -a "$out/summary.txt"
  [ $status -eq 0 ] || rc=1
done
grep -E '^KVSIZE' "$out/cuda_engine_graph_test.log" | tee -a "$out/summary.txt"
grep -E 'KV cache' "$out/cuda_engine_parity_test.log" | sort | uniq -c | head -4 >>"$out/summary.txt"

# The CLI on one fixture, cuda against cpu: greedy ids of a 300-token prompt.
model=$fixtures/llama3_d128_g4
prompt=$(python3 -c "import json; print(','.join(map(str, json.load(open('$model/expected.json'))['prompts'][0]['ids'][:300])))")
for backend in cuda cpu; do
  timeout 120 "$build/worker/lserve_generate" --backend=$backend --model="$model" \
    --prompt_ids="$prompt" --max_tokens=16 --logprobs=2 --json >"$out/cli_$backend.json" 2>"$out/cli_$backend.log"
  echo "cli --backend=$backend: rc=$? $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['generated_ids'], 'ttft', d['time_to_first_token_s'])" "$out/cli_$backend.json" 2>&1)" | tee -a "$out/summary.txt"
done
grep -h 'KV cache\|free after' "$out/cli_cuda.log" | tee -a "$out/summary.txt"
python3 - "$out" <<'EOF' | tee -a "$out/summary.txt"
import json, os, sys
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) > 0 else None
cli = {b: load("cli_%s.json" % b) for b in ("cuda", "cpu")}
ids = {b: c["generated_ids"] for b, c in cli.items() if c}
rows = [json.loads(line[len("PARITY "):])
        for line in open(os.path.join(out, "cuda_engine_parity_test.log"))
        if line.startswith("PARITY ")]
result = {"commit": os.environ.get("LSERVE_COMMIT", ""),
          "gpu": open(os.path.join(out, "gpu.txt")).read().strip(),
          "command": "bash scripts/gpu_engine_run.sh",
          "tolerance_bf16_rel_max": 2e-2, "tolerance_f32_rel_max": 1e-4,
          "parity": rows,
          "cli_greedy_ids": ids, "cli_cuda_equals_cpu": ids.get("cuda") == ids.get("cpu")}
# Where the CLI's two backends part: both backends' two best logprobs at that step.
if len(ids) == 2 and ids["cuda"] != ids["cpu"]:
    step = next(i for i, (a, b) in enumerate(zip(ids["cuda"], ids["cpu"])) if a != b)
    result["cli_first_difference"] = {
        "step": step,
        "cpu_top2": [t["top"][:2] for t in cli["cpu"].get("logprobs", [])][step:step + 1],
        "cuda_top2": [t["top"][:2] for t in cli["cuda"].get("logprobs", [])][step:step + 1]}
json.dump(result, open(os.path.join(out, "engine_parity.json"), "w"), indent=1)
for r in rows:
    print("%-20s %5d tok: dense vs hf %.2e (page64 %.2e), cpu vs hf %.1e, static %.2e, "
          "hybrid prefill %.2e, decode max %.2e mean %.1e over %d/%d; greedy cpu=hf %d checked, "
          "cuda=cpu %d equal (%d checked), hybrid %d equal (%d checked)" % (
              r["fixture"], r["tokens"], r["cuda_dense_vs_hf"], r["cuda_dense_page64_vs_hf"],
              r["cpu_dense_vs_hf"], r["cuda_vs_cpu_streaming_heads_only"],
              r["cuda_vs_cpu_hybrid_prefill_rows"], r["cuda_vs_cpu_hybrid_decode_rows_max"],
              r["cuda_vs_cpu_hybrid_decode_rows_mean"],
              r["cuda_vs_cpu_hybrid_decode_rows_over_tol"], r["decode_rows"],
              r["greedy_cpu_eq_hf_checked"], r["greedy_cuda_eq_cpu_prefix"],
              r["greedy_cuda_eq_cpu_checked"], r["greedy_hybrid_cuda_eq_cpu_prefix"],
              r["greedy_hybrid_cuda_eq_cpu_checked"]))
print("parity rows:", len(rows), " cli cuda == cpu:", result["cli_cuda_equals_cpu"],
      result.get("cli_first_difference", ""))
EOF
rm -rf "$fixtures"
exit $rc
