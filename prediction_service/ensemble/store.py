"""EnsembleRegistry: the ensemble versions in the filesystem registry. Reads are the registry's own
versioned-document reader (registry/documents.py, the one that reads models: a resolved stage costs one
readlink and one stat); this adds the writes (register, promote, archive) with the model registry's own
parts: its layout (names validated, nothing outside the root), its per-name file lock, atomic stage links,
the lifecycle table and the event log it is given.

Members are checked against the registry when a version is registered and again when it enters
production (``force`` overrides the latter, as for models without a passing validation).

Which names are ensembles (``EnsembleCatalog``) is a set the data plane looks up on every request; it is
rescanned off the event loop (at start and with the model manager's stage poll), and a write through
the catalog's own registry adds its name at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from ..errors import InvalidInput, PredictionServiceError
from ..registry.errors import NameInUse, PromotionRefused
from ..registry.events import EVENTS_FILE, EventLog
from ..registry.fsutil import atomic_symlink, atomic_write_bytes, fsync_dir
from ..registry.documents import VersionedDocuments
from ..registry.layout import METADATA_FILE, RegistryLayout, validate_stage
from ..registry.lifecycle import STAGE_OF_STATUS, check_transition
from ..registry.reader import RegistryReader
from ..registry.store import STATE_DIR, writer_lock
from ..registry.writer import register_document_version
from ..settings import StateSettings
from .combiners import Combiner
from .spec import ENSEMBLE_FILE, Ensemble, EnsembleMember, EnsembleMetadata

log = logging.getLogger(__name__)


class EnsembleRegistry(VersionedDocuments[Ensemble]):
    def __init__(self, root: Path, *, models: RegistryReader | None = None, events: EventLog | None = None,
                 lock_timeout_s: float = 30.0, state: StateSettings | None = None,
                 on_write: Callable[[str], None] | None = None):
        """``models``: the model reader member checks resolve through (a server passes its model manager's;
        None: a new one on ``root``). ``events``: the registry's event log (None: the one under ``root``,
        kept where ``state`` says, STATE_* from the environment by default). ``on_write``: called with the
        ensemble's name after this registry registered, promoted or archived one of its versions."""
        super().__init__(RegistryLayout(root), ENSEMBLE_FILE, "ensemble", _parse_ensemble)
        self.on_write = on_write
        self.models = models if models is not None else RegistryReader(self.layout.root)
        self.events = events if events is not None else EventLog(self.layout.root / STATE_DIR / EVENTS_FILE,
                                                                 state=state)
        self._lock_timeout_s = lock_timeout_s

    def member_problems(self, metadata: EnsembleMetadata) -> list[str]:
        """Why the members cannot serve now (missing model, stage without a version, wrong kind of model)."""
        problems = []
        for member in metadata.members:
            try:
                version = self.models.resolve(member.model, member.version, member.followed_stage)
            except PredictionServiceError as exc:
                problems.append(f"{member.role} member {member.describe()}: {exc.message}")
                continue
            problem = _role_problem(member, version.signature, metadata.combiner)
            if problem:
                problems.append(f"{member.role} member {member.describe()}: {problem}")
        return problems

    # ---- writes ------------------------------------------------------------------------------

    def register(self, name: str, version: str, members: Sequence[EnsembleMember], combiner: Combiner, *,
                 description: str = "", tags: dict[str, str] | None = None, actor: str = "unknown") -> Ensemble:
        """A new ensemble version (status ``none``); refused when a member cannot serve or the name is a model's."""
        try:
            metadata = EnsembleMetadata(name=name, version=version, members=tuple(members), combiner=combiner,
                                        description=description, tags=dict(tags or {}))
        except ValidationError as exc:
            errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:10]]
            raise InvalidInput(f"invalid ensemble {name} {version}", {"errors": errors}) from exc
        self._check_not_model(name)
        problems = self.member_problems(metadata)
        if problems:
            raise InvalidInput(f"ensemble {name} {version}: members cannot serve", {"problems": problems})
        with self._locked(name, create=True):
            self._check_not_model(name)  # again under the lock: a model may have taken the name meanwhile

            def record() -> None:
                # Before the version is renamed into place: when the event cannot be written, nothing is listed.
                self.events.record("registered", name, version, actor=actor, details={
                    "ensemble": True,
                    "members": [m.model_dump(mode="json", exclude_none=True) for m in metadata.members],
                    "combiner": metadata.combiner.kind})

            path = register_document_version(self.root, name, version, ENSEMBLE_FILE, _dump(metadata),
                                             before_publish=record)
        log.info("registered ensemble %s %s", name, version)
        self._written(name)
        return self._load(path)

    def promote(self, name: str, version: str, stage: Literal["production", "staging"] = "production", *,
                force: bool = False, actor: str = "unknown") -> Ensemble:
        """Point ``stage`` at ``version``; the version it displaces is archived. Entering production needs
        every member able to serve now (``force`` overrides, logged as a forced promotion)."""
        validate_stage(stage)
        self.layout.version_dir(name, version)  # InvalidName before anything else, even for an unknown name
        with self._locked(name):
            current = self.get(name, version).metadata
            if current.status == stage:
                return self.get(name, version)
            check_transition(name, version, current.status, stage)
            problems = self.member_problems(current) if stage == "production" else []
            if problems and not force:
                raise PromotionRefused(f"ensemble {name} {version}: members cannot serve; promote with force to "
                                       "override", {"ensemble": name, "version": version, "problems": problems})
            displaced = self.layout.read_stage(name, stage)
            atomic_symlink(f"v{version}", self.layout.stage_link(name, stage))
            if current.status == "staging":
                self.layout.stage_link(name, "staging").unlink(missing_ok=True)
                fsync_dir(self.layout.model_dir(name))
            self._write(current.model_copy(update={"status": stage}))
            if displaced is not None and displaced != version:
                self._write(self.get(name, displaced).metadata.model_copy(update={"status": "archived"}))
            self.events.record("stage_change", name, version, actor=actor, from_stage=current.status,
                               to_stage=stage, details={"forced": bool(problems), "displaced": displaced})
            if displaced is not None and displaced != version:
                self.events.record("stage_change", name, displaced, actor=actor, from_stage=stage,
                                   to_stage="archived", details={"displaced_by": version})
            if problems:
                self.events.record("forced_promotion", name, version, actor=actor, from_stage=current.status,
                                   to_stage=stage, details={"problems": problems})
        log.info("%s: ensemble %s %s -> %s (displaced %s)", actor, name, version, stage, displaced)
        self._written(name)
        return self.get(name, version)

    def archive(self, name: str, version: str, *, actor: str = "unknown") -> Ensemble:
        """Retire a version; a stage link pointing at it is removed."""
        self.layout.version_dir(name, version)  # InvalidName before anything else, even for an unknown name
        with self._locked(name):
            current = self.get(name, version).metadata
            check_transition(name, version, current.status, "archived")
            stage = STAGE_OF_STATUS.get(current.status)
            if stage is not None:
                self.layout.stage_link(name, stage).unlink(missing_ok=True)
                fsync_dir(self.layout.model_dir(name))
            self._write(current.model_copy(update={"status": "archived"}))
            self.events.record("stage_change", name, version, actor=actor, from_stage=current.status,
                               to_stage="archived")
        self._written(name)
        return self.get(name, version)

    # ---- internals ---------------------------------------------------------------------------

    def _written(self, name: str) -> None:
        if self.on_write is None:
            return
        try:
            self.on_write(name)
        except Exception:  # noqa: BLE001 - the write is done and durable; a listener never fails it
            log.exception("ensemble write listener failed for %s", name)

    @contextmanager
    def _locked(self, name: str, *, create: bool = False) -> Iterator[None]:
        with writer_lock(self.layout, name, self._lock_timeout_s, create=create, kind="ensemble"):
            yield

    def _check_not_model(self, name: str) -> None:
        if self.layout.has_versions(name, METADATA_FILE):
            raise NameInUse(f"{name!r} is a model; an ensemble needs a name of its own", {"ensemble": name})

    def _write(self, metadata: EnsembleMetadata) -> None:
        atomic_write_bytes(self.layout.version_dir(metadata.name, metadata.version) / ENSEMBLE_FILE, _dump(metadata))


