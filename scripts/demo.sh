#!/usr/bin/env bash
# One command from a fresh clone: install, build the demo registry (three reference models trained
# briefly on synthetic data), start the service on 127.0.0.1:8000 with the embedded `simple` adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh requirements.txt
export MODEL_STORE="${MODEL_STORE:-$PWD/model_store}"
.venv/bin/python -m prediction_service setup-demo --store "$MODEL_STORE"
exec .venv/bin/python -m prediction_service serve --store "$MODEL_STORE" "$@"
