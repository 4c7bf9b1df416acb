"""Which files of an MLflow model version are taken (artifacts.plan_mirror), without a server: MLmodel files
and listings as MLflow writes them, and the ones that try to lead elsewhere."""

from __future__ import annotations

import zipfile

import pytest
import torch

from prediction_service.errors import InvalidInput
from prediction_service.mlflow_bridge.artifacts import (NoServableArtifact, is_torchscript_archive, plan_mirror,
                                                        safe_path)
from tests.support.models import TinyRegressor


def _plan(mlmodel, files):
    plan = plan_mirror(mlmodel, set(files))
    return plan.flavor, [(f.path, f.file_name, f.format, f.precision) for f in plan.files]


def test_flavours_map_to_files():
    onnx = {"flavors": {"onnx": {"data": "model.onnx", "extra_files": [{"path": "extra_files/vocab.txt"}]}}}
    assert _plan(onnx, ["MLmodel", "model.onnx", "extra_files/vocab.txt"]) == (
        "onnx", [("model.onnx", "model.onnx", "onnx", "fp32"), ("extra_files/vocab.txt", "vocab.txt", None, "fp32")])
    torch_flavour = {"flavors": {"pytorch": {"model_data": "data"}, "python_function": {}}}
    assert _plan(torch_flavour, ["MLmodel", "data/model.pth", "data/pickle_module_info.txt"]) == (
        "pytorch", [("data/model.pth", "model.pt", "torchscript", "fp32")])
    assert _plan({}, ["model.onnx", "notes.txt"]) == ("plain", [("model.onnx", "model.onnx", "onnx", "fp32")])
    published = {"flavors": {"onnx": {"data": "model.onnx"}}, "metadata": {"prediction_service": {
        "artifacts": [{"file": "model.onnx", "format": "onnx", "precision": "fp32"},
                      {"file": "model.fp16.onnx", "format": "onnx", "precision": "fp16"},
                      {"file": "model.pt", "format": "torchscript"}],
        "extra_files": ["vocab.txt"], "architecture": "lstm", "architecture_config": {"hidden": 8}}}}
    plan = plan_mirror(published, {"MLmodel", "model.onnx", "model.fp16.onnx", "model.pt", "vocab.txt"})
    assert plan.flavor == "prediction_service" and (plan.architecture, plan.architecture_config) == ("lstm",
                                                                                                      {"hidden": 8})
    assert [(f.file_name, f.format, f.precision) for f in plan.files] == [
        ("model.onnx", "onnx", "fp32"), ("model.fp16.onnx", "onnx", "fp16"), ("model.pt", "torchscript", "fp32"),
        ("vocab.txt", None, "fp32")]


@pytest.mark.parametrize("mlmodel, files, says", [
    ({"flavors": {"onnx": {"data": "../../x.onnx"}}}, ["model.onnx"], "not a plain file name"),
    ({"flavors": {"onnx": {"data": "/etc/passwd"}}}, ["model.onnx"], "not a plain file name"),
    ({"flavors": {"onnx": {"data": "a/b/c.onnx"}}}, ["a/b/c.onnx"], "not a plain file name"),
    ({"flavors": {"onnx": {"data": "model.onnx", "extra_files": [{"path": "extra_files/../../v.txt"}]}}},
     ["model.onnx"], "not a plain file name"),
    ({"flavors": {"onnx": {"data": "model.onnx"}}}, ["other.onnx"], "no such file"),
    ({"flavors": {"onnx": {}}, "metadata": {"prediction_service": {"artifacts": [
        {"file": "../model.pt", "format": "torchscript"}]}}}, ["model.onnx"], "not a plain file name"),
    ({"flavors": {"onnx": {}}, "metadata": {"prediction_service": {"artifacts": [
        {"file": "model.pkl", "format": "pickle"}]}}}, ["model.onnx", "model.pkl"], "format 'pickle'"),
    ({"flavors": {"onnx": {"data": "model.onnx", "extra_files": [{"path": "extra_files/model.onnx"}]}}},
     ["model.onnx", "extra_files/model.onnx"], "share a name"),
])
def test_paths_that_lead_elsewhere_are_refused(mlmodel, files, says):
    with pytest.raises(InvalidInput) as refused:
        plan_mirror(mlmodel, set(files))
    assert says in refused.value.message and not isinstance(refused.value, NoServableArtifact)


def test_nothing_servable_is_skipped_not_refused():
    for mlmodel, files in [({"flavors": {"sklearn": {}, "python_function": {}}}, ["MLmodel", "model.pkl"]),
                           ({"flavors": {"pytorch": {"model_data": "data"}}}, ["MLmodel", "data/model.pt2"])]:
        with pytest.raises(NoServableArtifact):
            plan_mirror(mlmodel, set(files))


def test_safe_path_allows_two_plain_levels():
    assert safe_path("extra_files/vocab.txt", "x") == "extra_files/vocab.txt"
    for bad in ("", "..", "a//b", "a/./b", None, 3):
        with pytest.raises(InvalidInput):
            safe_path(bad, "x")


def test_torchscript_is_told_from_a_pickle_by_its_table_of_contents(tmp_path):
    scripted, pickled, junk = tmp_path / "ts.pth", tmp_path / "pickled.pth", tmp_path / "junk.pth"
    torch.jit.save(torch.jit.script(TinyRegressor(1.0)), str(scripted))
    torch.save(TinyRegressor(1.0), pickled)
    with zipfile.ZipFile(junk, "w") as archive:
        archive.writestr("x/data.pkl", b"")
    junk_text = tmp_path / "text.pth"
    junk_text.write_text("not a zip")
    assert is_torchscript_archive(scripted)
    assert not is_torchscript_archive(pickled)
    assert not is_torchscript_archive(junk) and not is_torchscript_archive(junk_text)
