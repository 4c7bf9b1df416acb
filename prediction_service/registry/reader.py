"""Read path of the registry: list models and versions, resolve name + stage/version.

Parsed metadata is cached by (inode, mtime_ns, size). Stage resolution has a fast path for the
request hot path: the validated link path is remembered per (name, stage), and a resolved version is
reused while the link target and the metadata file's stamp are unchanged: one readlink and one stat.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from pydantic import ValidationError

from ..errors import ModelNotFound, PredictionServiceError, VersionNotFound
from .fsutil import atomic_write_bytes
from .layout import METADATA_FILE, STAGES, RegistryLayout, validate_stage
from .model_version import ModelVersion, VersionMetadata

log = logging.getLogger(__name__)


class CorruptMetadata(PredictionServiceError):
    code = "corrupt_metadata"


RELOAD_FILE = ".reload-generation"
"""Per model: a counter that every worker polls; bumping it asks all of them to re-read the model."""


class RegistryReader:
    def __init__(self, root: Path):
        self.layout = RegistryLayout(root)
        self._cache: dict[Path, tuple[tuple[int, int, int], VersionMetadata]] = {}
        self._lock = threading.Lock()
        self._links: dict[tuple[str, str], str] = {}
        self._resolved: dict[tuple[str, str], tuple[str, tuple[int, int, int], ModelVersion]] = {}
        self._not_model_stages: dict[tuple[str, str], str] = {}
        """(name, stage) -> the target already logged as not a model version."""

    @property
    def root(self) -> Path:
        return self.layout.root

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
            and any(p.glob(f"v*/{METADATA_FILE}"))
        )

    def versions(self, name: str) -> list[ModelVersion]:
        model_dir = self.layout.model_dir(name)
        if not model_dir.is_dir():
            raise ModelNotFound(f"model {name!r} is not registered", {"model": name})
        found = []
        for meta in sorted(model_dir.glob(f"v*/{METADATA_FILE}")):
            if meta.parent.is_symlink():
                continue
            found.append(self._load(meta.parent))
        return sorted(found, key=lambda v: version_sort_key(v.version))

    def stages(self, name: str) -> dict[str, str | None]:
        self.layout.model_dir(name)
        return {stage: self.layout.read_stage(name, stage) for stage in STAGES}

    def model_stage(self, name: str, stage: str) -> str | None:
        """The version ``stage`` points to when it is one of the model's versions, else None. A name that
        holds an ensemble too (written by hand; the registry refuses to) may have its stage on an ensemble
        version: that is no model version to load, and it is logged once per target instead of failing
        every readiness probe of every worker."""
        target = self.layout.read_stage(name, stage)
        if target is None or os.path.isfile(os.path.join(self.layout.root, name, f"v{target}", METADATA_FILE)):
            return target
        with self._lock:
            first = self._not_model_stages.get((name, stage)) != target
            self._not_model_stages[(name, stage)] = target
        if first:
            log.warning("registry: %s/%s points at v%s, which is not a model version (%s holds an ensemble "
                        "too?); the model's %s is not served: give the model or the ensemble another name",
                        name, stage, target, name, stage)
        return None

    def get(self, name: str, version: str) -> ModelVersion:
        version_dir = self.layout.version_dir(name, version)
        if not (version_dir / METADATA_FILE).is_file():
            if not self.layout.model_dir(name).is_dir():
                raise ModelNotFound(f"model {name!r} is not registered", {"model": name})
            raise VersionNotFound(f"model {name!r} has no version {version!r}", {"model": name, "version": version})
        return self._load(version_dir)

    def resolve(self, name: str, version: str | None = None, stage: str | None = None) -> ModelVersion:
        """An explicit version wins; otherwise the stage (default production)."""
        if version is not None:
            return self.get(name, version)
        stage = stage or "production"
        fast = self._resolve_cached(name, stage)
        if fast is not None:
            return fast
        stage = validate_stage(stage)
        target = self.layout.read_stage(name, stage)
        if target is None:
            if not self.layout.model_dir(name).is_dir():
                raise ModelNotFound(f"model {name!r} is not registered", {"model": name})
            raise VersionNotFound(f"model {name!r} has no {stage} version", {"model": name, "stage": stage})
        found = self.get(name, target).model_copy(update={"stage": stage})
        meta_path = os.path.join(found.path, METADATA_FILE)
        with self._lock:
            self._links[(name, stage)] = str(self.layout.stage_link(name, stage))
            self._resolved[(name, stage)] = (f"v{target}", file_stamp(meta_path), found)
        return found

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

    def _resolve_cached(self, name: str, stage: str) -> ModelVersion | None:
        """The hot path; None sends the caller down the validating slow path."""
        link = self._links.get((name, stage))
        cached = self._resolved.get((name, stage))
        if link is None or cached is None:
            return None
        try:
            target = os.readlink(link)
            if target != cached[0] or file_stamp(os.path.join(cached[2].path, METADATA_FILE)) != cached[1]:
                return None
        except OSError:
            return None
        return cached[2]

    def _load(self, version_dir: Path) -> ModelVersion:
        meta_path = version_dir / METADATA_FILE
        stamp = file_stamp(meta_path)
        with self._lock:
            cached = self._cache.get(meta_path)
        if cached is None or cached[0] != stamp:
            try:
                metadata = VersionMetadata.model_validate_json(meta_path.read_bytes())
            except ValidationError as exc:
                raise CorruptMetadata(f"invalid metadata.json in {version_dir.name}", {"errors": exc.errors()[:5]}) from exc
            with self._lock:
                self._cache[meta_path] = (stamp, metadata)
        else:
            metadata = cached[1]
        return ModelVersion(path=version_dir, metadata=metadata)


def file_stamp(path: Path | str) -> tuple[int, int, int]:
    # The inode too: metadata is replaced (new inode) and two writes can share an mtime tick.
    stat = os.stat(path)
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def version_sort_key(version: str) -> tuple:
    parts = []
    for piece in version.replace("-", ".").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return tuple(parts)
