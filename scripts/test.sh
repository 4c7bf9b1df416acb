#!/usr/bin/env bash
# Install dev requirements and run the whole test suite (real Triton and TorchServe included when their
# runtimes are present: tritonserver ships in the nvidia-pytriton wheel, TorchServe needs Java 17).
# --fast: only the unit and in-process app tiers (tests/support/tiers.py), the loop between edits.
# TEST_WORKERS (default 2) test processes share the work (pytest-xdist); the users of one shared external
# server (Triton, TorchServe, PostgreSQL, MLflow, Ray) run in one of them. TEST_WORKERS=0: one process.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh requirements-dev.txt
if ! command -v java >/dev/null 2>&1; then
  echo "[test] note: no java on PATH; TorchServe tests will be skipped (apt-get install openjdk-17-jre-headless)"
fi
workers=(-n "${TEST_WORKERS:-2}" --dist loadgroup)
if [ "${1:-}" = "--fast" ]; then
  shift
  exec .venv/bin/python -m pytest "${workers[@]}" -m "unit or app" "$@"
fi
exec .venv/bin/python -m pytest "${workers[@]}" "$@"
