"""``package``: export a model to ONNX/TorchScript (+ fp16/int8), validate, benchmark, register.

The source is a researcher's python file defining ``build_model() -> nn.Module`` and
``SIGNATURE`` (a ModelSignature), optionally ``validation_inputs(rows) -> {name: array}`` (that
file is the researcher's own code and is run explicitly); a state_dict checkpoint (``.pt``)
loaded with ``torch.load(weights_only=True)`` into a model zoo ``--architecture``; or a fitted tree
model saved by its library: LightGBM's text model (``.txt``), XGBoost's JSON/UBJSON (``.json``/``.ubj``)
or a scikit-learn pipeline saved with skops (``.skops``; types beyond skops's defaults need ``--trust``).
Pickles are never loaded. A tree model becomes one fp32 ONNX graph validated against the library's
own predictions; ``--signature`` (a ModelSignature JSON file, e.g. with a bars step) or ``--labels``
says how it is served.

Each variant is built, validated and benchmarked in a child process: a variant that crashes, hangs past
``--variant-timeout`` or fails is rejected with the reason and left out. The command registers what
passed, prints the table and exits 0, unless the primary variant (fp32 ONNX) failed (exit 1, nothing
registered).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidInput, PredictionServiceError
from ..settings import MlflowSettings, Settings

if TYPE_CHECKING:
    from ..registry.model_version import ModelVersion


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("package", help="export, validate, benchmark and register a PyTorch or tree model",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="model .py file (build_model + SIGNATURE), state_dict .pt, or a "
                                                   "tree model (LightGBM .txt, XGBoost .json/.ubj, sklearn .skops)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--fp16", action="store_true", help="also build and validate an fp16 ONNX variant")
    parser.add_argument("--int8", action="store_true", help="also build and validate an int8 ONNX variant")
    parser.add_argument("--store", type=Path, default=None, help="registry root (default: MODEL_STORE)")
    parser.add_argument("--architecture", help="model zoo architecture of a .pt checkpoint")
    parser.add_argument("--config", default="{}", help="JSON architecture config of a .pt checkpoint")
    parser.add_argument("--tokenizer", type=Path, help="vocab file for text models (stored as the signature's name)")
    parser.add_argument("--tolerances", default=None, help='JSON overrides, e.g. {"int8": {"max_abs_error": 0.05, '
                                                           '"mean_abs_error": 0.01}}')
    parser.add_argument("--description", default="")
    parser.add_argument("--validation-rows", type=int, default=64)
    parser.add_argument("--benchmark-runs", type=int, default=50, help="batch-1 runs per variant (0 = skip)")
    parser.add_argument("--variant-timeout", type=float, default=900.0,
                        help="seconds one variant's build + validation + benchmark may take before it is killed "
                             "and rejected (default 900)")
    parser.add_argument("--signature", type=Path, default=None,
                        help="tree models: ModelSignature JSON file to serve it under (e.g. with a bars step)")
    parser.add_argument("--labels", default=None, help="tree classifiers: comma-separated class labels")
    parser.add_argument("--trust", action="append", default=[], metavar="TYPE",
                        help="skops files: a type beyond skops's defaults to trust (repeat); only for files "
                             "whose author you trust")
    parser.add_argument("--mlflow", action="store_true",
                        help="also log the packaged version to MLflow as a run + registered model version "
                             "(MLFLOW_TRACKING_URI; docs/mlflow.md)")
    parser.add_argument("--mlflow-tracking-uri", default=None, help="with --mlflow: default MLFLOW_TRACKING_URI")
    parser.add_argument("--mlflow-experiment", default=None, help="with --mlflow: experiment (default: Default)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # torch / onnx load only when the command runs, not when the CLI parser is built.
    from pydantic import ValidationError

    from ..packaging.pipeline import PackagingOptions, PackagingRequest, package_model, package_tree_model
    from ..packaging.sources import load_source
    from ..packaging.trees import TreeModel
    from ..signature import ModelSignature
    from ..packaging.summary import summary_table
    from ..packaging.validation import Tolerances

    settings = Settings()
    store = args.store or settings.model_store
    mlflow_settings = settings.mlflow.model_copy(update={"tracking_uri": args.mlflow_tracking_uri}) \
        if args.mlflow_tracking_uri else settings.mlflow
    if args.mlflow and not mlflow_settings.tracking_uri:  # say so before minutes of packaging
        print("error: --mlflow needs MLFLOW_TRACKING_URI or --mlflow-tracking-uri", file=sys.stderr)
        return 2
    try:
        signature = ModelSignature.model_validate(_json_file(args.signature, "--signature")) if args.signature else None
        labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
        source = load_source(args.source, args.architecture, _json_arg(args.config, "--config"), signature=signature,
                             labels=labels, trusted_types=tuple(args.trust))
        options = PackagingOptions(
            fp16=args.fp16, int8=args.int8, validation_rows=args.validation_rows, benchmark_runs=args.benchmark_runs,
            variant_timeout_s=args.variant_timeout,
            tolerances=Tolerances.model_validate(_json_arg(args.tolerances, "--tolerances"))
            if args.tolerances else Tolerances(),
        )
        tokenizer = args.tokenizer or source.tokenizer
        extra = {source.signature.text.tokenizer: tokenizer} if source.signature.text and tokenizer else {}
        request = PackagingRequest(
            name=args.name, version=args.version, signature=source.signature, architecture=source.architecture,
            architecture_config=source.architecture_config or {}, description=args.description, extra_files=extra,
        )
        inputs = source.validation_inputs(options.validation_rows) if source.validation_inputs else None
        if isinstance(source.model, TreeModel):
            result = package_tree_model(source.model, request, Path(store), options, validation_inputs=inputs)
        else:
            result = package_model(source.model, request, Path(store), options, validation_inputs=inputs)
    except ValidationError as exc:
        print(f"error: invalid option: {exc}", file=sys.stderr)
        return 2
    except PredictionServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        variants = (exc.details or {}).get("variants")
        if isinstance(variants, dict):  # the primary variant failed: what each variant came to, nothing registered
            for key, report in variants.items():
                status = "passed" if report.get("passed") else "REJECTED: " + "; ".join(report.get("failures", []))
                print(f"  {key}: {status}", file=sys.stderr)
        elif exc.details:
            print(json.dumps(exc.details, indent=2, default=str), file=sys.stderr)
        return 1
    print(summary_table(result))
    return _log_to_mlflow(result.version, mlflow_settings, args.mlflow_experiment) if args.mlflow else 0


def _log_to_mlflow(version: ModelVersion, mlflow_settings: MlflowSettings, experiment: str | None) -> int:
    from ..mlflow_bridge.publish import publish_version

    try:
        published = publish_version(version, mlflow_settings, experiment=experiment)
    except PredictionServiceError as exc:
        print(f"error: {version.key} is registered here but was not logged to MLflow: {exc.message}", file=sys.stderr)
        return 1
    print(published.text())
    return 0


def _json_file(path: Path, option: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"{option}: cannot read {path}: {exc.strerror}") from exc
    return _json_arg(text, option)


def _json_arg(text: str | None, option: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{option} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidInput(f"{option} must be a JSON object")
    return value


