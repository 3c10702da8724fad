#!/usr/bin/env bash
# Python packages that only tests use (never the serving path), in a virtual environment
# at .venv-tests/: grpcio and grpcio-reflection for the server-reflection client.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh python3-venv
if [ ! -x .venv-tests/bin/python3 ]; then
  python3 -m venv .venv-tests
fi
if ! .venv-tests/bin/python3 -c "import grpc, grpc_reflection" 2>/dev/null; then
  .venv-tests/bin/python3 -m pip install -q --disable-pip-version-check \
    "grpcio>=1.51,<2" "grpcio-reflection>=1.51,<2"
fi
