"""Side-by-side comparison of two versions: metric deltas, serving-contract, signature and artifact differences."""

from __future__ import annotations

from pydantic import BaseModel

from ..signature import ModelSignature
from .contract import ContractChange, ServingContract
from .model_version import VersionMetadata


class MetricDelta(BaseModel):
    metric: str
    a: float | None
    b: float | None
    delta: float | None
    """b - a, when both have the metric."""
    relative: float | None
    """(b - a) / |a|, when both have it and a != 0."""


class TensorChange(BaseModel):
    side: str
    """inputs or outputs."""
    name: str
    a: str | None
    """``dtype[shape]`` in version a, None when absent."""
    b: str | None


class ArtifactChange(BaseModel):
    file: str
    a_sha256: str | None
    b_sha256: str | None


class VersionComparison(BaseModel):
    model: str
    a: str
    b: str
    status: tuple[str, str]
    metrics: list[MetricDelta]
    signature_changes: list[TensorChange]
    artifact_changes: list[ArtifactChange]
    """Files only in one version, or with different content."""
    contract_changes: list[ContractChange] = []
    """Every difference of the serving contract (contract.py: tensors, pre-processing steps and their
    parameters, the vocabulary, labels, task): what promoting b over a would refuse without the override."""

    @property
    def same_signature(self) -> bool:
        return not self.signature_changes

    @property
    def same_contract(self) -> bool:
        return not self.contract_changes


def compare_versions(a: VersionMetadata, b: VersionMetadata,
                     contract_changes: list[ContractChange] | None = None) -> VersionComparison:
    """``contract_changes``: from the versions' directories (a text step's vocabulary is a file there);
    None: from the metadata alone."""
    if contract_changes is None:
        contract_changes = ServingContract.from_metadata(a).differences(ServingContract.from_metadata(b))
    return VersionComparison(
        model=a.name, a=a.version, b=b.version, status=(a.status, b.status),
        metrics=_metric_deltas(a.metrics, b.metrics),
        signature_changes=_signature_changes(a.signature, b.signature),
        artifact_changes=_artifact_changes(a, b), contract_changes=contract_changes,
    )


def _metric_deltas(a: dict[str, float], b: dict[str, float]) -> list[MetricDelta]:
    rows = []
    for metric in sorted(a.keys() | b.keys()):
        va, vb = a.get(metric), b.get(metric)
        delta = vb - va if va is not None and vb is not None else None
        relative = delta / abs(va) if delta is not None and va else None
        rows.append(MetricDelta(metric=metric, a=va, b=vb, delta=delta, relative=relative))
    return rows


def _describe(signature: ModelSignature, side: str) -> dict[str, str]:
    return {s.name: f"{s.dtype}{list(s.shape)}" for s in getattr(signature, side)}


def _signature_changes(a: ModelSignature, b: ModelSignature) -> list[TensorChange]:
    changes = []
    for side in ("inputs", "outputs"):
        da, db = _describe(a, side), _describe(b, side)
        for name in sorted(da.keys() | db.keys()):
            if da.get(name) != db.get(name):
                changes.append(TensorChange(side=side, name=name, a=da.get(name), b=db.get(name)))
    return changes


def _artifact_changes(a: VersionMetadata, b: VersionMetadata) -> list[ArtifactChange]:
    sa = {art.file: art.sha256 for art in a.artifacts}
    sb = {art.file: art.sha256 for art in b.artifacts}
    return [ArtifactChange(file=f, a_sha256=sa.get(f), b_sha256=sb.get(f))
            for f in sorted(sa.keys() | sb.keys()) if sa.get(f) != sb.get(f)]
