"""ModelRegistry: the registry's domain object. Register, list, compare, promote, archive, delete.

Promotion into production is the one gate every path goes through (CLI, API, the MLflow alias follower,
experiments' auto_apply): the candidate needs a passing validation report, and more than a smoke run when
production has a real one (numeric parity), unless ``force``; and its serving contract (contract.py) must
equal production's, unless ``allow_contract_change`` (recorded as a ``contract_change`` event).

Every write to a model happens under that model's file lock (``<root>/<name>/.lock``), so CLI runs,
server workers and API calls serialize per model. Stage links move atomically (temp link +
``os.replace``); metadata is rewritten atomically (temp + fsync + replace). The link moves first,
then metadata, then the event log: a crash anywhere leaves the old or the new link, and the next
write (or ``ModelRegistry(root)``) reconciles metadata and events to the links (reconcile.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from ..artifacts import ARTIFACT_FORMATS, PRECISIONS
from ..errors import InvalidInput, InvalidName, ModelNotFound, VersionNotFound
from ..settings import StateSettings
from ..signature import ModelSignature
from .checkpoints import step
from .compare import VersionComparison, compare_versions
from .contract import ContractChange, ContractChanged, ServingContract, contract_changed, dropped_steps
from .errors import NameInUse, PromotionRefused, RegistryBusy, StageInUse
from .events import EVENTS_FILE, EventLog, RegistryEvent
from .fsutil import atomic_symlink, fsync_dir
from .layout import ENSEMBLE_FILE, RegistryLayout, validate_file_name, validate_name
from .lifecycle import STAGE_OF_STATUS, check_transition
from .model_version import ModelVersion, ValidationReport, VersionMetadata
from .reader import RegistryReader
from .reconcile import Repair, read_metadata, reconcile_model, write_status
from .signature_inference import infer_signature, smoke_test
from .writer import ArtifactSource, register_version, write_metadata

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
STATE_DIR = ".state"
UPLOADS_DIR = "uploads"


@contextmanager
def writer_lock(layout: RegistryLayout, name: str, timeout_s: float, *, create: bool = True,
                kind: str = "model") -> Iterator[None]:
    """The one writer lock of ``name``'s directory (models and ensembles alike): every registry write to
    a name holds it, across threads, processes and pods sharing the volume.

    ``create``: a first version may create the directory; every other write needs it to exist and raises
    ModelNotFound (naming ``kind``) without creating anything, also when it is removed while we wait."""
    model_dir = layout.model_dir(name)
    lock_path = model_dir / LOCK_FILE
    anchor = None
    if create:
        model_dir.mkdir(exist_ok=True)
    else:
        try:  # the lock file, only inside an existing directory (FileLock would create the directory)
            anchor = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except (FileNotFoundError, NotADirectoryError):
            raise ModelNotFound(f"{kind} {name!r} is not registered", {kind: name}) from None
    try:
        lock = FileLock(lock_path, timeout=timeout_s, preserve_lock_file=True)
        try:
            lock.acquire()
        except Timeout as exc:
            raise RegistryBusy(f"{name!r} is locked by another writer; try again",
                               {"model": name, "waited_s": timeout_s}) from exc
        except FileNotFoundError:  # the directory went away while we waited
            if create:
                raise
            raise ModelNotFound(f"{kind} {name!r} is not registered", {kind: name}) from None
        try:
            if anchor is not None and _recreated_by_lock(anchor, model_dir):
                # Removed between our check and the lock, which made it again: leave nothing behind.
                raise ModelNotFound(f"{kind} {name!r} is not registered", {kind: name})
            yield
        finally:
            lock.release()
    finally:
        if anchor is not None:
            os.close(anchor)


def _recreated_by_lock(anchor: int, model_dir: Path) -> bool:
    """True (and the directory removed again) when ``model_dir`` is not the one ``anchor`` was opened in and
    holds nothing but the lock file; a directory that holds versions again is a name registered anew."""
    lock_path = model_dir / LOCK_FILE
    try:
        if os.path.samestat(os.fstat(anchor), os.stat(lock_path)) or os.listdir(model_dir) != [LOCK_FILE]:
            return False
        lock_path.unlink()
        model_dir.rmdir()
    except OSError:
        pass
    return True


class ModelRegistry:
    def __init__(self, root: Path, *, repair: bool = True, lock_timeout_s: float = 30.0,
                 state: StateSettings | None = None):
        """Open (creating if needed) the store at ``root``; with ``repair``, reconcile every model.
        ``state``: where the event log lives (None: STATE_* from the environment)."""
        Path(root).expanduser().mkdir(parents=True, exist_ok=True)
        self.layout = RegistryLayout(root)
        self.reader = RegistryReader(self.layout.root)
        self.events = EventLog(self.layout.root / STATE_DIR / EVENTS_FILE, state=state)
        self._lock_timeout_s = lock_timeout_s
        if repair:
            self.reconcile()

    @property
    def root(self) -> Path:
        return self.layout.root

    # ---- reads -------------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return self.reader.model_names()

    def versions(self, name: str) -> list[ModelVersion]:
        return self.reader.versions(name)

    def get(self, name: str, version: str) -> ModelVersion:
        return self.reader.get(name, version)

    def resolve(self, name: str, version: str | None = None, stage: str | None = None) -> ModelVersion:
        return self.reader.resolve(name, version, stage)

    def stages(self, name: str) -> dict[str, str | None]:
        self.reader.versions(name)  # ModelNotFound for an unknown model
        return self.reader.stages(name)

    def compare(self, name: str, a: str, b: str) -> VersionComparison:
        first, second = self.get(name, a), self.get(name, b)
        return compare_versions(first.metadata, second.metadata,
                                ServingContract.of(first).differences(ServingContract.of(second)))

    def contract(self, name: str, version: str) -> ServingContract:
        return ServingContract.of(self.get(name, version))

    def production_refusal(self, name: str, version: str) -> PromotionRefused | None:
        """What ``promote(name, version)`` into production would refuse with, without force or override (a
        read: nothing is locked, so a concurrent write may change the answer); None when it would pass."""
        metadata = self.get(name, version).metadata
        if metadata.status == "production":
            return None
        production = self.reader.model_stage(name, "production")
        try:
            self._check_production_gate(name, version, metadata, production, force=False)
            self._check_contract(name, version, production, allow=False)
        except PromotionRefused as exc:
            return exc
        return None

    def model_events(self, name: str, *, limit: int = 1000, since: datetime | None = None) -> list[RegistryEvent]:
        validate_name(name)
        return self.events.events(name, since=since, limit=limit)

    def production_at(self, name: str, moment: datetime) -> str | None:
        validate_name(name)
        return self.events.production_at(name, moment)

    # ---- writes ------------------------------------------------------------------------------

    @contextmanager
    def upload_staging(self) -> Iterator[Path]:
        """A private directory (0700) under the state dir, on the store's filesystem, for files on
        their way in (an API upload being received); removed with everything in it afterwards."""
        uploads = self.root / STATE_DIR / UPLOADS_DIR
        uploads.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=uploads))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def register(
        self,
        name: str,
        version: str,
        artifacts: Sequence[ArtifactSource],
        *,
        signature: ModelSignature | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        description: str = "",
        architecture: str | None = None,
        architecture_config: Mapping[str, Any] | None = None,
        validation: ValidationReport | None = None,
        extra_files: Sequence[Path] = (),
        benchmarks: Mapping[str, Any] | None = None,
        actor: str = "unknown",
        allow_contract_change: bool = False,
    ) -> ModelVersion:
        """Copy artifacts in as a new version (status ``none``).

        The signature is inferred from the ONNX artifact unless given. With an ONNX artifact the
        model gets a smoke run against the signature (ValidationFailed when it does not match), and
        that smoke report is stored unless a ``numeric_parity`` report is supplied.

        When the model's production version declares a pre-processing step (bars, text) the new version
        does not declare (a bare artifact's inferred signature has none), registering is refused with
        ContractChanged naming the step: clients sending raw bars or text would lose it at the next
        promotion. ``allow_contract_change`` registers it anyway (the promotion still needs its own).
        """
        self.layout.new_version_dir(name, version)  # fail before the smoke run
        self._check_not_ensemble(name)
        if not artifacts:
            raise InvalidInput("a version needs at least one artifact")
        for source in artifacts:
            _check_artifact(source)
        file_names = [s.file_name or Path(s.path).name for s in artifacts] + [Path(e).name for e in extra_files]
        if len(file_names) != len(set(file_names)):
            raise InvalidInput("two files of the version would share a name", {"files": file_names})
        for extra in extra_files:
            validate_file_name(Path(extra).name)
            if not Path(extra).is_file():
                raise InvalidInput(f"extra file {Path(extra).name} does not exist")
        onnx_source = next((s for s in artifacts if s.format == "onnx" and s.precision == "fp32"), None) \
            or next((s for s in artifacts if s.format == "onnx"), None)
        inferred = signature is None
        if signature is None:
            if onnx_source is None:
                raise InvalidInput("without an ONNX artifact the signature must be given explicitly")
            signature = infer_signature(onnx_source.path)
        dropped = self._dropped_steps(name, version, signature, inferred, allow=allow_contract_change)
        if onnx_source is not None:
            with self.upload_staging() as scratch:  # on the store's filesystem: the run maps the weights in place
                smoke = smoke_test(onnx_source.path, signature, scratch)
            if validation is None or validation.kind != "numeric_parity":
                validation = smoke
        metadata = VersionMetadata(
            name=name, version=version, description=description, architecture=architecture,
            architecture_config=dict(architecture_config or {}), signature=signature,
            metrics=dict(metrics or {}), tags=dict(tags or {}),
            validation=validation, benchmarks=dict(benchmarks or {}),
        )
        with self._locked(name, create=True):
            self._check_not_ensemble(name)  # again under the lock: an ensemble may have taken it meanwhile

            def record(created: ModelVersion) -> None:
                # Before the version is renamed into place: when the event cannot be written, nothing is listed.
                details: dict[str, Any] = {"artifacts": [a.file for a in created.metadata.artifacts],
                                           "validation": validation.kind if validation else None}
                if dropped:  # registered without production's pre-processing, by explicit override
                    details["contract_change_allowed"] = [c.model_dump() for c in dropped]
                self.events.record("registered", name, version, actor=actor, details=details)

            created = register_version(self.root, metadata, list(artifacts), list(extra_files), before_publish=record)
        log.info("registered %s %s (%d artifacts)", name, version, len(created.metadata.artifacts))
        return created

    def promote(self, name: str, version: str, stage: Literal["production", "staging"] = "production",
                *, force: bool = False, allow_contract_change: bool = False, actor: str = "unknown") -> ModelVersion:
        """Point ``stage`` at ``version``. The version it displaces is archived.

        Entering production needs ``validation.passed``, and more than a smoke run when the production
        version has a passing report of another kind (numeric parity); ``force`` overrides both and is
        logged as a ``forced_promotion``. It also needs the serving contract of the production version
        (contract.py): any difference is ContractChanged (409 ``contract_changed``, each difference
        listed) unless ``allow_contract_change``, which is logged as a ``contract_change`` event with the
        differences. Promoting a version already in ``stage`` is a no-op.
        """
        if stage not in STAGE_OF_STATUS:
            raise InvalidName(f"unknown stage {stage!r}; valid: {', '.join(STAGE_OF_STATUS)}", {"value": stage})
        self.layout.version_dir(name, version)  # InvalidName before anything else, even for an unknown name
        with self._locked(name):
            metadata = self._read_for_write(name, version)
            current = metadata.status
            if current == stage:
                return self.get(name, version)
            check_transition(name, version, current, stage)
            displaced = self.layout.read_stage(name, stage)
            forced, changes = False, []
            if stage == "production":
                forced = self._check_production_gate(name, version, metadata, displaced, force=force)
                changes = self._check_contract(name, version, displaced, allow=allow_contract_change)
            step("locked")
            atomic_symlink(f"v{version}", self.layout.stage_link(name, stage))
            step("link_moved")
            if current == "staging":  # staging -> production: the staging link no longer has a version
                self.layout.stage_link(name, "staging").unlink(missing_ok=True)
                fsync_dir(self.layout.model_dir(name))
                step("old_link_removed")
            write_status(self.layout, metadata, stage)
            step("status_written")
            if displaced is not None and displaced != version:
                write_status(self.layout, read_metadata(self.layout, name, displaced), "archived")
                step("displaced_archived")
            details: dict[str, Any] = {"forced": forced, "displaced": displaced}
            if changes:
                details["contract_changes"] = len(changes)
            self.events.record("stage_change", name, version, actor=actor, from_stage=current, to_stage=stage,
                               details=details)
            if displaced is not None and displaced != version:
                self.events.record("stage_change", name, displaced, actor=actor, from_stage=stage,
                                   to_stage="archived", details={"displaced_by": version})
            if forced:
                self.events.record("forced_promotion", name, version, actor=actor, from_stage=current,
                                   to_stage=stage, details={"validation": _validation_summary(metadata)})
            if changes:
                self.events.record("contract_change", name, version, actor=actor, from_stage=current,
                                   to_stage=stage, details={"production_version": displaced, "allowed": True,
                                                            "differences": [c.model_dump() for c in changes]})
            step("events_recorded")
        log.info("%s: %s %s -> %s (displaced %s%s%s)", actor, name, version, stage, displaced,
                 ", forced" if forced else "", f", {len(changes)} contract changes allowed" if changes else "")
        return self.get(name, version)

    def _check_production_gate(self, name: str, version: str, metadata: VersionMetadata, production: str | None,
                               *, force: bool) -> bool:
        """Validation gate into production; True when it is forced (PromotionRefused without ``force``)."""
        report = metadata.validation
        if report is None or not report.passed:
            if force:
                return True
            raise PromotionRefused(
                f"{name} {version} has no passing validation report; promote with force to override",
                {"model": name, "version": version,
                 "validation": report.model_dump(mode="json") if report else None})
        if report.kind != "smoke" or production is None or production == version:
            return False
        theirs = read_metadata(self.layout, name, production).validation
        if theirs is None or not theirs.passed or theirs.kind == "smoke":
            return False
        if force:
            return True
        raise PromotionRefused(
            f"{name} {version} has only a smoke run (it loads and answers in the declared shapes), while "
            f"production {production} passed {theirs.kind}: a smoke run does not pass the production gate "
            "here. Attach a numeric parity report (package, or registry register --validation) or promote "
            "with force to override",
            {"model": name, "version": version, "validation": report.model_dump(mode="json"),
             "production_version": production, "production_validation": theirs.kind})

    def _check_contract(self, name: str, version: str, production: str | None, *,
                        allow: bool) -> list[ContractChange]:
        """The differences between production's serving contract and the candidate's (ContractChanged when
        there are any and ``allow`` is not given)."""
        if production is None or production == version:
            return []
        ours = ServingContract.of(self.get(name, version))
        changes = ServingContract.of(self.get(name, production)).differences(ours)
        if changes and not allow:
            raise contract_changed(name, version, production, changes)
        return changes

    def _dropped_steps(self, name: str, version: str, signature: ModelSignature, inferred: bool, *,
                       allow: bool) -> list[ContractChange]:
        """Production's pre-processing steps ``signature`` does not declare; ContractChanged naming them
        unless ``allow``."""
        production = self.reader.model_stage(name, "production") if self.layout.model_dir(name).is_dir() else None
        if production is None:
            return []
        theirs = ServingContract.of(self.get(name, production))
        dropped = dropped_steps(theirs, ServingContract.from_signature(signature))
        changes = [ContractChange(field=f"preprocessing.{kind}", a=step.describe(), b=None) for kind, step in dropped]
        if not dropped or allow:
            return changes
        what = "; ".join(f"a {kind} step {step.describe()}" for kind, step in dropped)
        source = "the signature inferred from the bare artifact" if inferred else "the given signature"
        raise ContractChanged(
            f"{name} production {production} declares {what}; {source} of {version} declares none, so "
            f"{'raw ' + ' and '.join(kind for kind, _ in dropped)} requests would stop working once it is "
            "promoted. Register it with a signature that declares the step (e.g. production's: registry show "
            f"{name} {production} --json), or pass --allow-contract-change (API: \"allow_contract_change\": "
            "true) to register it without",
            {"model": name, "version": version, "production_version": production,
             "dropped": [kind for kind, _ in dropped], "differences": [c.model_dump() for c in changes]})

    def archive(self, name: str, version: str, *, actor: str = "unknown") -> ModelVersion:
        """Retire a version; a stage link pointing at it is removed (production then has no version)."""
        self.layout.version_dir(name, version)  # InvalidName before anything else, even for an unknown name
        with self._locked(name):
            metadata = self._read_for_write(name, version)
            check_transition(name, version, metadata.status, "archived")
            stage = STAGE_OF_STATUS.get(metadata.status)
            if stage is not None:
                self.layout.stage_link(name, stage).unlink(missing_ok=True)
                fsync_dir(self.layout.model_dir(name))
                step("link_removed")
            write_status(self.layout, metadata, "archived")
            self.events.record("stage_change", name, version, actor=actor, from_stage=metadata.status,
                               to_stage="archived")
        return self.get(name, version)

    def update_metrics(self, name: str, version: str, metrics: Mapping[str, float], *,
                       replace: bool = False, actor: str = "unknown") -> ModelVersion:
        """Merge (or with ``replace``, swap in) metrics on a version."""
        self.layout.version_dir(name, version)  # InvalidName before anything else, even for an unknown name
        with self._locked(name):
            metadata = self._read_for_write(name, version)
            merged = dict(metrics) if replace else {**metadata.metrics, **metrics}
            self._write(metadata.model_copy(update={"metrics": merged}))
            self.events.record("metrics_updated", name, version, actor=actor,
                               details={"metrics": dict(metrics), "replace": replace})
        return self.get(name, version)

    def set_validation(self, name: str, version: str, report: ValidationReport, *,
                       actor: str = "unknown") -> ModelVersion:
        """Attach a validation report (e.g. numeric parity from the packaging pipeline)."""
        self.layout.version_dir(name, version)  # InvalidName before anything else, even for an unknown name
        with self._locked(name):
            metadata = self._read_for_write(name, version)
            self._write(metadata.model_copy(update={"validation": report}))
            self.events.record("validation_updated", name, version, actor=actor,
                               details={"kind": report.kind, "passed": report.passed})
        return self.get(name, version)

    def delete(self, name: str, version: str, *, actor: str = "unknown") -> None:
        """Remove a version. Refused (StageInUse, 409) while a stage link points at it."""
        self.layout.version_dir(name, version)  # InvalidName before anything else, even for an unknown name
        with self._locked(name):
            self._read_for_write(name, version)
            stages = {stage: self.layout.read_stage(name, stage) for stage in STAGE_OF_STATUS}
            in_use = sorted(stage for stage, target in stages.items() if target == version)
            if in_use:
                raise StageInUse(f"{name} {version} is the {' and '.join(in_use)} version; promote another or "
                                 "archive it first", {"model": name, "version": version, "stages": in_use})
            version_dir = self.layout.version_dir(name, version)
            # Rename first so the version disappears at once; a crash mid-rmtree leaves only a .tmp dir.
            doomed = version_dir.with_name(f".{version_dir.name}.{os.urandom(4).hex()}.deleted.tmp")
            version_dir.rename(doomed)
            fsync_dir(version_dir.parent)
            shutil.rmtree(doomed)
            self.events.record("deleted", name, version, actor=actor)
        log.info("%s: deleted %s %s", actor, name, version)

    def reconcile(self, name: str | None = None) -> list[Repair]:
        """Make metadata and the event log agree with the stage links (for one model or all)."""
        repairs = []
        for model in [name] if name else self.model_names():
            try:
                with self._locked(model, reconcile=False):
                    repairs += reconcile_model(self.layout, self.events, model)
            except InvalidName as exc:
                if name:
                    raise
                # A tampered model (e.g. a stage link leaving its dir) must not block opening the rest.
                log.error("registry: cannot reconcile %s: %s", model, exc.message)
        return repairs

    # ---- internals ---------------------------------------------------------------------------

    @contextmanager
    def _locked(self, name: str, *, reconcile: bool = True, create: bool = False) -> Iterator[None]:
        with writer_lock(self.layout, name, self._lock_timeout_s, create=create):
            if reconcile:  # repair what a crashed writer left before building on it
                reconcile_model(self.layout, self.events, name)
            yield

    def _check_not_ensemble(self, name: str) -> None:
        if self.layout.has_versions(name, ENSEMBLE_FILE):
            raise NameInUse(f"{name!r} is an ensemble; a model needs a name of its own", {"model": name})

    def _read_for_write(self, name: str, version: str) -> VersionMetadata:
        if not self.layout.metadata_path(name, version).is_file():
            self.get(name, version)  # raises ModelNotFound / VersionNotFound
            raise VersionNotFound(f"model {name!r} has no version {version!r}", {"model": name, "version": version})
        return read_metadata(self.layout, name, version)

    def _write(self, metadata: VersionMetadata) -> None:
        write_metadata(self.layout.metadata_path(metadata.name, metadata.version), metadata)


def _check_artifact(source: ArtifactSource) -> None:
    validate_file_name(source.file_name or Path(source.path).name)
    if source.format not in ARTIFACT_FORMATS:
        raise InvalidInput(f"unknown artifact format {source.format!r}; valid: {', '.join(ARTIFACT_FORMATS)}")
    if source.precision not in PRECISIONS:
        raise InvalidInput(f"unknown precision {source.precision!r}; valid: {', '.join(PRECISIONS)}")
    if not Path(source.path).is_file():
        raise InvalidInput(f"artifact {Path(source.path).name} does not exist or is not a file")


def _validation_summary(metadata: VersionMetadata) -> dict[str, Any] | None:
    if metadata.validation is None:
        return None
    return {"kind": metadata.validation.kind, "passed": metadata.validation.passed}
