#!/usr/bin/env bash
# Fails when any tracked C++/CUDA file differs from clang-format's output.
set -euo pipefail
cd "$(dirname "$0")/.."
files=$(git ls-files '*.h' '*.cc' '*.cu' '*.cuh' 2>/dev/null || find . -name '*.h' -o -name '*.cc')
bad=0
for f in $files; do
  if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "not clang-formatted: $f"
    bad=1
  fi
done
exit $bad
