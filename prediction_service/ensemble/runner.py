"""Serving an ensemble: split one request between the members, run them concurrently through the normal
data plane (each member resolved, A/B-routed, pre-processed, validated, run and recorded like any model),
then combine with the ensemble's shipped combiner.

The result is an ordinary ``InferenceResult`` (so /v1, OIP REST and gRPC encode it unchanged) whose
provenance names the ensemble version and every member's version, stage, arm and artifact.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..auth import Scope
from ..errors import InvalidInput, ModelLoadError, NotFound, PredictionServiceError, ServiceUnavailable
from ..inference import (BARS_INPUT, TEXT_INPUT, InferenceResult, PredictionRecord, Provenance, RequestContext,
                         Selector)
from ..registry import ModelVersion
from .combiners import OUTPUTS
from .errors import MemberUnavailable
from .spec import ENSEMBLE_FILE, Ensemble, EnsembleMember
from .store import EnsembleCatalog

if TYPE_CHECKING:
    from ..dataplane import DataPlane

ENSEMBLE_BACKEND = "ensemble"
RAW_INPUT = {"price": BARS_INPUT, "sentiment": TEXT_INPUT}
"""The raw input each role takes besides its model's own tensors."""


@dataclass(frozen=True)
class MemberProvenance:
    role: str
    model: str
    version: str
    stage: str | None
    arm: str | None
    request_id: str
    inference_time_ms: float
    provenance: Provenance

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "model": self.model, "version": self.version, "stage": self.stage,
                "arm": self.arm, "request_id": self.request_id, "inference_time_ms": self.inference_time_ms,
                **self.provenance.as_dict()}


@dataclass(frozen=True)
class EnsembleProvenance(Provenance):
    """An ensemble's provenance: ensemble.json's hash as the artifact, plus every member's own."""

    members: tuple[MemberProvenance, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "members": [member.as_dict() for member in self.members]}

    def member_versions(self) -> dict[str, str]:
        """role -> "model:version", for protocols whose provenance is flat strings (OIP parameters)."""
        return {member.role: f"{member.model}:{member.version}" for member in self.members}


class EnsembleProcessing:
    """Per-row predictions of an ensemble result: the combined value, its confidence and the components."""

    def predictions(self, outputs: dict[str, np.ndarray]) -> list[dict[str, float]]:
        columns = [outputs[name].reshape(-1) for name in OUTPUTS]
        return [{name: float(column[row]) for name, column in zip(OUTPUTS, columns)}
                for row in range(columns[0].shape[0])]


class EnsembleRunner:
    """The data plane's hook: ``is_ensemble`` on every request (a set lookup), ``infer`` for ensembles."""

    def __init__(self, catalog: EnsembleCatalog):
        self.catalog = catalog
        self.registry = catalog.registry

    def is_ensemble(self, name: str) -> bool:
        return self.catalog.is_ensemble(name)

    async def infer(self, dataplane: "DataPlane", name: str, selector: Selector, inputs: dict[str, Any],
                    context: RequestContext, record: PredictionRecord | None = None) -> InferenceResult:
        ensemble = await asyncio.to_thread(self.registry.resolve, name, selector.version, selector.stage)
        if record is not None:
            record.version, record.stage, record.backend = ensemble.version, ensemble.stage, ENSEMBLE_BACKEND
        members = {m.role: m for m in ensemble.metadata.members}
        versions = {role: self._member_version(ensemble, member, dataplane) for role, member in members.items()}
        split = split_inputs(ensemble, inputs, versions)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(self._run_member(dataplane, ensemble, members[role], split[role], selector, context)
              for role in ("price", "sentiment")), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        price, sentiment = results
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        outputs = combine(ensemble, price, sentiment)
        provenance = EnsembleProvenance(
            backend=ENSEMBLE_BACKEND, artifact=ENSEMBLE_FILE, format=ENSEMBLE_BACKEND, precision="",
            sha256=ensemble.sha256,
            members=tuple(_member_provenance(role, result) for role, result in (("price", price),
                                                                              ("sentiment", sentiment))))
        return InferenceResult(model=name, version=ensemble.version, stage=ensemble.stage, arm=None,
                               experiment_id=None, request_id=context.request_id,
                               inference_time_ms=round(elapsed_ms, 3), outputs=outputs, provenance=provenance,
                               processing=EnsembleProcessing())  # type: ignore[arg-type]

    def _member_version(self, ensemble: Ensemble, member: EnsembleMember, dataplane: "DataPlane") -> ModelVersion:
        """What the member serves now (for routing the request's inputs); missing -> 503 naming it."""
        try:
            return dataplane.manager.reader.resolve(member.model, member.version, member.followed_stage)
        except NotFound as exc:
            raise _unavailable(ensemble, member, exc) from exc

    async def _run_member(self, dataplane: "DataPlane", ensemble: Ensemble, member: EnsembleMember,
                          inputs: dict[str, Any], selector: Selector, context: RequestContext) -> InferenceResult:
        # A member followed in production is asked with no stage, as any production request is, so an A/B
        # experiment on the member model splits its traffic too.
        member_selector = Selector(version=member.version,
                                   stage=None if member.followed_stage == "production" else member.followed_stage,
                                   routing_key=selector.routing_key)
        # A pinned member version was chosen by whoever registered the ensemble (an admin), not by the caller.
        scope = Scope.ADMIN if member.version is not None else context.scope
        member_context = RequestContext(deadline=context.deadline, received_at=context.received_at,
                                        api_key_id=context.api_key_id, scope=scope, protocol=context.protocol)
        try:
            return await dataplane.infer(member.model, member_selector, inputs, member_context)
        except (NotFound, ModelLoadError) as exc:
            raise _unavailable(ensemble, member, exc) from exc
        except ServiceUnavailable as exc:
            if isinstance(exc, MemberUnavailable):
                raise
            exc.details = {**exc.details, "ensemble": ensemble.name, "member": member.role, "model": member.model}
            raise


