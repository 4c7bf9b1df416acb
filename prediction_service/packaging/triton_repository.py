"""Entries of a Triton model repository: ``<repository>/<entry>/config.pbtxt`` + ``<entry>/<version>/model.*``.

An entry is assembled under a temporary name and renamed into place, so Triton never loads a
half-written one. Entry names come from registry names (already restricted to ``[a-z0-9._-]``) and
are sanitized again here because they become directory names.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..registry import ModelKey
from ..registry.fsutil import assembled_dir
from .triton_config import PYTHON_MODEL_FILE, WARMUP_DIR, TritonPlatform

CONFIG_FILE = "config.pbtxt"
PYTHON_MODEL_TEMPLATE = Path(__file__).with_name("triton_python_model.py")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def entry_name(key: ModelKey) -> str:
    """``lstm-price`` version ``1.0.0`` -> ``lstm-price__1.0.0``."""
    name = f"{_UNSAFE.sub('_', key.name)}__{_UNSAFE.sub('_', key.version)}"
    if name.startswith("."):
        name = "_" + name[1:]
    return name


def write_entry(
    repository: Path,
    name: str,
    version_dir: str,
    artifact: Path,
    config_text: str,
    platform: TritonPlatform,
    warmup_files: dict[str, bytes] | None = None,
) -> Path:
    """(Re)write the entry ``name``: config, the artifact under Triton's expected file name, model.py if
    needed, and the data files the config's model_warmup names (``warmup/``)."""
    with assembled_dir(repository / name, replace=True, durable=False) as staging:
        (staging / CONFIG_FILE).write_text(config_text)
        version_path = staging / version_dir
        version_path.mkdir()
        _link_or_copy(artifact, version_path / platform.model_file)
        if platform is TritonPlatform.PYTHON_ONNX:
            shutil.copyfile(PYTHON_MODEL_TEMPLATE, version_path / PYTHON_MODEL_FILE)
        if warmup_files:
            (staging / WARMUP_DIR).mkdir()
            for file_name, data in warmup_files.items():
                (staging / WARMUP_DIR / file_name).write_bytes(data)
    return repository / name


def write_generated_entry(repository: Path, name: str, version_dir: str, config_text: str,
                          version_files: dict[str, bytes]) -> Path:
    """(Re)write an entry with no registry artifact: an ensemble (an empty version dir) or a step the
    project generates (its shipped model.py), assembled and renamed into place like ``write_entry``."""
    with assembled_dir(repository / name, replace=True, durable=False) as staging:
        (staging / CONFIG_FILE).write_text(config_text)
        (staging / version_dir).mkdir()
        for file_name, data in version_files.items():
            (staging / version_dir / file_name).write_bytes(data)
    return repository / name


def remove_entry(repository: Path, name: str) -> None:
    target = repository / name
    if target.parent == repository and target.is_dir():
        shutil.rmtree(target)


def _link_or_copy(source: Path, dest: Path) -> None:
    # A hard link costs nothing and registry artifacts are never modified in place; copy across filesystems.
    try:
        dest.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, dest)
