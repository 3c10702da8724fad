#!/usr/bin/env bash
# lserve_generate end to end: answers prompts (built-in model and stories260K, whose greedy
# ids must match llama2.c's), and turns bad input into a message and exit code 1.
set -uo pipefail
bin=$1
shared=$2
synthetic=$3
failures=0
passes=0
check() {  # check NAME CONDITION...
  local name=$1
  shift
  if "$@"; then echo "ok   $name"; passes=$((passes + 1)); else echo "FAIL $name"; failures=$((failures + 1)); fi
}

out=$("$bin" --prompt_ids=1,2,3 --max_tokens=8 --json)
check "built-in model answers with 8 ids" \
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); assert len(d['generated_ids'])==8 and d['finish_reason']=='length'" "$out"

streamed=$("$bin" --prompt_ids=1,2,3 --max_tokens=8)
check "streamed ids equal the JSON ids" \
  python3 -c "import json,sys; assert json.loads(sys.argv[1])['generated_ids']==[int(t) for t in sys.argv[2].split()]" "$out" "$streamed"

out=$("$bin" --model="$shared/models/stories260K" --prompt_ids=1 --max_tokens=64 --json --dense)
check "stories260K greedy ids match llama2.c" \
  python3 -c "
import json,sys
d=json.loads(sys.argv[1]); ref=json.load(open(sys.argv[2]))['cases'][0]
n=ref['exact_prefix_len']; assert d['generated_ids'][:n]==ref['greedy_continuation_ids'][:n]" \
  "$out" "$shared/models/stories260K/reference.json"

out=$("$bin" --model="$shared/models/stories260K" --prompt_ids=1 --max_tokens=64 --json \
  --gate_file="$shared/attn_patterns/Meta-Llama-3.1-8B-Instruct/full_attention_heads.tsv" 2>&1)
check "gate file of the wrong geometry is refused" test $? -ne 0
check "  ...naming the file" grep -q "full_attention_heads.tsv" <<<"$out"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$synthetic" --geometry=tiny --layers=2 --dtype=bfloat16 --seed=5 --out="$dir/tiny" >/dev/null
check "synthetic bf16 model folder is written" test -f "$dir/tiny/model.safetensors"
out=$("$bin" --model="$dir/tiny" --prompt_ids=5,6,7 --max_tokens=4 --json)
check "generator answers from the written folder" \
  python3 -c "import json,sys; assert len(json.loads(sys.argv[1])['generated_ids'])==4" "$out"
"$synthetic" --geometry=tiny --layers=1 --dtype=float16 --out="$dir/tiny16" >/dev/null
out=$("$bin" --model="$dir/tiny16" --prompt_ids=5,6,7 --max_tokens=4 --json)
check "generator answers from a float16 folder" \
  python3 -c "import json,sys; assert len(json.loads(sys.argv[1])['generated_ids'])==4" "$out"
printf 'not a safetensors file' >"$dir/tiny/model.safetensors"
msg=$("$bin" --model="$dir/tiny" --prompt_ids=1 2>&1)
check "corrupt checkpoint is refused naming the file" grep -q "model.safetensors" <<<"$msg"

expect_error() {  # expect_error NAME PATTERN ARGS...
  local name=$1 pattern=$2
  shift 2
  local msg
  msg=$("$bin" "$@" 2>&1)
  local rc=$?
  check "$name exits 1" test $rc -eq 1
  check "$name says '$pattern'" grep -q -- "$pattern" <<<"$msg"
}
expect_error "bad prompt id" "not a token id" --prompt_ids=1,x,3
expect_error "out-of-vocabulary id" "outside the vocabulary" --prompt_ids=1,99999
expect_error "missing model folder" "config.json" --model=/nonexistent/model
expect_error "negative temperature" "temperature" --temperature=-1
expect_error "top_p of zero" "top_p" --top_p=0
expect_error "prompt past the context" "context length" --max_tokens=5000
expect_error "unsupported page size" "page_size" --page_size=48
expect_error "absurd thread count" "num_threads" --threads=1000000

echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
