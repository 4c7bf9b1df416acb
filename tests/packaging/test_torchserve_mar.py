"""The .mar builder: contents, formats, and refusal of versions it cannot serve."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from prediction_service.errors import ModelLoadError
from prediction_service.packaging.torchserve_mar import build_mar, served_model_name
from prediction_service.settings import WarmupSettings
from tests.support.torchserve_models import build_scripted_model, register_tiny

pytestmark = pytest.mark.torchserve


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return build_scripted_model(tmp_path_factory.mktemp("artifact"))[1]


def test_mar_holds_artifact_handler_and_signature(tmp_path, artifact):
    version = register_tiny(tmp_path / "registry", artifact)
    mar = build_mar(version, tmp_path / "store")
    assert mar == tmp_path / "store" / f"{served_model_name(version.key)}.mar"
    assert served_model_name(version.key) == "tiny-lstm-V1.0.0"
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        assert {"model.pt", "torchserve_handler.py", "signature.json", "MAR-INF/MANIFEST.json"} <= names
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        signature = json.loads(archive.read("signature.json"))
        assert archive.read("model.pt") == (version.path / "model.pt").read_bytes()
    assert manifest["model"]["serializedFile"] == "model.pt"
    assert manifest["model"]["handler"] == "torchserve_handler.py"
    assert signature["artifact_format"] == "torchscript"
    assert [s["name"] for s in signature["inputs"]] == ["features"]
    assert signature["inputs"][0]["shape"] == [-1, 8, 4]
    assert [s["name"] for s in signature["outputs"]] == ["prediction", "hidden"]
    assert [p.name for p in (tmp_path / "store").iterdir()] == [mar.name]  # no build leftovers


def test_warmup_batches_travel_in_the_archive(tmp_path, artifact):
    version = register_tiny(tmp_path / "registry", artifact)
    mar = build_mar(version, tmp_path / "store", warmup=WarmupSettings(enabled=True, batch_sizes="1,8", iterations=2))
    with zipfile.ZipFile(mar) as archive:
        signature = json.loads(archive.read("signature.json"))
        batches = np.load(io.BytesIO(archive.read("warmup.npz")), allow_pickle=False)
        shapes = {key: batches[key].shape for key in batches.files}
    assert signature["warmup_iterations"] == 2
    assert shapes == {"b0__features": (1, 8, 4), "b1__features": (8, 8, 4)}
    cold = build_mar(version, tmp_path / "cold", warmup=WarmupSettings(enabled=False))
    with zipfile.ZipFile(cold) as archive:
        assert "warmup.npz" not in archive.namelist()
        assert json.loads(archive.read("signature.json"))["warmup_iterations"] == 0


def test_no_archive_format_writes_a_directory(tmp_path, artifact):
    version = register_tiny(tmp_path / "registry", artifact)
    target = build_mar(version, tmp_path / "store", archive_format="no-archive")
    assert target.is_dir()
    assert (target / "signature.json").is_file() and (target / "model.pt").is_file()


def test_refuses_version_without_servable_artifact(tmp_path, artifact):
    version = register_tiny(tmp_path / "registry", artifact, fmt="state_dict")
    with pytest.raises(ModelLoadError, match="no TorchScript or ONNX artifact"):
        build_mar(version, tmp_path / "store")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_refuses_artifact_that_does_not_match_its_sha256(tmp_path, artifact):
    version = register_tiny(tmp_path / "registry", artifact)
    (version.path / "model.pt").write_bytes(b"tampered")
    with pytest.raises(ModelLoadError, match="sha256"):
        build_mar(version, tmp_path / "store")
