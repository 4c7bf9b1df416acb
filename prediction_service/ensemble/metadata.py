"""What every front door says about an ensemble: OIP/gRPC model metadata and readiness, and the /v1
model list and detail. The ensemble servable hands metadata requests here (a set lookup, as
for inference), so no route assembles any of it.

An ensemble takes the raw inputs its members pre-process (``bars`` for the price member, ``text`` for
the sentiment member) and answers the combiner's four outputs, float64, one value per row. It is ready
when every member's version (the one its stage serves, or the pinned one) is loaded in this worker.

The /v1 list entry and detail are typed (``EnsembleSummary``, ``EnsembleDetail``); the route encodes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from ..errors import PredictionServiceError, VersionNotFound
from ..types import ModelMetadata, RawInput, TensorMetadata
from ..registry.model_version import Status
from .combiners import OUTPUTS, Combiner
from .gateway import MemberGateway
from .spec import ENSEMBLE_BACKEND, Ensemble, EnsembleMember
from .store import EnsembleRegistry

KIND = "ensemble"
"""``kind`` of an ensemble in the /v1 model list (model entries are unchanged and carry no ``kind``)."""
INPUTS = (TensorMetadata(RawInput.BARS, "float64", (-1, -1, 5)), TensorMetadata(RawInput.TEXT, "object", (-1,)))
OUTPUT_TENSORS = tuple(TensorMetadata(name, "float64", (-1, 1)) for name in OUTPUTS)


@dataclass(frozen=True, kw_only=True)
class EnsembleSummary:
    """An ensemble's /v1 model-list entry: ModelSummary's fields, plus ``kind``. An ensemble has no
    artifact of its own, so nothing of it is loaded (``loaded_versions`` is empty)."""

    name: str
    versions: tuple[str, ...]
    """Oldest first."""
    stages: Mapping[str, str | None]
    """Stage -> the version it points to (None: no version)."""
    kind: str = KIND
    loaded_versions: tuple[str, ...] = ()


@dataclass(frozen=True)
class MemberStatus:
    """A member as the detail shows it: what the ensemble names, what it serves now, whether it is ready."""

    member: EnsembleMember
    serves: str | None
    """The member model's version a request would run now (None: it cannot be resolved)."""
    ready: bool
    problem: str | None = None
    """Why it cannot be resolved (only then)."""


@dataclass(frozen=True)
class EnsembleVersionInfo:
    version: str
    status: Status
    sha256: str
    """Of ensemble.json."""
    created_at: datetime
    description: str


@dataclass(frozen=True, kw_only=True)
class EnsembleDetail(EnsembleSummary):
    """GET /v1/models/{ensemble}: the summary, the version described (production's, else the newest),
    its members, combiner, inputs and outputs, and every version."""

    version: str
    ready: bool
    """Every member is ready."""
    members: tuple[MemberStatus, ...]
    combiner: Combiner
    inputs: tuple[TensorMetadata, ...] = INPUTS
    outputs: tuple[TensorMetadata, ...] = OUTPUT_TENSORS
    versions_detail: tuple[EnsembleVersionInfo, ...]


def describe_version(registry: EnsembleRegistry, name: str, version: str | None) -> Ensemble:
    """``version``, or production's, or the newest when nothing is in production (as for models)."""
    if version is not None:
        found = registry.get(name, version)
        stage = next((s for s, v in registry.stages(name).items() if v == version), None)
        return found.model_copy(update={"stage": stage})
    try:
        return registry.resolve(name)
    except VersionNotFound:
        return registry.versions(name)[-1]


def member_ready(members: MemberGateway, member: EnsembleMember) -> bool:
    """The member's version this worker would run is loaded; a member that cannot be resolved is not ready."""
    try:
        if member.version is None and member.followed_stage != "production":
            version = members.declared(member.model, None, member.followed_stage).version
            return members.ready(member.model, version)
        return members.ready(member.model, member.version)
    except PredictionServiceError:
        return False


def ready(members: MemberGateway, ensemble: Ensemble) -> bool:
    return all(member_ready(members, member) for member in ensemble.metadata.members)


def model_metadata(members: MemberGateway, registry: EnsembleRegistry, name: str,
                   version: str | None) -> ModelMetadata:
    ensemble = describe_version(registry, name, version)
    batch = []
    for member in ensemble.metadata.members:
        try:
            batch.append(members.declared(member.model, member.version,
                                          member.followed_stage).signature.max_batch_size)
        except PredictionServiceError:
            continue  # an unavailable member says nothing about batching; readiness says it is not ready
    inputs = {tensor.name: tensor for tensor in INPUTS}
    return ModelMetadata(
        name=name, version=ensemble.version, versions=tuple(e.version for e in registry.versions(name)),
        stage=ensemble.stage, platform=ENSEMBLE_BACKEND, backend=ENSEMBLE_BACKEND, inputs=(),
        outputs=OUTPUT_TENSORS, max_batch_size=min(batch) if batch else 1, task="regression", labels=None,
        text_input=inputs[RawInput.TEXT], bars_input=inputs[RawInput.BARS], loaded=ready(members, ensemble))


def summary(registry: EnsembleRegistry, name: str) -> EnsembleSummary:
    """One /v1 model-list entry."""
    return EnsembleSummary(name=name, versions=tuple(e.version for e in registry.versions(name)),
                           stages=registry.stages(name))


def detail(gateway: MemberGateway, registry: EnsembleRegistry, name: str) -> EnsembleDetail:
    """GET /v1/models/{ensemble}: its versions and stages, members (with what each serves and whether it
    is ready), the combiner, inputs and outputs."""
    current = describe_version(registry, name, None)
    members = []
    for member in current.metadata.members:
        try:
            serves = gateway.declared(member.model, member.version, member.followed_stage).version
        except PredictionServiceError as exc:
            serves, problem = None, exc.message
        else:
            problem = None
        members.append(MemberStatus(member, serves, member_ready(gateway, member), problem))
    versions = registry.versions(name)
    return EnsembleDetail(
        name=name, versions=tuple(e.version for e in versions), stages=registry.stages(name),
        version=current.version, ready=all(m.ready for m in members), members=tuple(members),
        combiner=current.metadata.combiner,
        versions_detail=tuple(EnsembleVersionInfo(e.version, e.metadata.status, e.sha256, e.metadata.created_at,
                                                  e.metadata.description) for e in versions))
