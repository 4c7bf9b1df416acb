"""`mlflow sync` against a real MLflow tracking server: models logged and registered through the MLflow client,
mirrored into a temp filesystem registry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prediction_service.mlflow_bridge import MlflowSync
from prediction_service.registry import ModelRegistry
from prediction_service.execution.runtimes import OnnxRuntime
from prediction_service.settings import MlflowSettings
from tests.support.models import REGRESSOR_SIGNATURE, TinyRegressor, export

mlflow = pytest.importorskip("mlflow")
import mlflow.onnx  # noqa: E402
import onnx  # noqa: E402
from mlflow.models import ModelSignature as MlflowSignature  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.types import ColSpec, Schema, TensorSpec  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny-regressor"
PLAIN = "plain-onnx"
CLEAN = "clean-onnx"

TENSOR_SIGNATURE = MlflowSignature(
    inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 4), "x")]),
    outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 1), "y")]),
)
COLUMN_SIGNATURE = MlflowSignature(inputs=Schema([ColSpec("double", "open"), ColSpec("double", "close")]),
                                   outputs=Schema([ColSpec("double", "y")]))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _nan_regressor() -> TinyRegressor:
    module = TinyRegressor(1.0)
    with torch.no_grad():
        module.linear.bias.fill_(float("nan"))  # every output NaN: the registry's smoke run fails it
    return module


@pytest.fixture(scope="module")
def mlflow_models(mlflow_server, tmp_path_factory):
    """Logged through the MLflow client as researchers would:
    tiny-regressor v1, v2: ONNX flavour with a tensor signature (v1 with run metrics and tags);
    v3: column-based signature; v4: NaN outputs (fails validation);
    plain-onnx v1: a bare model.onnx artifact (no MLmodel); v2: no ONNX at all; v3: an MLmodel whose ONNX path
    leaves the model dir; clean-onnx v1: the bare model.onnx again (a model with nothing to refuse)."""
    work = tmp_path_factory.mktemp("mlflow-models")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        client = MlflowClient(mlflow_server.uri)
        onnx_files = {}
        for number, (module, signature) in enumerate(
                [(TinyRegressor(1.0), TENSOR_SIGNATURE), (TinyRegressor(2.0), TENSOR_SIGNATURE),
                 (TinyRegressor(3.0), COLUMN_SIGNATURE), (_nan_regressor(), TENSOR_SIGNATURE)], start=1):
            onnx_path, _ = export(module, REGRESSOR_SIGNATURE, work / f"v{number}")
            onnx_files[number] = onnx_path
            with mlflow.start_run() as run:
                mlflow.log_metric("rmse", 0.1 * number)
                mlflow.log_metric("sharpe", 1.5)
                mlflow.set_tag("team", "quant")
                info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model", signature=signature,
                                             registered_model_name=MODEL, save_as_external_data=False)
            assert str(info.registered_model_version) == str(number)
            onnx_files[f"run{number}"] = run.info.run_id
        client.set_model_version_tag(MODEL, "1", "dataset", "btc-1m-2026q3")
        client.set_registered_model_alias(MODEL, "champion", "1")
        client.set_registered_model_alias(MODEL, "challenger", "2")

        plain_onnx, _ = export(TinyRegressor(0.5), REGRESSOR_SIGNATURE, work / "plain")
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(plain_onnx), artifact_path="onnx")
            notes = work / "notes.txt"
            notes.write_text("no model here")
            mlflow.log_artifact(str(notes), artifact_path="docs")
        client.create_registered_model(PLAIN)
        client.create_model_version(PLAIN, f"runs:/{run.info.run_id}/onnx", run_id=run.info.run_id)
        client.create_model_version(PLAIN, f"runs:/{run.info.run_id}/docs", run_id=run.info.run_id)
        client.create_registered_model(CLEAN)
        client.create_model_version(CLEAN, f"runs:/{run.info.run_id}/onnx", run_id=run.info.run_id)

        # an MLmodel whose onnx flavour points outside the model dir
        escape = work / "escape"
        escape.mkdir()
        (escape / "model.onnx").write_bytes(plain_onnx.read_bytes())
        (escape / "MLmodel").write_text("flavors:\n  onnx:\n    data: ../../../outside.onnx\n")
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(escape), artifact_path="escape")
        client.create_model_version(PLAIN, f"runs:/{run.info.run_id}/escape", run_id=run.info.run_id)
        onnx_files["plain"] = plain_onnx
        yield client, onnx_files
    finally:
        mlflow.set_tracking_uri(previous)


def _sync(mlflow_server, store: Path, **settings) -> tuple[ModelRegistry, object]:
    registry = ModelRegistry(store)
    config = MlflowSettings(tracking_uri=mlflow_server.uri, model_names=f"{MODEL},{PLAIN}", **settings)
    return registry, MlflowSync(registry, config, actor="test").sync()


def _action(report, model, mlflow_version, stage=None):
    found = [a for a in report.actions if a.model == model and a.mlflow_version == mlflow_version and a.stage == stage]
    assert len(found) == 1, report.text()
    return found[0]


def test_sync_mirrors_converts_records_and_promotes(mlflow_server, mlflow_models, tmp_path):
    client, files = mlflow_models
    registry, report = _sync(mlflow_server, tmp_path / "store")

    # v1 and v2: mirrored byte for byte, signature converted, run and tags recorded
    assert _action(report, MODEL, "1").action == "mirrored"
    v1 = registry.get(MODEL, "mlflow-1")
    artifact = v1.metadata.artifacts[0]
    assert (artifact.file, artifact.format) == ("model.onnx", "onnx")
    assert artifact.sha256 == _sha256(files[1]) == _sha256(v1.artifact_path(artifact))
    assert [(s.name, s.dtype, s.shape) for s in v1.signature.inputs] == [("x", "float32", (-1, 4))]
    assert [(s.name, s.dtype, s.shape) for s in v1.signature.outputs] == [("y", "float32", (-1, 1))]
    assert v1.metadata.metrics == {"rmse": pytest.approx(0.1), "sharpe": 1.5}
    tags = v1.metadata.tags
    assert tags["mlflow.run_id"] == files["run1"]
    assert tags["mlflow.registered_model"] == MODEL and tags["mlflow.version"] == "1"
    assert tags["mlflow.flavor"] == "onnx" and tags["mlflow.source"].startswith("models:/")
    assert tags["team"] == "quant" and tags["dataset"] == "btc-1m-2026q3"
    assert not any(key.startswith("mlflow.log-model") or key == "mlflow.user" for key in tags)  # system tags stay out
    assert v1.metadata.validation.passed and v1.metadata.validation.kind == "smoke"
    x = np.ones((2, 4), dtype=np.float32)
    served = OnnxRuntime(v1.artifact_path(artifact), v1.signature, threads=1).run({"x": x})["y"]
    np.testing.assert_allclose(served, TinyRegressor(1.0)(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)
    assert _action(report, MODEL, "2").action == "mirrored"

    # v3: a column-based signature is refused with the reason; nothing written
    refused = _action(report, MODEL, "3")
    assert refused.action == "refused"
    assert "column-based" in refused.reason and "tensor-based signature" in refused.reason
    assert not (registry.root / MODEL / "vmlflow-3").exists()

    # v4: NaN outputs fail the smoke run: refused, nothing written
    failed = _action(report, MODEL, "4")
    assert failed.action == "refused" and "failed validation" in failed.reason and "NaN" in failed.reason
    assert not (registry.root / MODEL / "vmlflow-4").exists()

    # a bare model.onnx artifact: signature from the graph; a version without ONNX: skipped with the reason
    plain = _action(report, PLAIN, "1")
    assert plain.action == "mirrored" and "ONNX graph" in plain.reason
    plain_version = registry.get(PLAIN, "mlflow-1")
    assert plain_version.metadata.artifacts[0].sha256 == _sha256(files["plain"])
    assert plain_version.metadata.tags["mlflow.flavor"] == "plain"
    skipped = _action(report, PLAIN, "2")
    assert skipped.action == "skipped" and "no ONNX or TorchScript artifact" in skipped.reason
    escape = _action(report, PLAIN, "3")
    assert escape.action == "refused" and "not a plain file name" in escape.reason
    assert not (registry.root / PLAIN / "vmlflow-3").exists()
    assert not list(registry.root.parent.rglob("outside.onnx"))

    # aliases: champion -> production, challenger -> staging, through the registry (events recorded)
    assert _action(report, MODEL, "1", "production").action == "promoted"
    assert _action(report, MODEL, "2", "staging").action == "promoted"
    assert registry.stages(MODEL) == {"production": "mlflow-1", "staging": "mlflow-2"}
    assert os.readlink(registry.root / MODEL / "production") == "vmlflow-1"
    events = [(e.event, e.version, e.to_stage, e.actor) for e in registry.model_events(MODEL)]
    assert ("stage_change", "mlflow-1", "production", "test") in events
    assert report.changed and len(report.failures) == 3  # v3, v4, plain v3

    # a second sync changes nothing and says so
    before = {p: p.stat().st_mtime_ns for p in (registry.root / MODEL).rglob("*") if p.is_file()}
    n_events = len(registry.model_events(MODEL))
    _, again = _sync(mlflow_server, tmp_path / "store")
    assert not again.changed and "nothing (already in sync)" in again.text()
    assert {a.action for a in again.actions} <= {"unchanged", "in_stage", "skipped", "refused"}
    assert _action(again, MODEL, "1").reason == "already mirrored"
    assert {p: p.stat().st_mtime_ns for p in (registry.root / MODEL).rglob("*") if p.is_file()
            if p.name != ".lock"} == {p: t for p, t in before.items() if p.name != ".lock"}
    assert len(registry.model_events(MODEL)) == n_events


def test_alias_moves_promote_roll_back_and_stop_at_failed_validation(mlflow_server, mlflow_models, tmp_path):
    client, _ = mlflow_models
    store = tmp_path / "store"
    try:
        registry, _ = _sync(mlflow_server, store)
        assert registry.stages(MODEL)["production"] == "mlflow-1"

        # the alias that means production wins over the champion alias; the displaced version is archived
        client.set_registered_model_alias(MODEL, "production", "2")
        registry, report = _sync(mlflow_server, store)
        assert _action(report, MODEL, "2", "production").action == "promoted"
        assert registry.stages(MODEL) == {"production": "mlflow-2", "staging": None}
        assert registry.get(MODEL, "mlflow-1").metadata.status == "archived"

        # moving it back rolls back (archived -> production)
        client.set_registered_model_alias(MODEL, "production", "1")
        registry, report = _sync(mlflow_server, store)
        assert _action(report, MODEL, "1", "production").action == "promoted"
        assert registry.stages(MODEL)["production"] == "mlflow-1"

        # onto the version that failed validation: not promoted, the sync says why, production unchanged
        client.set_registered_model_alias(MODEL, "production", "4")
        registry, report = _sync(mlflow_server, store)
        refused = _action(report, MODEL, "4", "production")
        assert refused.action == "not_promoted"
        assert "alias 'production'" in refused.reason and "failed validation" in refused.reason
        assert registry.stages(MODEL)["production"] == "mlflow-1"
    finally:
        client.delete_registered_model_alias(MODEL, "production")


def test_cli_sync_json_and_exit_status(mlflow_server, mlflow_models, tmp_path):
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": mlflow_server.uri,
           "MLFLOW_MODEL_NAMES": CLEAN, "MODEL_STORE": str(store)}
    run = subprocess.run([sys.executable, "-m", "prediction_service", "mlflow", "sync", "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["changed"] and out["failures"] == 0
    assert [(a["mlflow_version"], a["action"]) for a in out["actions"]] == [("1", "mirrored")]
    assert ModelRegistry(store).get(CLEAN, "mlflow-1").metadata.tags["mlflow.version"] == "1"

    # a model with refused versions: exit status 2, the reasons on stdout
    run = subprocess.run([sys.executable, "-m", "prediction_service", "mlflow", "sync", MODEL],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "refused" in run.stdout and "column-based" in run.stdout

    # no tracking URI: a domain error, exit status 1
    env.pop("MLFLOW_TRACKING_URI")
    run = subprocess.run([sys.executable, "-m", "prediction_service", "mlflow", "sync"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "MLFLOW_TRACKING_URI" in run.stderr


def test_an_alias_onto_another_serving_contract_is_not_promoted_until_an_admin_allows_it(mlflow_server, mlflow_models,
                                                                                         tmp_path):
    """The follower promotes through ModelRegistry.promote like everyone else: production here takes ``features``,
    MLflow's versions take ``x``, so moving production to one is refused (contract_changed) and the stage stays."""
    from prediction_service.registry.writer import ArtifactSource
    from prediction_service.signature import ModelSignature, TensorSpec

    store = tmp_path / "store"
    local = ModelRegistry(store)
    signature = ModelSignature(inputs=[TensorSpec(name="features", dtype="float32", shape=(-1, 4))],
                               outputs=[TensorSpec(name="y", dtype="float32", shape=(-1, 1))])
    onnx_path, _ = export(TinyRegressor(1.0), signature, tmp_path / "local")
    local.register(MODEL, "0.9.0", [ArtifactSource(onnx_path, "onnx")], signature=signature)
    local.promote(MODEL, "0.9.0")

    registry, report = _sync(mlflow_server, store)
    refused = _action(report, MODEL, "1", "production")
    assert refused.action == "not_promoted" and "contract" in refused.reason
    assert "inputs.features: float32[-1, 4] -> none" in refused.reason and "inputs.x: none ->" in refused.reason
    assert registry.stages(MODEL)["production"] == "0.9.0"

    registry.promote(MODEL, "mlflow-1", allow_contract_change=True, actor="admin")  # what an admin does instead
    registry, report = _sync(mlflow_server, store)
    assert _action(report, MODEL, "1", "production").action == "in_stage"
    assert [e.actor for e in registry.model_events(MODEL) if e.event == "contract_change"] == ["admin"]
