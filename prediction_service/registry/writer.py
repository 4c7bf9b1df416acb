"""Minimal write path: register a version from artifact files, move a stage link.

A version directory is assembled under a temporary name and renamed into place, so it appears
whole or not at all. The registry issue builds lifecycle, locking and events on top of this.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import DEFAULT_PRECISION, ArtifactFormat, Precision
from ..errors import InvalidInput
from .fsutil import assembled_dir, atomic_symlink, atomic_write_bytes, sha256_file
from .layout import METADATA_FILE, RegistryLayout, validate_file_name, validate_stage
from .model_version import ArtifactInfo, ModelVersion, VersionMetadata


@dataclass(frozen=True)
class ArtifactSource:
    """A file to copy into a version: where it is now and what it is."""

    path: Path
    format: ArtifactFormat
    precision: Precision = DEFAULT_PRECISION
    file_name: str | None = None
    """Name inside the version dir; defaults to the source's name."""


def register_version(
    root: Path,
    metadata: VersionMetadata,
    artifacts: list[ArtifactSource],
    extra_files: list[Path] = (),
    before_publish: Callable[[ModelVersion], None] | None = None,
) -> ModelVersion:
    """Copy artifacts (and extra files such as a tokenizer vocab) into ``<root>/<name>/v<version>``.

    ``metadata.artifacts`` is replaced by what was copied, with sha256 and size of each file.
    ``before_publish`` runs once the version is assembled, before it is renamed into place (the event log
    write): when it raises, the assembled directory is removed and the version never appears.
    """
    final_dir = RegistryLayout(root).new_version_dir(metadata.name, metadata.version)
    if not artifacts:
        raise InvalidInput("a version needs at least one artifact")
    with assembled_dir(final_dir) as staging:
        infos = []
        for source in artifacts:
            name = source.file_name or source.path.name
            dest = staging / name
            shutil.copyfile(source.path, dest)
            infos.append(ArtifactInfo(file=name, format=source.format, precision=source.precision,
                                      sha256=sha256_file(dest), size_bytes=dest.stat().st_size))
        for extra in extra_files:
            shutil.copyfile(extra, staging / Path(extra).name)
        final_meta = metadata.model_copy(update={"artifacts": infos})
        write_metadata(staging / METADATA_FILE, final_meta)
        created = ModelVersion(path=final_dir, metadata=final_meta)
        if before_publish is not None:
            before_publish(created)
    return created


def register_document_version(root: Path, name: str, version: str, file_name: str, document: bytes,
                              before_publish: Callable[[], None] | None = None) -> Path:
    """A version made of one document and no artifact (an ensemble: ensemble/store.py), assembled like
    ``register_version`` (temp dir, fsync, ``before_publish``, rename). ``file_name`` is never metadata.json,
    so model readers and the model manager's preload do not take the version for a model."""
    final_dir = RegistryLayout(root).new_version_dir(name, version)
    validate_file_name(file_name)  # refuses metadata.json (reserved) and anything with a separator
    with assembled_dir(final_dir) as staging:
        atomic_write_bytes(staging / file_name, document)
        if before_publish is not None:
            before_publish()
    return final_dir


def write_metadata(path: Path, metadata: VersionMetadata) -> None:
    """Write metadata.json atomically (temp + fsync + replace): the one serialization every writer uses."""
    atomic_write_bytes(path, metadata.model_dump_json(indent=2).encode())


def set_stage_link(root: Path, name: str, stage: str, version: str) -> None:
    layout = RegistryLayout(root)
    validate_stage(stage)
    if not (layout.version_dir(name, version) / METADATA_FILE).is_file():
        raise InvalidInput(f"{name} has no version {version}")
    atomic_symlink(f"v{version}", layout.stage_link(name, stage))
