"""`mlflow sync` of what researchers log besides a one-file ONNX: TorchScript through the pytorch flavour, ONNX
with external weights and extra files (a tokenizer vocab); and the refusals that go with them (a pickled
PyTorch model is skipped, never unpickled; an external-data path that leaves the model dir is refused)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from prediction_service.mlflow_bridge import MlflowSync
from prediction_service.registry import ModelRegistry
from prediction_service.execution.runtimes import open_artifact
from prediction_service.settings import MlflowSettings
from tests.support.models import REGRESSOR_SIGNATURE, TinyRegressor, export

mlflow = pytest.importorskip("mlflow")
import mlflow.artifacts  # noqa: E402
import mlflow.onnx  # noqa: E402
import mlflow.pytorch  # noqa: E402
import onnx  # noqa: E402
from mlflow.models import ModelSignature as MlflowSignature  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.types import Schema, TensorSpec  # noqa: E402

TORCH = "ts-regressor"
EXTERNAL = "external-onnx"
SIGNATURE = MlflowSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 4), "x")]),
                            outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 1), "y")]))
X = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]], dtype=np.float32)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def logged(mlflow_server, tmp_path_factory):
    """ts-regressor v1: TorchScript (pytorch flavour); v2: a pickled nn.Module.
    external-onnx v1: ONNX with every weight in an external file + extra_files=[vocab.txt];
    v2: an ONNX whose external-data location is ../../outside.bin."""
    work = tmp_path_factory.mktemp("flavours")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        for module in (torch.jit.script(TinyRegressor(1.5)), TinyRegressor(1.5)):
            with mlflow.start_run():
                mlflow.pytorch.log_model(module, name="model", signature=SIGNATURE, registered_model_name=TORCH,
                                         serialization_format="pickle", pip_requirements=["torch"])
        onnx_path, _ = export(TinyRegressor(0.5), REGRESSOR_SIGNATURE, work / "onnx")
        vocab = work / "vocab.txt"
        vocab.write_text("[PAD]\n[UNK]\nbtc\nup\n")
        with mlflow.start_run():
            mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model", signature=SIGNATURE,
                                  registered_model_name=EXTERNAL, save_as_external_data=True, size_threshold=0,
                                  extra_files=[str(vocab)], pip_requirements=["onnx"])
        escape = work / "escape"
        escape.mkdir()
        onnx.save_model(onnx.load(str(onnx_path)), str(escape / "model.onnx"), save_as_external_data=True,
                        size_threshold=0, location="weights.bin")
        proto = onnx.load(str(escape / "model.onnx"), load_external_data=False)
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "../../outside.bin"
        onnx.save_model(proto, str(escape / "model.onnx"))
        (escape / "MLmodel").write_text("flavors:\n  onnx:\n    data: model.onnx\n")
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(escape), artifact_path="model")
        MlflowClient(mlflow_server.uri).create_model_version(EXTERNAL, f"runs:/{run.info.run_id}/model",
                                                             run_id=run.info.run_id)
        yield {"onnx": onnx_path, "vocab": vocab}
    finally:
        mlflow.set_tracking_uri(previous)


def _action(report, model, mlflow_version, stage=None):
    found = [a for a in report.actions if a.model == model and a.mlflow_version == mlflow_version and a.stage == stage]
    assert len(found) == 1, report.text()
    return found[0]


def test_torchscript_external_weights_and_extra_files(mlflow_server, logged, tmp_path):
    client = MlflowClient(mlflow_server.uri)
    client.set_registered_model_alias(TORCH, "production", "1")
    registry = ModelRegistry(tmp_path / "store")
    report = MlflowSync(registry, MlflowSettings(tracking_uri=mlflow_server.uri, model_names=f"{TORCH},{EXTERNAL}"),
                        actor="test").sync()

    # TorchScript: mirrored as model.pt, smoke-run, promotable; serves what the module computes
    assert _action(report, TORCH, "1").action == "mirrored", report.text()
    ts = registry.get(TORCH, "mlflow-1")
    assert [(a.file, a.format) for a in ts.metadata.artifacts] == [("model.pt", "torchscript")]
    assert ts.metadata.validation.passed and ts.metadata.validation.details["runtime"] == "torchscript"
    assert ts.metadata.tags["mlflow.flavor"] == "pytorch"
    as_logged = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{client.get_model_version_download_uri(TORCH, '1')}/data/model.pth",
        dst_path=str(tmp_path / "as-logged"), tracking_uri=mlflow_server.uri)
    assert ts.metadata.artifacts[0].sha256 == _sha256(Path(as_logged)) == _sha256(ts.path / "model.pt")
    served = open_artifact(ts.artifact_path(ts.metadata.artifacts[0]), "torchscript", ts.signature, 1).run({"x": X})
    np.testing.assert_allclose(served["y"], TinyRegressor(1.5)(torch.from_numpy(X)).detach().numpy(), rtol=1e-6)
    assert _action(report, TORCH, "1", "production").action == "promoted"
    assert registry.stages(TORCH)["production"] == "mlflow-1"

    # a pickled nn.Module: skipped with the reason, not unpickled, nothing written
    pickled = _action(report, TORCH, "2")
    assert pickled.action == "skipped" and "pickled PyTorch model" in pickled.reason
    assert not (registry.root / TORCH / "vmlflow-2").exists()

    # ONNX with external weights + a vocab: the weights file and the vocab come along; it serves
    assert _action(report, EXTERNAL, "1").action == "mirrored", report.text()
    ext = registry.get(EXTERNAL, "mlflow-1")
    graph = onnx.load(str(ext.path / "model.onnx"), load_external_data=False)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations and all((ext.path / name).is_file() for name in locations)
    assert (ext.path / "vocab.txt").read_bytes() == logged["vocab"].read_bytes()
    served = open_artifact(ext.path / "model.onnx", "onnx", ext.signature, 1).run({"x": X})
    np.testing.assert_allclose(served["y"], TinyRegressor(0.5)(torch.from_numpy(X)).detach().numpy(), rtol=1e-6)

    # external data that would be read from outside the model dir: refused, nothing written anywhere
    escape = _action(report, EXTERNAL, "2")
    assert escape.action == "refused" and "external data location" in escape.reason
    assert not (registry.root / EXTERNAL / "vmlflow-2").exists()
    assert not list(tmp_path.rglob("outside.bin"))

    # a second sync: nothing downloaded again, nothing changed
    again = MlflowSync(registry, MlflowSettings(tracking_uri=mlflow_server.uri, model_names=f"{TORCH},{EXTERNAL}"),
                       actor="test").sync()
    assert not again.changed, again.text()
