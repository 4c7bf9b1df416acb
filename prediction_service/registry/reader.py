"""The registry's read path for models: list models and versions, resolve name + stage/version.

The registry is what is on disk; the model manager (serving/model_manager.py) is what a worker loaded
from it. Reading, caching and resolving are the versioned-document reader's (documents.py), which reads
ensembles too; this adds what only models have: stages that may point at another kind's version, and
reload requests.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from ..errors import ModelNotFound
from .documents import CorruptMetadata, VersionedDocuments, file_stamp, version_sort_key
from .fsutil import atomic_write_bytes
from .layout import METADATA_FILE, RegistryLayout
from .model_version import ModelVersion, VersionMetadata

log = logging.getLogger(__name__)

__all__ = ["CorruptMetadata", "RELOAD_FILE", "RegistryReader", "file_stamp", "version_sort_key"]

RELOAD_FILE = ".reload-generation"
"""Per model: a counter that every worker polls; bumping it asks all of them to re-read the model."""


def _parse_version(version_dir: Path, raw: bytes) -> ModelVersion:
    return ModelVersion(path=version_dir, metadata=VersionMetadata.model_validate_json(raw))


class RegistryReader(VersionedDocuments[ModelVersion]):
    def __init__(self, root: Path):
        super().__init__(RegistryLayout(root), METADATA_FILE, "model", _parse_version)
        self._not_model_lock = threading.Lock()
        self._not_model_stages: dict[tuple[str, str], str] = {}
        """(name, stage) -> the target already logged as not a model version."""

    def model_names(self) -> list[str]:
        return self.names()

    def model_stage(self, name: str, stage: str) -> str | None:
        """The version ``stage`` points to when it is one of the model's versions, else None. A name that
        holds an ensemble too (written by hand; the registry refuses to) may have its stage on an ensemble
        version: that is no model version to load, and it is logged once per target instead of failing
        every readiness probe of every worker."""
        target = self.layout.read_stage(name, stage)
        if target is None or os.path.isfile(os.path.join(self.layout.root, name, f"v{target}", METADATA_FILE)):
            return target
        with self._not_model_lock:
            first = self._not_model_stages.get((name, stage)) != target
            self._not_model_stages[(name, stage)] = target
        if first:
            log.warning("registry: %s/%s points at v%s, which is not a model version (%s holds an ensemble "
                        "too?); the model's %s is not served: give the model or the ensemble another name",
                        name, stage, target, name, stage)
        return None

    # ---- reload requests: a signal between workers, not a registry change (no lock, no event) -------

    def request_reload(self, name: str) -> bytes:
        """Ask every worker to re-read ``name`` (ModelNotFound when it is not registered); the new generation."""
        model_dir = self.layout.model_dir(name)
        if name not in self.model_names():
            raise ModelNotFound(f"model {name!r} is not registered", {"model": name})
        generation = str(time.time_ns()).encode()
        atomic_write_bytes(model_dir / RELOAD_FILE, generation)
        return generation

    def reload_generation(self, name: str) -> bytes:
        """The latest reload request for ``name`` (b"" when there was none)."""
        try:
            return (self.layout.model_dir(name) / RELOAD_FILE).read_bytes()
        except FileNotFoundError:
            return b""
