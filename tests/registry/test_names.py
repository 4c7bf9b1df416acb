"""Names, versions and file names that could leave the store are refused; nothing is written outside it."""

from __future__ import annotations

import os

import pytest

from prediction_service.errors import InvalidName
from prediction_service.registry import ArtifactSource, ModelRegistry

from .conftest import onnx_artifact

BAD_NAMES = ["..", "../evil", "a/b", "/etc", "/abs/path", "a\x00b", "a\nb", "a\tb", "model\x1b[31m", "Upper",
             ".hidden", "", "a" * 200, "a..b"]


def _snapshot_outside(tmp_path):
    return sorted(p for p in tmp_path.rglob("*") if "store" not in p.relative_to(tmp_path).parts)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_model_names_refused_everywhere(registry, onnx_models, bad, tmp_path):
    before = _snapshot_outside(tmp_path)
    with pytest.raises(InvalidName) as refused:
        registry.register(bad, "1.0.0", onnx_artifact(onnx_models["a"]))
    assert refused.value.status == 400
    for call in (lambda: registry.get(bad, "1.0.0"), lambda: registry.promote(bad, "1.0.0"),
                 lambda: registry.delete(bad, "1.0.0"), lambda: registry.versions(bad),
                 lambda: registry.model_events(bad)):
        with pytest.raises(InvalidName):
            call()
    assert _snapshot_outside(tmp_path) == before


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_versions_refused(registry, onnx_models, bad):
    with pytest.raises(InvalidName):
        registry.register("price", bad, onnx_artifact(onnx_models["a"]))
    with pytest.raises(InvalidName):
        registry.promote("price", bad)


@pytest.mark.parametrize("bad_file", ["../escape.onnx", "sub/model.onnx", "/tmp/x.onnx", "metadata.json", ".lock",
                                      "a\nb.onnx", ".."])
def test_bad_artifact_file_names_refused(registry, onnx_models, bad_file):
    with pytest.raises(InvalidName):
        registry.register("price", "1.0.0", [ArtifactSource(path=onnx_models["a"], format="onnx", file_name=bad_file)])
    assert not (registry.root.parent / "escape.onnx").exists()


def test_unknown_stage_refused(two_versions):
    with pytest.raises(InvalidName):
        two_versions.promote("price", "1.0.0", "../production")


def test_model_dir_symlinked_out_of_the_store_is_refused(registry, onnx_models, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, registry.root / "evil")
    with pytest.raises(InvalidName):
        registry.register("evil", "1.0.0", onnx_artifact(onnx_models["a"]))
    with pytest.raises(InvalidName):
        registry.get("evil", "1.0.0")
    assert list(outside.iterdir()) == []
    assert "evil" not in registry.model_names()


def test_version_dir_symlinked_out_of_the_store_is_refused(two_versions, tmp_path):
    outside = tmp_path / "outside_version"
    outside.mkdir()
    os.symlink(outside, two_versions.layout.model_dir("price") / "v6.6.6")
    with pytest.raises(InvalidName):
        two_versions.get("price", "6.6.6")
    with pytest.raises(InvalidName):
        two_versions.update_metrics("price", "6.6.6", {"x": 1.0})
    assert list(outside.iterdir()) == []


def test_stage_link_pointing_outside_is_refused_and_does_not_block_other_models(two_versions, onnx_models):
    reg = two_versions
    reg.register("other", "1.0.0", onnx_artifact(onnx_models["a"]))
    os.symlink("../../etc", reg.layout.model_dir("price") / "production")
    with pytest.raises(InvalidName):
        reg.resolve("price")
    with pytest.raises(InvalidName):
        reg.promote("price", "1.0.0")
    reopened = ModelRegistry(reg.root)  # the tampered model is logged, the others reconcile
    reopened.promote("other", "1.0.0")
    assert reopened.stages("other")["production"] == "1.0.0"
