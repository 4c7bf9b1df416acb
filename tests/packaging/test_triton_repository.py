"""Triton repository entries: names and on-disk layout (no server needed)."""

from __future__ import annotations

from pathlib import Path

from prediction_service.packaging.triton_config import TritonPlatform
from prediction_service.packaging.triton_repository import entry_name, remove_entry, write_entry
from prediction_service.registry import ModelKey


def test_entry_name_joins_name_and_version() -> None:
    assert entry_name(ModelKey("lstm-price", "1.0.0")) == "lstm-price__1.0.0"
    assert entry_name(ModelKey("a/b", "1 0")) == "a_b__1_0"


def test_python_entry_layout_and_rewrite(tmp_path: Path) -> None:
    artifact = tmp_path / "source.onnx"
    artifact.write_bytes(b"onnx bytes")
    repo = tmp_path / "repo"

    write_entry(repo, "m__1", "1", artifact, "config one", TritonPlatform.PYTHON_ONNX)
    entry = write_entry(repo, "m__1", "1", artifact, "config two", TritonPlatform.PYTHON_ONNX)

    assert (entry / "config.pbtxt").read_text() == "config two"
    assert (entry / "1" / "model.onnx").read_bytes() == b"onnx bytes"
    assert "class TritonPythonModel" in (entry / "1" / "model.py").read_text()
    assert sorted(p.name for p in repo.iterdir()) == ["m__1"]  # no staging leftovers

    remove_entry(repo, "m__1")
    assert list(repo.iterdir()) == []


def test_native_entries_carry_no_python_model(tmp_path: Path) -> None:
    artifact = tmp_path / "model.pt"
    artifact.write_bytes(b"torchscript")

    entry = write_entry(tmp_path / "repo", "m__1", "3", artifact, "cfg", TritonPlatform.LIBTORCH)

    assert sorted(p.name for p in (entry / "3").iterdir()) == ["model.pt"]
