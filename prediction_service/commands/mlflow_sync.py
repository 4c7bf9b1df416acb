"""``python -m prediction_service mlflow sync``: mirror MLflow model versions and aliases into the registry.

Exit status: 0 in sync (whether or not something changed), 2 when some version was refused or an alias
could not be turned into a promotion (the output says why), 1 on a domain error (no tracking URI, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import PredictionServiceError

EXIT_DOMAIN_ERROR = 1
EXIT_PARTIAL = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("mlflow", help="bridge to an MLflow Model Registry")
    commands = parser.add_subparsers(dest="mlflow_command", required=True)
    sync = commands.add_parser("sync", help="one shot: mirror ONNX/TorchScript model versions and production/staging aliases")
    sync.add_argument("models", nargs="*", help="MLflow registered model names (default: MLFLOW_MODEL_NAMES)")
    sync.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    sync.add_argument("--store", type=Path, default=None, help="registry root (default: MODEL_STORE setting)")
    sync.add_argument("--actor", default=f"mlflow-sync:{os.environ.get('USER', 'unknown')}",
                      help="who acts, in the registry's event log")
    sync.add_argument("--json", action="store_true", help="machine-readable JSON output")
    sync.set_defaults(func=_sync)


def _sync(args: argparse.Namespace) -> int:
    from ..registry.store import ModelRegistry
    from ..settings import Settings

    settings = Settings()
    mlflow_settings = settings.mlflow
    if args.tracking_uri:
        mlflow_settings = mlflow_settings.model_copy(update={"tracking_uri": args.tracking_uri})
    try:
        from ..mlflow_bridge import MlflowSync

        registry = ModelRegistry(args.store if args.store is not None else settings.model_store)
        report = MlflowSync(registry, mlflow_settings, actor=args.actor).sync(args.models or None)
    except PredictionServiceError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return EXIT_DOMAIN_ERROR
    except ImportError as exc:
        print(f"error [mlflow_missing]: the MLflow client is not installed ({exc}); pip install -r requirements.txt",
              file=sys.stderr)
        return EXIT_DOMAIN_ERROR
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.text())
    return EXIT_PARTIAL if report.failures else 0
