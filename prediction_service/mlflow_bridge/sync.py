"""Sync from an MLflow Model Registry into the filesystem registry (``mlflow sync``, and follow.py's loop).

For each configured registered model, every MLflow model version with a servable artifact (artifacts.py:
the ``onnx`` flavour with its external weights and extra files, a TorchScript ``pytorch`` flavour, a plain
``model.onnx``, or what ``package --mlflow`` logged) becomes the filesystem version ``<prefix><n>``
(``mlflow-3``) through ``ModelRegistry.register``: files copied and hashed, the MLflow signature converted to
the strict one, a smoke run against it. The MLflow run id, run metrics and tags are recorded in
metadata.json. Then the aliases that mean production / staging become ``ModelRegistry.promote`` calls,
through the same validation gate and serving-contract check as any promotion: an alias moved to a version
whose contract differs from production's is reported ``not_promoted`` (contract_changed, each difference
named) until an admin promotes it with the override (``registry promote --allow-contract-change``); a
version without the pre-processing step production declares is refused at mirroring, naming the step.

Safety: MLmodel is parsed with yaml.safe_load; only the files the plan names are downloaded, by paths that
must be plain relative names (artifacts.safe_path: nothing can leave the staging dir), into a private staging
dir on the store's filesystem. Nothing from MLflow is unpickled or imported (TorchScript is told from a pickle
by its zip's table of contents before anything loads it). Idempotent: a version already mirrored (its
metadata names the same MLflow model and version) is not downloaded again, a stage already on its version is
not moved. Concurrent syncs (several workers or pods) serialize on the registry's per-model lock; the loser
of a race for the same version sees Conflict and reports the version as already mirrored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import Conflict, InvalidInput, InvalidName, PredictionServiceError, ServiceUnavailable, ValidationFailed
from ..registry.contract import ContractChanged
from ..registry.errors import InvalidTransition, PromotionRefused
from ..registry.layout import validate_name
from ..registry.model_version import ValidationReport
from ..registry.reconcile import read_metadata
from ..registry.store import ModelRegistry
from ..registry.writer import ArtifactSource
from ..settings import MlflowSettings
from ..signature import ModelSignature
from .artifacts import (
                        MAX_DEPTH,
                        MAX_LISTED,
                        MLMODEL_FILE,
                        NoServableArtifact,
                        external_data_files,
                        is_torchscript_archive,
                        plan_mirror,
                        safe_path,
                        )
from .signature import SignatureNotConvertible, convert_signature

log = logging.getLogger(__name__)

TAG_MODEL, TAG_VERSION, TAG_RUN, TAG_MODEL_ID, TAG_SOURCE, TAG_FLAVOR = (
    "mlflow.registered_model", "mlflow.version", "mlflow.run_id", "mlflow.model_id", "mlflow.source", "mlflow.flavor")
STAGES = ("production", "staging")
_DEPRECATED_STAGE = {"production": "Production", "staging": "Staging"}

Action = Literal["mirrored", "unchanged", "skipped", "refused", "promoted", "in_stage", "not_promoted"]
FAILURES = ("refused", "not_promoted")


class MlflowUnavailable(ServiceUnavailable):
    """The MLflow tracking server could not be reached or answered with an error."""

    code = "mlflow_unavailable"


@dataclass(frozen=True)
class SyncAction:
    model: str
    """MLflow registered model name (= the filesystem model name)."""
    action: Action
    mlflow_version: str | None = None
    version: str | None = None
    """The filesystem version."""
    stage: str | None = None
    reason: str = ""

    def text(self) -> str:
        what = f"{self.model} {self.version or '-'}"
        if self.mlflow_version:
            what += f" (MLflow v{self.mlflow_version})"
        stage = f" {self.stage}" if self.stage else ""
        return f"{self.action:<13}{what}{stage}" + (f": {self.reason}" if self.reason else "")


@dataclass
class SyncReport:
    actions: list[SyncAction] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(a.action in ("mirrored", "promoted") for a in self.actions)

    @property
    def failures(self) -> list[SyncAction]:
        return [a for a in self.actions if a.action in FAILURES]

    def of(self, action: Action) -> list[SyncAction]:
        return [a for a in self.actions if a.action == action]

    def to_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "failures": len(self.failures), "actions": [asdict(a) for a in self.actions]}

    def text(self) -> str:
        lines = [a.text() for a in self.actions]
        lines.append("changed: " + ("yes" if self.changed else "nothing (already in sync)")
                     + (f"; {len(self.failures)} refused or not promoted" if self.failures else ""))
        return "\n".join(lines)


class MlflowSync:
    def __init__(self, registry: ModelRegistry, settings: MlflowSettings, *, actor: str = "mlflow-sync",
                 client: Any = None):
        if not settings.tracking_uri:
            raise InvalidInput("MLFLOW_TRACKING_URI is not set: say which MLflow server to sync from")
        self.registry = registry
        self.settings = settings
        self.actor = actor
        self.uri = settings.tracking_uri
        if client is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.client = client
        self._settled: dict[tuple[str, str], SyncAction] = {}
        """Versions skipped or refused for what they are (not for MLflow being down): an MLflow model version's
        artifacts never change, so a follower reusing this object does not download them every interval."""

    # ---- entry point ---------------------------------------------------------------------------

    def sync(self, model_names: Sequence[str] | None = None) -> SyncReport:
        names = list(model_names) if model_names else self.settings.model_name_list
        if not names:
            raise InvalidInput("no MLflow registered model to sync: set MLFLOW_MODEL_NAMES or name models")
        report = SyncReport()
        for name in names:
            try:
                validate_name(name)
            except InvalidName as exc:
                report.actions.append(SyncAction(name, "refused", reason=f"{exc.message} (the filesystem registry "
                                                 "needs it; rename the MLflow registered model)"))
                continue
            try:
                self._sync_model(name, report)
            except MlflowUnavailable as exc:  # this model's listing failed; go on with the others
                report.actions.append(SyncAction(name, "refused", reason=exc.message))
        return report

    # ---- one model -----------------------------------------------------------------------------

    def _sync_model(self, name: str, report: SyncReport) -> None:
        registered = self._mlflow(lambda: self.client.get_registered_model(name), f"read registered model {name}")
        versions = self._mlflow(lambda: self.client.search_model_versions(f"name = '{name}'"),
                                f"list the versions of {name}")
        versions = sorted(versions, key=lambda mv: int(mv.version))
        outcome: dict[str, SyncAction] = {}
        for mv in versions:
            action = self._mirror(name, mv)
            outcome[str(mv.version)] = action
            report.actions.append(action)
        for stage in STAGES:
            target = self._stage_target(stage, registered, versions)
            if target is None:
                continue
            mlflow_version, why = target
            report.actions.append(self._promote(name, stage, mlflow_version, why, outcome.get(mlflow_version)))

    def _stage_target(self, stage: str, registered: Any, versions: list[Any]) -> tuple[str, str] | None:
        """(MLflow version, the alias or stage that says so) for a filesystem stage, or None."""
        aliases = _aliases(registered)
        wanted = self.settings.production_alias_list if stage == "production" else self.settings.staging_alias_list
        for alias in wanted:
            if alias in aliases:
                return aliases[alias], f"alias {alias!r}"
        if self.settings.use_deprecated_stages:
            in_stage = [mv for mv in versions if getattr(mv, "current_stage", None) == _DEPRECATED_STAGE[stage]]
            if in_stage:
                return str(in_stage[-1].version), f"deprecated stage {_DEPRECATED_STAGE[stage]!r}"
        return None

    # ---- mirroring -----------------------------------------------------------------------------

    def _mirror(self, name: str, mv: Any) -> SyncAction:
        mlflow_version = str(mv.version)
        version = f"{self.settings.version_prefix}{mlflow_version}"
        done = SyncAction(name, "unchanged", mlflow_version, version)
        existing = self._existing(name, version, mlflow_version)
        if existing is not None:
            return existing
        settled = self._settled.get((name, mlflow_version))
        if settled is not None:
            return settled
        try:
            with self.registry.upload_staging() as staging:
                action = self._download_and_register(name, mv, version, staging)
        except ContractChanged as exc:  # production declares a pre-processing step this version lacks
            action = SyncAction(name, "refused", mlflow_version, version, reason=exc.message)
        except Conflict:  # another sync registered it between our check and our write
            return self._existing(name, version, mlflow_version) or done
        except MlflowUnavailable as exc:  # transient: tried again next time
            return SyncAction(name, "refused", mlflow_version, version, reason=exc.message)
        except SignatureNotConvertible as exc:
            action = SyncAction(name, "refused", mlflow_version, version, reason=f"signature: {exc.message}")
        except ValidationFailed as exc:
            problems = exc.details.get("problems")
            action = SyncAction(name, "refused", mlflow_version, version,
                                reason=f"failed validation: {exc.message}" + (f" {problems}" if problems else ""))
        except (InvalidInput, InvalidName) as exc:
            action = SyncAction(name, "refused", mlflow_version, version, reason=exc.message)
        if action.action in ("skipped", "refused"):
            self._settled[(name, mlflow_version)] = action
        return action

    def _existing(self, name: str, version: str, mlflow_version: str) -> SyncAction | None:
        if not self.registry.layout.metadata_path(name, version).is_file():
            return None
        tags = read_metadata(self.registry.layout, name, version).tags
        if tags.get(TAG_MODEL) == name and tags.get(TAG_VERSION) == mlflow_version:
            return SyncAction(name, "unchanged", mlflow_version, version, reason="already mirrored")
        return SyncAction(name, "refused", mlflow_version, version,
                          reason=f"filesystem version {version} exists and is not the mirror of MLflow "
                                 f"{name} v{mlflow_version}; change MLFLOW_VERSION_PREFIX or remove it")

    def _download_and_register(self, name: str, mv: Any, version: str, staging: Path) -> SyncAction:
        mlflow_version = str(mv.version)
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        what = f"{name} v{mlflow_version}"
        uri = self._mlflow(lambda: self.client.get_model_version_download_uri(name, mlflow_version),
                           f"locate the artifacts of {what}")
        repo = get_artifact_repository(uri, tracking_uri=self.uri, registry_uri=self.uri)
        files = self._list_files(repo, what)
        mlmodel: dict[str, Any] = {}
        if MLMODEL_FILE in files:
            mlmodel = _read_mlmodel(self._download(repo, MLMODEL_FILE, staging))
        try:
            plan = plan_mirror(mlmodel, files)
        except NoServableArtifact as exc:
            return SyncAction(name, "skipped", mlflow_version, version, reason=exc.message)
        signature = convert_signature(mlmodel.get("signature"))
        if plan.signature is not None:
            signature = _published_signature(plan.signature, signature)
        artifacts: list[ArtifactSource] = []
        extra_files: list[Path] = []
        for wanted in plan.files:
            path = self._download(repo, wanted.path, staging)
            if wanted.format is None:
                extra_files.append(path)  # plan_mirror: its own name is its name in the version
                continue
            if wanted.format == "torchscript" and not is_torchscript_archive(path):
                return SyncAction(name, "skipped", mlflow_version, version, reason=(
                    f"{wanted.path} is a pickled PyTorch model (torch.save), not TorchScript; nothing is unpickled: "
                    "log torch.jit.script(model) / torch.jit.trace(...) or ONNX"))
            if wanted.format == "onnx":  # weights kept beside the graph come along, under the names it uses
                folder = wanted.path.rpartition("/")[0]
                for location in external_data_files(path):
                    side = f"{folder}/{location}" if folder else location
                    if side not in files:
                        raise InvalidInput(f"{wanted.path} keeps weights in {location!r}, which the model version "
                                           "does not have")
                    if location not in {Path(e).name for e in extra_files}:
                        extra_files.append(self._download(repo, side, staging))
            artifacts.append(ArtifactSource(path, wanted.format, wanted.precision, wanted.file_name))
        validation = None
        if not any(a.format == "onnx" for a in artifacts):  # the registry smoke-runs ONNX only
            if signature is None:
                raise SignatureNotConvertible("a TorchScript model version needs a tensor-based MLflow signature "
                                              "(there is no ONNX graph to read one from)")
            validation = smoke_torchscript(artifacts[0].path, signature)
        metrics, tags = self._run_record(mv)
        tags.update({str(k): str(v) for k, v in (getattr(mv, "tags", None) or {}).items()})
        tags.update({TAG_MODEL: name, TAG_VERSION: mlflow_version, TAG_FLAVOR: plan.flavor})
        for key, value in ((TAG_RUN, mv.run_id), (TAG_MODEL_ID, getattr(mv, "model_id", None)),
                           (TAG_SOURCE, mv.source)):
            if value:
                tags[key] = str(value)
        self.registry.register(
            name, version, artifacts, signature=signature, metrics=metrics, tags=tags,
            description=mv.description or "", architecture=plan.architecture,
            architecture_config=plan.architecture_config, validation=validation, extra_files=extra_files,
            actor=self.actor)
        how = "MLflow signature converted" if signature else "no MLflow signature: taken from the ONNX graph"
        files_note = ", ".join([a.file_name or a.path.name for a in artifacts] + [p.name for p in extra_files])
        return SyncAction(name, "mirrored", mlflow_version, version, reason=f"{how}; {files_note}")

    def _list_files(self, repo: Any, what: str) -> set[str]:
        """Every file path of the model version, MAX_DEPTH levels deep (deeper files are never wanted)."""
        files: set[str] = set()
        folders: list[str | None] = [None]
        while folders:
            folder = folders.pop()
            listing = self._mlflow(lambda: repo.list_artifacts(folder), f"list the artifacts of {what}")
            for info in listing:
                if info.is_dir:
                    if info.path.count("/") + 1 < MAX_DEPTH:
                        folders.append(info.path)
                else:
                    files.add(info.path)
            if len(files) > MAX_LISTED:
                raise InvalidInput(f"{what} lists more than {MAX_LISTED} files; refused")
        return files

    def _run_record(self, mv: Any) -> tuple[dict[str, float], dict[str, str]]:
        """The run's latest metrics (finite ones) and its user tags (MLflow's own ``mlflow.*`` tags left out)."""
        if not mv.run_id:
            return {}, {}
        run = self._mlflow(lambda: self.client.get_run(mv.run_id), f"read run {mv.run_id}")
        metrics = {str(k): float(v) for k, v in run.data.metrics.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        tags = {str(k): str(v) for k, v in run.data.tags.items() if not str(k).startswith("mlflow.")}
        return metrics, tags

    def _download(self, repo: Any, path: str, staging: Path) -> Path:
        """Download one file by a path checked by safe_path; it must land where that path says, as a file."""
        safe_path(path, "artifact")
        local = Path(self._mlflow(lambda: repo.download_artifacts(path, dst_path=str(staging)), f"download {path}"))
        if local.resolve() != (staging / path).resolve() or local.is_symlink() or not local.is_file():
            raise InvalidInput(f"{path} did not download as a plain file inside the staging dir: refused")
        return local

    # ---- promotion -----------------------------------------------------------------------------

    def _promote(self, name: str, stage: str, mlflow_version: str, why: str, mirrored: SyncAction | None) -> SyncAction:
        version = f"{self.settings.version_prefix}{mlflow_version}"
        if mirrored is None or mirrored.action not in ("mirrored", "unchanged"):
            cause = mirrored.reason if mirrored else "no such model version in MLflow"
            return SyncAction(name, "not_promoted", mlflow_version, version, stage,
                              reason=f"{why} points at a version that was not mirrored ({cause})")
        stages = self.registry.stages(name)
        if stages.get(stage) == version:
            return SyncAction(name, "in_stage", mlflow_version, version, stage, reason=why)
        if stage == "staging" and stages.get("production") == version:
            return SyncAction(name, "in_stage", mlflow_version, version, stage,
                              reason=f"{why} names the production version; staging left as it is")
        try:
            self.registry.promote(name, version, stage, actor=self.actor)  # type: ignore[arg-type]
        except (PromotionRefused, InvalidTransition) as exc:
            return SyncAction(name, "not_promoted", mlflow_version, version, stage, reason=f"{why}: {exc.message}")
        log.info("mlflow sync: %s %s -> %s (%s)", name, version, stage, why)
        return SyncAction(name, "promoted", mlflow_version, version, stage, reason=why)

    # ---- MLflow calls --------------------------------------------------------------------------

    def _mlflow(self, call, what: str):
        """Run an MLflow client call; its errors become MlflowUnavailable naming what was being done."""
        from mlflow.exceptions import MlflowException

        try:
            return call()
        except PredictionServiceError:
            raise
        except (MlflowException, OSError) as exc:
            raise MlflowUnavailable(f"MLflow at {_safe_uri(self.uri)}: cannot {what}: {exc}",
                                    {"tracking_uri": _safe_uri(self.uri)}) from exc


def _aliases(registered: Any) -> dict[str, str]:
    raw = getattr(registered, "aliases", None) or {}
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    return {str(a.alias): str(a.version) for a in raw}  # older clients: a list of RegisteredModelAlias


def _read_mlmodel(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the MLmodel file is not readable YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput("the MLmodel file is not a mapping")
    return data


def _published_signature(published: dict[str, Any], tensors: ModelSignature | None) -> ModelSignature:
    """The strict signature ``package --mlflow`` logged; its tensors must be the ones MLflow's signature shows."""
    try:
        signature = ModelSignature.model_validate(published)
    except ValueError as exc:
        raise SignatureNotConvertible(f"the logged prediction_service signature is not valid: {exc}") from exc
    if tensors is not None and (signature.inputs, signature.outputs) != (tensors.inputs, tensors.outputs):
        raise SignatureNotConvertible("the logged prediction_service signature and the MLflow signature disagree "
                                      "on the tensors; log the model again")
    return signature


