#!/usr/bin/env bash
# The main job: sets up a fresh machine, builds the engine and answers a prompt with the
# built-in synthetic model on the CPU backend. Extra arguments go to lserve_generate
# (e.g. --model=/path/to/hf_folder --prompt_ids=1,2,3 --max_tokens=64 --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh lserve_generate
exec build/worker/lserve_generate --prompt_ids=1,403,407,261,375,290 --max_tokens=32 "$@"
