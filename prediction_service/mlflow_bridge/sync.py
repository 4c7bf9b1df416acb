"""One-shot sync from an MLflow Model Registry into the filesystem registry.

For each configured registered model, every MLflow model version with an ONNX artifact (the ``onnx``
flavour of its MLmodel file, or a plain ``model.onnx`` at the model's root) becomes the filesystem version
``<prefix><n>`` (``mlflow-3``) through ``ModelRegistry.register``: the file is copied and hashed, the MLflow
signature is converted to the strict one, and the registry's smoke run checks the ONNX against it. The
MLflow run id, run metrics and tags are recorded in metadata.json. Then the aliases that mean production /
staging become ``ModelRegistry.promote`` calls, through the same validation gate as any promotion.

Safety: only two files are ever downloaded per version (MLmodel, parsed with yaml.safe_load, and the ONNX
file), by names that must be plain file names (no path can leave the staging dir), into a private staging
dir on the store's filesystem. Nothing from MLflow is loaded as code. Idempotent: a version already
mirrored (its metadata names the same MLflow model and version) is not downloaded again, a stage already
on its version is not moved. Concurrent syncs (several pods) serialize on the registry's per-model lock; the
loser of a race for the same version sees Conflict and reports the version as already mirrored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import Conflict, InvalidInput, InvalidName, PredictionServiceError, ServiceUnavailable, ValidationFailed
from ..registry.errors import InvalidTransition, PromotionRefused
from ..registry.layout import validate_file_name, validate_name
from ..registry.reconcile import read_metadata
from ..registry.store import ModelRegistry
from ..registry.writer import ArtifactSource
from ..settings import MlflowSettings
from .signature import SignatureNotConvertible, convert_signature

log = logging.getLogger(__name__)

MLMODEL_FILE = "MLmodel"
PLAIN_ONNX_FILE = "model.onnx"
ARTIFACT_FILE = "model.onnx"
"""Name of the ONNX artifact inside the filesystem version, whatever MLflow called it."""
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
        try:
            with self.registry.upload_staging() as staging:
                return self._download_and_register(name, mv, version, staging)
        except Conflict:  # another sync registered it between our check and our write
            return self._existing(name, version, mlflow_version) or done
        except SignatureNotConvertible as exc:
            return SyncAction(name, "refused", mlflow_version, version, reason=f"signature: {exc.message}")
        except ValidationFailed as exc:
            problems = exc.details.get("problems")
            return SyncAction(name, "refused", mlflow_version, version,
                              reason=f"failed validation: {exc.message}" + (f" {problems}" if problems else ""))
        except MlflowUnavailable as exc:
            return SyncAction(name, "refused", mlflow_version, version, reason=exc.message)
        except (InvalidInput, InvalidName) as exc:
            return SyncAction(name, "refused", mlflow_version, version, reason=exc.message)

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

        uri = self._mlflow(lambda: self.client.get_model_version_download_uri(name, mlflow_version),
                           f"locate the artifacts of {name} v{mlflow_version}")
        repo = get_artifact_repository(uri, tracking_uri=self.uri, registry_uri=self.uri)
        listing = self._mlflow(lambda: repo.list_artifacts(), f"list the artifacts of {name} v{mlflow_version}")
        files = {info.path.rsplit("/", 1)[-1] for info in listing if not info.is_dir}
        mlmodel: dict[str, Any] = {}
        if MLMODEL_FILE in files:
            mlmodel = _read_mlmodel(Path(self._download(repo, MLMODEL_FILE, staging)))
        flavors = mlmodel.get("flavors") or {}
        if "onnx" in flavors:
            onnx_name, flavor = str((flavors["onnx"] or {}).get("data") or PLAIN_ONNX_FILE), "onnx"
        elif PLAIN_ONNX_FILE in files:
            onnx_name, flavor = PLAIN_ONNX_FILE, "plain"
        else:
            kinds = ", ".join(sorted(flavors)) or "none"
            return SyncAction(name, "skipped", mlflow_version, version,
                              reason=f"no ONNX artifact (flavours: {kinds}); nothing from MLflow is executed, so "
                                     "only ONNX versions are mirrored")
        try:  # MLmodel is MLflow's data: a path in it must not lead out of the staging dir
            validate_file_name(onnx_name)
        except InvalidName as exc:
            raise InvalidInput(f"the ONNX artifact path {onnx_name!r} is not a plain file name: refused") from exc
        if onnx_name not in files:
            raise InvalidInput(f"MLmodel names {onnx_name!r} but the model version has no such file")
        signature = convert_signature(mlmodel.get("signature"))
        onnx_path = Path(self._download(repo, onnx_name, staging))
        if onnx_path.resolve().parent != staging.resolve() or not onnx_path.is_file():
            raise InvalidInput(f"the ONNX artifact of {name} v{mlflow_version} did not download as a plain file")
        _refuse_external_data(onnx_path)
        metrics, tags = self._run_record(mv)
        tags.update({str(k): str(v) for k, v in (getattr(mv, "tags", None) or {}).items()})
        tags.update({TAG_MODEL: name, TAG_VERSION: mlflow_version, TAG_FLAVOR: flavor})
        for key, value in ((TAG_RUN, mv.run_id), (TAG_MODEL_ID, getattr(mv, "model_id", None)),
                           (TAG_SOURCE, mv.source)):
            if value:
                tags[key] = str(value)
        self.registry.register(
            name, version, [ArtifactSource(onnx_path, "onnx", file_name=ARTIFACT_FILE)], signature=signature,
            metrics=metrics, tags=tags, description=mv.description or "", actor=self.actor)
        how = "MLflow signature converted" if signature else "no MLflow signature: taken from the ONNX graph"
        return SyncAction(name, "mirrored", mlflow_version, version, reason=how)

    def _run_record(self, mv: Any) -> tuple[dict[str, float], dict[str, str]]:
        """The run's latest metrics (finite ones) and its user tags (MLflow's own ``mlflow.*`` tags left out)."""
        if not mv.run_id:
            return {}, {}
        run = self._mlflow(lambda: self.client.get_run(mv.run_id), f"read run {mv.run_id}")
        metrics = {str(k): float(v) for k, v in run.data.metrics.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        tags = {str(k): str(v) for k, v in run.data.tags.items() if not str(k).startswith("mlflow.")}
        return metrics, tags

    def _download(self, repo: Any, file_name: str, staging: Path) -> str:
        return self._mlflow(lambda: repo.download_artifacts(file_name, dst_path=str(staging)),
                            f"download {file_name}")

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


def _refuse_external_data(onnx_path: Path) -> None:
    """A version is one self-contained ONNX file; weights in side files (MLflow's save_as_external_data for
    models over the size threshold) are not mirrored yet, so such a version is refused rather than half copied."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError / OSError for bad files
        raise InvalidInput(f"the ONNX artifact is not a readable ONNX model: {exc}") from exc
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise InvalidInput("the ONNX artifact keeps its weights in external data files, which are not mirrored; "
                           "log it with mlflow.onnx.log_model(..., save_as_external_data=False)")


def _safe_uri(uri: str) -> str:
    """The tracking URI without credentials (user:password@host) for messages."""
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return uri