def smoke_torchscript(path: Path, signature: ModelSignature) -> ValidationReport:
    """The registry smoke-runs ONNX only; a TorchScript-only version gets the same check here (what serving
    does: torch.jit.load, then a run on generated inputs), so it can pass the gate into production."""
    from ..registry.signature_inference import smoke_inputs
    from ..execution.runtimes import open_artifact

    inputs = smoke_inputs(signature)
    try:
        # threads=0: leave torch's process-wide thread count alone (a following server serves with it)
        outputs = open_artifact(path, "torchscript", signature, threads=0).run(inputs)
    except Exception as exc:  # noqa: BLE001 - ModelLoadError, or whatever the scripted code raises
        raise ValidationFailed(f"the TorchScript model failed its smoke run: {exc}") from exc
    rows = next(iter(inputs.values())).shape[0]
    problems = []
    for spec in signature.outputs:
        got = np.asarray(outputs.get(spec.name))
        if got.ndim != len(spec.shape) or got.shape[0] != rows or got.dtype.name != spec.dtype:
            problems.append({"output": spec.name, "expected": [spec.dtype, list(spec.shape)],
                             "got": [got.dtype.name, list(got.shape)]})
        elif got.dtype.kind == "f" and not np.isfinite(got).all():
            problems.append({"output": spec.name, "problem": "NaN or Inf on smoke inputs"})
    if problems:
        raise ValidationFailed("model outputs do not match the signature", {"problems": problems})
    return ValidationReport(passed=True, kind="smoke", details={"runtime": "torchscript", "rows": rows})


def _safe_uri(uri: str) -> str:
    """The tracking URI without credentials (user:password@host) for messages."""
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return uri
