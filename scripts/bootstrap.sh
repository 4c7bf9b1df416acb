#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the pinned requirements. Idempotent and quick when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
REQS="${1:-requirements.txt}"
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(cat requirements*.txt "$REQS" | sha256sum | cut -c1-16)"  # any pinned file, -r includes too
if [ ! -f "$stamp" ]; then
  echo "[bootstrap] installing $REQS (torch is the pinned CPU build)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r "$REQS"
  touch "$stamp"
fi
echo "[bootstrap] ready: $(.venv/bin/python --version), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
