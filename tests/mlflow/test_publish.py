"""`package --mlflow` round trip against a real MLflow server: what the package command logged (a run and a
registered model version) is what `mlflow sync` brings back: same files (sha256 equal), same signature."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prediction_service.mlflow_bridge import MlflowSync
from prediction_service.registry import ModelRegistry
from prediction_service.settings import MlflowSettings

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "tests" / "packaging" / "models" / "outlier_model.py"
"""fp32 and fp16 pass validation; int8 does not (rejected, so not logged either)."""
MODEL = "outlier-packaged"


def test_package_mlflow_round_trip(mlflow_server, tmp_path):
    store = tmp_path / "packaged"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_")}
    run = subprocess.run(
        [sys.executable, "-m", "prediction_service", "package", str(SOURCE), "--name", MODEL, "--version", "1.0.0",
         "--fp16", "--int8", "--store", str(store), "--validation-rows", "16", "--benchmark-runs", "3",
         "--mlflow", "--mlflow-tracking-uri", mlflow_server.uri, "--mlflow-experiment", "packaging"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"registered model {MODEL} version 1" in run.stdout
    packaged = ModelRegistry(store).get(MODEL, "1.0.0")
    files = {(a.format, a.precision): a for a in packaged.metadata.artifacts}
    assert set(files) == {("onnx", "fp32"), ("onnx", "fp16"), ("torchscript", "fp32")}

    # the run: benchmark figures and validation errors as metrics, the reports as artifacts
    client = MlflowClient(mlflow_server.uri)
    version = client.get_model_version(MODEL, "1")
    logged_run = client.get_run(version.run_id)
    assert client.get_experiment(logged_run.info.experiment_id).name == "packaging"
    assert logged_run.info.status == "FINISHED"
    assert logged_run.data.metrics["benchmark.onnx-fp32.latency_ms_p50"] > 0
    assert "validation.onnx-fp16.max_abs_error" in logged_run.data.metrics
    assert logged_run.data.params["artifacts"] == "onnx-fp32,torchscript-fp32,onnx-fp16"
    logged = {info.path for info in client.list_artifacts(version.run_id)}
    assert {"validation.json", "benchmarks.json", "metadata.json", "model"} <= logged
    report = json.loads(Path(client.download_artifacts(version.run_id, "validation.json", str(tmp_path))).read_text())
    assert report["kind"] == "numeric_parity" and [r["variant"] for r in report["details"]["rejected"]] == ["onnx-int8"]

    # sync it back into another registry: every file byte for byte, the same strict signature
    mirror = ModelRegistry(tmp_path / "mirror")
    sync = MlflowSync(mirror, MlflowSettings(tracking_uri=mlflow_server.uri, model_names=MODEL), actor="test").sync()
    assert [a.action for a in sync.actions] == ["mirrored"], sync.text()
    back = mirror.get(MODEL, "mlflow-1")
    assert {(a.format, a.precision): (a.file, a.sha256) for a in back.metadata.artifacts} == \
        {key: (a.file, a.sha256) for key, a in files.items()}
    assert back.signature == packaged.signature
    assert back.metadata.tags["mlflow.flavor"] == "prediction_service"
    assert back.metadata.metrics["benchmark.onnx-fp32.latency_ms_p50"] == \
        pytest.approx(logged_run.data.metrics["benchmark.onnx-fp32.latency_ms_p50"])

    # the sync's gate applies to it like to any version: the alias promotes it
    client.set_registered_model_alias(MODEL, "champion", "1")
    sync = MlflowSync(mirror, MlflowSettings(tracking_uri=mlflow_server.uri, model_names=MODEL), actor="test").sync()
    assert [(a.action, a.stage) for a in sync.actions] == [("unchanged", None), ("promoted", "production")]