class EnsembleCatalog:
    """Which names are ensembles, for the data plane's hot path: ``is_ensemble`` is a lookup in a frozenset
    and never touches the filesystem (a request must not pay a directory scan, least of all on a network
    volume).

    ``refresh()`` rescans the registry root; it blocks, so a server runs it in a thread: once before it
    serves (``ModelManager.start``) and after every stage poll (``ModelManager.add_refresher``). A version
    registered, promoted or archived through ``self.registry`` (the admin API's path) adds its name at
    once. Without a model manager (CLI commands, tests) the set is what the constructor's scan found
    (``scan=False`` skips it) until ``refresh()`` is called. A failed scan keeps the last good set."""

    def __init__(self, root: Path, state: StateSettings | None = None, *, scan: bool = True,
                 models: RegistryReader | None = None):
        self.registry = EnsembleRegistry(root, models=models, state=state, on_write=self.add)
        self._names: frozenset[str] = frozenset()
        self._lock = threading.Lock()  # writers only (scans and adds, from threads); lookups read the reference
        self._scan_lock = threading.Lock()  # one scan at a time, so a slow old scan never lands after a newer one
        self._writes = 0
        self._added: dict[str, int] = {}
        """name -> the write count when ``add`` saw it: a scan that began earlier keeps the name."""
        if scan:
            self.refresh()

    def is_ensemble(self, name: str) -> bool:
        return name in self._names

    @property
    def names(self) -> frozenset[str]:
        return self._names

    def refresh(self) -> bool:
        """Rescan the registry root (blocking: call it off the event loop). False when the scan failed and
        the last good set was kept."""
        with self._scan_lock:
            with self._lock:
                started = self._writes
            try:
                scanned = frozenset(self.registry.names())
            except OSError as exc:  # keep the last good set; the next scan tries again
                log.warning("ensemble scan of %s failed, keeping the %d known ensemble(s): %s",
                            self.registry.root, len(self._names), exc)
                return False
            with self._lock:
                # A name added while this scan ran may be missing from it (its directory listed before it
                # was written): keep it. Names added before the scan began are the scan's to confirm.
                self._added = {name: seen for name, seen in self._added.items() if seen > started}
                self._names = scanned | self._added.keys()
            return True

    def add(self, name: str) -> None:
        """``name`` is an ensemble now (this process registered or changed one of its versions)."""
        with self._lock:
            self._writes += 1
            self._added[name] = self._writes
            if name not in self._names:
                self._names = self._names | {name}


def _parse_ensemble(version_dir: Path, raw: bytes) -> Ensemble:
    return Ensemble(path=version_dir, metadata=EnsembleMetadata.model_validate_json(raw),
                    sha256=hashlib.sha256(raw).hexdigest())


def _dump(metadata: EnsembleMetadata) -> bytes:
    return metadata.model_dump_json(indent=2).encode()


def _role_problem(member: EnsembleMember, signature, combiner: Combiner) -> str | None:
    first = signature.outputs[0]
    if member.role == "price":
        if signature.task != "regression" or any(d not in (-1, 1) for d in first.shape[1:]):
            return f"a price member forecasts one value per row (regression); this model is {signature.task} " \
                   f"with output {first.name} {list(first.shape)}"
        return None
    if signature.task != "classification" or not signature.labels:
        return "a sentiment member is a classifier with labels"
    try:
        combiner.label_indices(signature.labels)
    except ValueError as exc:
        return str(exc)
    return None


__all__ = ["EnsembleCatalog", "EnsembleRegistry"]
