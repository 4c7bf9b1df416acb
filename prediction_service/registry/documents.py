"""The registry's one read path for versioned documents: a model version's metadata.json and an ensemble
version's ensemble.json are read, listed, cached and resolved by the same code.

Parsed documents are cached by their file's stamp (inode, mtime_ns, size). Stage resolution has a fast
path for the request hot path: a resolved (name, stage) is reused while the stage link's target and the
document's stamp are unchanged: one readlink and one stat, never a read or a parse. An explicit version
(an experiment's arm) is reused while its document's stamp is unchanged: one stat.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, Self, TypeVar

from pydantic import ValidationError

from ..errors import ModelNotFound, PredictionServiceError, VersionNotFound
from .layout import STAGES, RegistryLayout, validate_stage
from .watch import root_key, watch_of


class CorruptMetadata(PredictionServiceError):
    code = "corrupt_metadata"


class VersionDocument(Protocol):
    """What a versioned document offers the reader: its version, and a copy naming the stage it came through."""

    @property
    def version(self) -> str: ...

    def model_copy(self, *, update: dict) -> Self: ...


D = TypeVar("D", bound=VersionDocument)
Stamp = tuple[int, int, int]


class VersionedDocuments(Generic[D]):
    """Every version of one kind of document under the registry root: ``kind`` ("model", "ensemble") names
    it in errors, ``parse`` turns a version directory and the file's bytes into the typed document."""

    def __init__(self, layout: RegistryLayout, file_name: str, kind: str, parse: Callable[[Path, bytes], D]):
        self.layout = layout
        self.file_name = file_name
        self.kind = kind
        self._parse = parse
        self._lock = threading.Lock()
        self._parsed: dict[Path, tuple[Stamp, D]] = {}
        self._resolved: dict[tuple[str, str], tuple[str, str, str, Stamp, D, int | None]] = {}
        """(name, stage) -> (stage link path, its target, the document's path, its stamp, the resolved document,
        the registry watch's generation when it was last checked: None before a check the watch covers)."""
        self._versions: dict[tuple[str, str], tuple[str, Stamp, D, int | None]] = {}
        """(name, version) -> (the document's path, its stamp, the document, the generation of its last check):
        ``get``'s fast path."""
        self._stages: dict[str, tuple[int | None, dict[str, str | None]]] = {}
        """name -> (the registry watch's generation when its stage links were read, what they held)."""
        self._root_key = root_key(layout.root)

    @property
    def root(self) -> Path:
        return self.layout.root

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                      and any(p.glob(f"v*/{self.file_name}")))

    def versions(self, name: str) -> list[D]:
        model_dir = self.layout.model_dir(name)
        found = [self._load(p.parent) for p in model_dir.glob(f"v*/{self.file_name}") if not p.parent.is_symlink()]
        if not found:
            raise self._not_registered(name)
        return sorted(found, key=lambda document: version_sort_key(document.version))

    def get(self, name: str, version: str) -> D:
        cached = self._versions.get((name, version))
        if cached is not None:
            # the hot path of an experiment's arm: no syscall while the registry watch saw no change, else one
            # stat; no path resolution or parse
            path, stamp, document, checked = cached
            generation = self._generation()
            if generation is not None and checked == generation:
                return document
            try:
                if file_stamp(path) == stamp:
                    self._versions[(name, version)] = (path, stamp, document,
                                                       self._covered(generation, os.path.dirname(path)))
                    return document
            except OSError:
                pass
        version_dir = self.layout.version_dir(name, version)
        if not (version_dir / self.file_name).is_file():
            if not self.layout.has_versions(name, self.file_name):
                raise self._not_registered(name)
            raise VersionNotFound(f"{self.kind} {name!r} has no version {version!r}",
                                  {self.kind: name, "version": version})
        stamp, document = self._load_stamped(version_dir)
        with self._lock:
            self._versions[(name, version)] = (str(version_dir / self.file_name), stamp, document, None)
        return document

    def stages(self, name: str) -> dict[str, str | None]:
        return {stage: self.layout.read_stage(name, stage) for stage in STAGES}

    def stages_cached(self, name: str) -> dict[str, str | None]:
        """``stages`` for the request path (the stage a version served outside its stage holds): read again
        only when the registry watch saw a change since the last read, else a readlink per stage."""
        generation = self._generation()
        cached = self._stages.get(name)
        if generation is not None and cached is not None and cached[0] == generation:
            return cached[1]
        found = self.stages(name)
        self._stages[name] = (self._covered(generation, os.path.join(self.root, name)), found)
        return found

    def resolve(self, name: str, version: str | None = None, stage: str | None = None) -> D:
        """An explicit version wins; otherwise the stage (default production)."""
        if version is not None:
            return self.get(name, version)
        fast = self.resolve_cached(name, stage or "production")
        if fast is not None:
            return fast
        stage = validate_stage(stage or "production")
        target = self.layout.read_stage(name, stage)
        if target is None:
            if not self.layout.has_versions(name, self.file_name):
                raise self._not_registered(name)
            raise VersionNotFound(f"{self.kind} {name!r} has no {stage} version", {self.kind: name, "stage": stage})
        version_dir = self.layout.version_dir(name, target)
        if not (version_dir / self.file_name).is_file():
            raise VersionNotFound(f"{self.kind} {name!r} has no version {target!r}",
                                  {self.kind: name, "version": target})
        stamp, document = self._load_stamped(version_dir)
        found = document.model_copy(update={"stage": stage})
        with self._lock:  # the stamp of the bytes parsed, not a later stat: a write in between re-reads
            self._resolved[(name, stage)] = (str(self.layout.stage_link(name, stage)), f"v{target}",
                                             str(version_dir / self.file_name), stamp, found, None)
        return found

    def resolve_cached(self, name: str, stage: str = "production") -> D | None:
        """The hot path: what ``resolve`` last answered for (name, stage) while its stage link and document
        are unchanged, else None for the slow path. Unchanged: nothing the registry watch covers changed
        since the last check (no syscall), or else one readlink and one stat (safe on the event loop)."""
        cached = self._resolved.get((name, stage))
        if cached is None:
            return None
        link, target, document, stamp, found, checked = cached
        generation = self._generation()
        if generation is not None and checked == generation:
            return found
        try:
            if os.readlink(link) != target or file_stamp(document) != stamp:
                return None
        except OSError:
            return None
        self._resolved[(name, stage)] = (link, target, document, stamp, found,
                                         self._covered(generation, os.path.dirname(link), os.path.dirname(document)))
        return found

    def _generation(self) -> int | None:
        """The registry watch's generation, read before a check (a change during the check bumps it, so what
        the check saw is never taken for current); None without a watch: every request checks."""
        watch = watch_of(self._root_key)
        return None if watch is None else watch.generation

    def _covered(self, generation: int | None, *directories: str) -> int | None:
        """What a check just made at ``generation`` is stored with: the generation when the watch covers the
        directories it read, else None (the next request checks again)."""
        watch = watch_of(self._root_key)
        return generation if watch is not None and watch.covers(*directories) else None

    def _not_registered(self, name: str) -> ModelNotFound:
        return ModelNotFound(f"{self.kind} {name!r} is not registered", {self.kind: name})

    def _load(self, version_dir: Path) -> D:
        return self._load_stamped(version_dir)[1]

    def _load_stamped(self, version_dir: Path) -> tuple[Stamp, D]:
        path = version_dir / self.file_name
        stamp = file_stamp(path)
        with self._lock:
            cached = self._parsed.get(path)
        if cached is not None and cached[0] == stamp:
            return cached
        raw = path.read_bytes()
        try:
            document = self._parse(version_dir, raw)
        except ValidationError as exc:
            raise CorruptMetadata(f"invalid {self.file_name} in {version_dir.name}",
                                  {"errors": exc.errors()[:5]}) from exc
        # The stamp taken before the read: a write racing the read leaves a stale stamp, so the next call re-reads.
        with self._lock:
            self._parsed[path] = (stamp, document)
        return stamp, document


def file_stamp(path: Path | str) -> Stamp:
    # The inode too: documents are replaced (new inode) and two writes can share an mtime tick.
    stat = os.stat(path)
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def version_sort_key(version: str) -> tuple:
    parts = []
    for piece in version.replace("-", ".").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return tuple(parts)
