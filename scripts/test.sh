#!/usr/bin/env bash
# Install dev requirements and run the whole test suite (real Triton and TorchServe included when their
# runtimes are present: tritonserver ships in the nvidia-pytriton wheel, TorchServe needs Java 17).
# --fast: only the unit and in-process app tiers (tests/support/tiers.py), the loop between edits.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh requirements-dev.txt
if ! command -v java >/dev/null 2>&1; then
  echo "[test] note: no java on PATH; TorchServe tests will be skipped (apt-get install openjdk-17-jre-headless)"
fi
if [ "${1:-}" = "--fast" ]; then
  # The loop between edits: unit and in-process app tests (tiers: tests/support/tiers.py).
  shift
  exec .venv/bin/python -m pytest -m "unit or app" "$@"
fi
exec .venv/bin/python -m pytest "$@"
