"""``package ... --mlflow``: log a packaged version to MLflow as a run and a registered model version.

The run gets the version's metrics, the benchmark figures and the validation errors as metrics, the
validation report, benchmarks and metadata.json as JSON artifacts, and the model under ``model/``: every
artifact file of the version byte for byte (ONNX fp32 and its fp16/int8 variants, TorchScript, state_dict)
plus its extra files, with an MLmodel whose ``onnx`` flavour names ``model.onnx``, a tensor signature, and
under ``metadata.prediction_service`` the list of files and the strict signature, so ``mlflow sync`` brings
back the same files (sha256 equal) and the same contract. The files are copied, not re-serialized through
``mlflow.onnx.log_model``, which would not keep the bytes.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, PredictionServiceError
from ..registry.layout import METADATA_FILE
from ..registry.model_version import CACHE_DIR, ModelVersion
from ..settings import MlflowSettings
from .artifacts import METADATA_KEY, MLMODEL_FILE, ONNX_FILE
from .signature import to_mlflow_signature
from .sync import MlflowUnavailable, _safe_uri

MODEL_DIR = "model"
"""Where the model goes inside the run's artifacts."""
TAG_PACKAGED = "prediction_service.version"
"""Run and model version tag: the filesystem version that was packaged."""


@dataclass(frozen=True)
class Published:
    run_id: str
    registered_model: str
    mlflow_version: str
    files: tuple[str, ...]

    def text(self) -> str:
        return (f"MLflow: run {self.run_id}, registered model {self.registered_model} version {self.mlflow_version} "
                f"({', '.join(self.files)})")


def publish_version(version: ModelVersion, settings: MlflowSettings, *, experiment: str | None = None,
                    client: Any = None) -> Published:
    """Log ``version`` (already registered in the filesystem registry) to MLflow; MlflowUnavailable on errors."""
    if not settings.tracking_uri:
        raise InvalidInput("MLFLOW_TRACKING_URI is not set: say which MLflow server to log to")
    if not any(a.file == ONNX_FILE and a.format == "onnx" for a in version.metadata.artifacts):
        raise InvalidInput(f"{version.key} has no {ONNX_FILE}: only versions with an ONNX artifact are logged")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    try:
        return _publish(client, version, experiment)
    except PredictionServiceError:
        raise
    except (MlflowException, OSError) as exc:
        uri = _safe_uri(settings.tracking_uri)
        raise MlflowUnavailable(f"MLflow at {uri}: cannot log {version.key}: {exc}", {"tracking_uri": uri}) from exc


def _publish(client: Any, version: ModelVersion, experiment: str | None) -> Published:
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    meta = version.metadata
    experiment_id = "0"  # MLflow's Default experiment
    if experiment:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    # MLflow's own tags (a version that was itself mirrored from MLflow has some) are MLflow's to set
    tags = {**{k: v for k, v in meta.tags.items() if not k.startswith("mlflow.")},
            TAG_PACKAGED: f"{meta.name}:{meta.version}"}
    run = client.create_run(experiment_id, run_name=f"package {meta.name}:{meta.version}", tags=tags)
    run_id = run.info.run_id
    try:
        now = int(datetime.now(timezone.utc).timestamp() * 1000)
        metrics = [Metric(key, value, now, 0) for key, value in _run_metrics(version).items()]
        params = [Param(key, value) for key, value in _run_params(version).items()]
        client.log_batch(run_id, metrics=metrics, params=params)
        if meta.validation is not None:
            client.log_dict(run_id, meta.validation.model_dump(mode="json"), "validation.json")
        if meta.benchmarks:
            client.log_dict(run_id, meta.benchmarks, "benchmarks.json")
        client.log_dict(run_id, meta.model_dump(mode="json"), METADATA_FILE)
        with tempfile.TemporaryDirectory(prefix="mlflow-publish-") as work:
            model_dir = Path(work) / MODEL_DIR
            files = _stage_model(version, model_dir, run_id)
            client.log_artifacts(run_id, str(model_dir), MODEL_DIR)
        try:
            client.create_registered_model(meta.name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        created = client.create_model_version(meta.name, f"runs:/{run_id}/{MODEL_DIR}", run_id=run_id,
                                              tags={TAG_PACKAGED: f"{meta.name}:{meta.version}"},
                                              description=meta.description or None)
        client.set_terminated(run_id)
    except BaseException:
        with suppress(Exception):  # the original error is the one to report
            client.set_terminated(run_id, status="FAILED")
        raise
    return Published(run_id, meta.name, str(created.version), tuple(files))


def _stage_model(version: ModelVersion, model_dir: Path, run_id: str) -> list[str]:
    """The MLflow model directory: the version's files byte for byte + an MLmodel describing them."""
    import onnx
    import yaml

    meta = version.metadata
    model_dir.mkdir()
    artifact_files = {a.file for a in meta.artifacts}
    extra = sorted(p.name for p in version.path.iterdir()
                   if p.is_file() and not p.is_symlink() and p.name not in artifact_files
                   and p.name != METADATA_FILE and p.name != CACHE_DIR and not p.name.startswith("."))
    files = [a.file for a in meta.artifacts] + extra
    for name in files:
        shutil.copyfile(version.path / name, model_dir / name)
    mlmodel = {
        "artifact_path": MODEL_DIR,
        "run_id": run_id,
        "utc_time_created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f"),
        "flavors": {"onnx": {"data": ONNX_FILE, "onnx_version": onnx.__version__,
                             "providers": ["CPUExecutionProvider"], "code": None}},
        "signature": to_mlflow_signature(meta.signature),
        "metadata": {METADATA_KEY: {
            "name": meta.name, "version": meta.version,
            "artifacts": [a.model_dump(mode="json") for a in meta.artifacts],
            "extra_files": extra,
            "signature": meta.signature.model_dump(mode="json"),
            "architecture": meta.architecture,
            "architecture_config": meta.architecture_config,
        }},
    }
    (model_dir / MLMODEL_FILE).write_text(yaml.safe_dump(mlmodel, sort_keys=False))
    return files


def _run_params(version: ModelVersion) -> dict[str, str]:
    meta = version.metadata
    params = {"model": meta.name, "version": meta.version,
              "artifacts": ",".join(f"{a.format}-{a.precision}" for a in meta.artifacts)}
    if meta.architecture:
        params["architecture"] = meta.architecture
        params["architecture_config"] = json.dumps(meta.architecture_config, sort_keys=True)[:6000]
    return params


def _run_metrics(version: ModelVersion) -> dict[str, float]:
    """The version's metrics, plus ``benchmark.<variant>.<figure>`` and ``validation.<variant>.<error>``."""
    meta = version.metadata
    metrics = dict(meta.metrics)
    for variant, figures in meta.benchmarks.items():
        for key, value in (figures or {}).items():
            metrics[f"benchmark.{variant}.{key}"] = value
    variants = (meta.validation.details.get("variants") if meta.validation else None) or {}
    for variant, report in variants.items():
        for key in ("max_abs_error", "mean_abs_error", "top1_agreement"):
            metrics[f"validation.{variant}.{key}"] = (report or {}).get(key)
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