def split_inputs(ensemble: Ensemble, inputs: dict[str, Any],
                 versions: dict[str, ModelVersion]) -> dict[str, dict[str, Any]]:
    """The request's inputs per member: ``bars`` (or the price model's tensors) and ``text`` (or the
    sentiment model's tensors); anything else, or a member left without input, is a 422 saying what to send."""
    accepts = {role: {RAW_INPUT[role], *(spec.name for spec in version.signature.inputs)}
               for role, version in versions.items()}
    split: dict[str, dict[str, Any]] = {role: {} for role in accepts}
    expected = {role: sorted(names) for role, names in accepts.items()}
    for key, value in inputs.items():
        owners = [role for role, names in accepts.items() if key in names]
        if len(owners) != 1:
            why = "is not an input of any member" if not owners else "is an input of both members"
            raise InvalidInput(f"ensemble {ensemble.name}: input {key!r} {why}", {"expected": expected})
        split[owners[0]][key] = value
    empty = [role for role, given in split.items() if not given]
    if empty:
        raise InvalidInput(f"ensemble {ensemble.name} needs input for its {' and '.join(empty)} member(s): send "
                           + " and ".join(f"{RAW_INPUT[role]!r} (or {expected[role]})" for role in empty),
                           {"expected": expected})
    return split


def combine(ensemble: Ensemble, price: InferenceResult, sentiment: InferenceResult) -> dict[str, np.ndarray]:
    """The combiner over the members' first outputs; one headline may serve every bars window."""
    price_values = next(iter(price.outputs.values()))
    probabilities = next(iter(sentiment.outputs.values()))
    rows, sentiment_rows = price_values.shape[0], probabilities.shape[0]
    if sentiment_rows != rows:
        if sentiment_rows != 1:
            raise InvalidInput(f"ensemble {ensemble.name}: {rows} bars windows but {sentiment_rows} texts; send "
                               "one text per window, or one text for all", {"price_rows": rows,
                                                                           "sentiment_rows": sentiment_rows})
        probabilities = np.repeat(probabilities, rows, axis=0)
    labels = sentiment.processing.signature.labels  # checked against the combiner at registration
    return ensemble.metadata.combiner.combine(price_values, probabilities, labels).outputs()


def _member_provenance(role: str, result: InferenceResult) -> MemberProvenance:
    return MemberProvenance(role=role, model=result.model, version=result.version, stage=result.stage,
                            arm=result.arm, request_id=result.request_id,
                            inference_time_ms=result.inference_time_ms, provenance=result.provenance)


def _unavailable(ensemble: Ensemble, member: EnsembleMember, exc: PredictionServiceError) -> MemberUnavailable:
    return MemberUnavailable(
        f"ensemble {ensemble.name} {ensemble.version}: its {member.role} member {member.describe()} is "
        f"unavailable: {exc.message}",
        {"ensemble": ensemble.name, "version": ensemble.version, "member": member.role, "model": member.model,
         "stage": member.followed_stage, "member_version": member.version, "reason": exc.code})
