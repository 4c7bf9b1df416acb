"""Serving an ensemble: split one request between the members, run them concurrently through the members'
gateway (each member resolved, A/B-routed, pre-processed, validated, run and recorded like any model),
then combine with the ensemble's shipped combiner. The runner is the ensemble servable: the data plane
dispatches to it by name, and it reaches the models only through ``MemberGateway``.

The result is an ordinary ``InferenceResult`` (so /v1, OIP REST and gRPC encode it unchanged) whose
provenance names the ensemble version and every member's version, stage, arm and artifact.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..security.auth import VersionAccess
from ..errors import InvalidInput, ModelLoadError, NotFound, PredictionServiceError, ServiceUnavailable
from ..types import (InferenceRequest, InferenceResult, ModelMetadata, PredictionRecord, Provenance,
                     RawInput, RequestContext, Selector)
from ..registry import ModelVersion
from .combiners import OUTPUTS
from .errors import MemberUnavailable
from .gateway import MemberGateway
from . import metadata as descriptions
from . import triton_path
from .spec import ENSEMBLE_BACKEND, ENSEMBLE_FILE, Ensemble, EnsembleMember
from .store import EnsembleCatalog

RAW_INPUT = {"price": RawInput.BARS, "sentiment": RawInput.TEXT}
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
    """The ensemble servable: ``is_ensemble`` on every request (a set lookup, see EnsembleCatalog: the set is
    refreshed off the event loop by ``refresh``), then ``infer``, ``metadata`` and ``ready`` for ensembles."""

    def __init__(self, catalog: EnsembleCatalog, members: MemberGateway, access: VersionAccess):
        self.catalog = catalog
        self.registry = catalog.registry
        self.members = members
        self.access = access
        self.native = triton_path.NativeEnsembles()
        """Backend-generated ensembles (Triton's ensemble_scheduling), used when the adapter has them."""

    def is_ensemble(self, name: str) -> bool:
        return self.catalog.is_ensemble(name)

    def refresh(self) -> bool:
        """Rescan which names are ensembles (blocking: the model manager runs it in a thread)."""
        return self.catalog.refresh()

    # ---- metadata and readiness (the data plane's metadata section hands ensembles here) ------------

    def metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        return descriptions.model_metadata(self.members, self.registry, name, version)

    def ready(self, name: str, version: str | None = None) -> bool:
        """Ready when every member's version is loaded (unknown ensemble or version: NotFound, as for models)."""
        return descriptions.ready(self.members, descriptions.describe_version(self.registry, name, version))

    def summaries(self) -> list[descriptions.EnsembleSummary]:
        return [descriptions.summary(self.registry, name) for name in self.registry.names()]

    def detail(self, name: str) -> descriptions.EnsembleDetail:
        return descriptions.detail(self.members, self.registry, name)

    # ---- inference -----------------------------------------------------------------------------------

    def resolve_cached(self, name: str, selector: Selector) -> Ensemble | None:
        """The ensemble a stage selects, without reading ensemble.json (None: ask ``registry.resolve``)."""
        if selector.version is not None:
            return None
        return self.registry.resolve_cached(name, selector.stage or "production")

    async def infer(self, name: str, request: InferenceRequest, context: RequestContext,
                    record: PredictionRecord) -> InferenceResult:
        selector = request.selector
        _check_outputs(name, request.outputs)
        ensemble = self.resolve_cached(name, selector)
        if ensemble is None:  # first request, or the stage link / ensemble.json changed: read it off the loop
            ensemble = await asyncio.to_thread(self.registry.resolve, name, selector.version, selector.stage)
        record.version, record.stage, record.backend = ensemble.version, ensemble.stage, ENSEMBLE_BACKEND
        if selector.version is not None and self.access.enabled:
            unstaged = (ensemble.metadata.status == "archived"
                        or ensemble.version not in self.registry.stages(name).values())
            what = "an ensemble version no stage serves" if unstaged else "an explicit ensemble version"
            self.access.check(what, unstaged=unstaged, context=context)
        members = {m.role: m for m in ensemble.metadata.members}
        for member in members.values():  # a pinned member version is one the caller runs: the same access rule
            if member.version is not None:
                self.members.check_access(member.model, member.version, context)
        versions = {role: self._member_version(ensemble, member) for role, member in members.items()}
        split = split_inputs(ensemble, request.inputs, versions)
        started = time.perf_counter()
        backend = self.members.native_backend()
        if backend is not None and not self._member_experiments(ensemble, selector):
            served = await self._run_native(backend, ensemble, split, context)
            if served is not None:
                outputs, member_provenance = served
                return _result(ensemble, context, outputs, member_provenance, started)
        results = await asyncio.gather(
            *(self._run_member(ensemble, members[role], split[role], selector, context)
              for role in ("price", "sentiment")), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        price, sentiment = results
        outputs = combine(ensemble, price, sentiment)
        members = tuple(_member_provenance(role, result) for role, result in (("price", price),
                                                                            ("sentiment", sentiment)))
        return _result(ensemble, context, outputs, members, started)

    async def _run_native(self, backend: triton_path.EnsembleBackend, ensemble: Ensemble,
                          split: dict[str, dict[str, Any]], context: RequestContext
                          ) -> tuple[dict[str, np.ndarray], tuple[MemberProvenance, ...]] | None:
        """The backend's own ensemble over the members' tensors; None hands the request to the in-process
        combination (the backend refused or lost the generated ensemble)."""
        members = {m.role: m for m in ensemble.metadata.members}
        targets: dict[str, ModelVersion] = {}
        for role, member in members.items():  # loaded as a member request would load it
            try:
                targets[role] = await self.members.load(member.model, member.version, member.followed_stage)
            except (NotFound, ModelLoadError) as exc:
                raise _unavailable(ensemble, member, exc) from exc
        entry = self.native.entry(backend, ensemble, targets)
        if entry is None:  # being generated (or refused): this request combines in-process
            return None
        arrays: dict[str, dict[str, np.ndarray]] = {}
        for role, target in targets.items():  # the same pre-processing and validation as a member request
            arrays[role] = await self.members.preprocess(target, split[role])
        rows = next(iter(arrays["price"].values())).shape[0]
        sentiment_rows = next(iter(arrays["sentiment"].values())).shape[0]
        if sentiment_rows != rows:
            _check_rows(ensemble, rows, sentiment_rows)
            arrays["sentiment"] = triton_path.repeat_rows(arrays["sentiment"], rows)
        started = time.perf_counter()
        try:
            async with self.members.serving(targets["price"]), self.members.serving(targets["sentiment"]):
                outputs = await backend.predict_ensemble(entry, {**arrays["price"], **arrays["sentiment"]},
                                                         deadline=context.deadline)
        except ServiceUnavailable as exc:
            if exc.code != "backend_model_missing":
                raise
            self.native.forget(ensemble)  # Triton restarted: regenerate next time, combine in-process now
            return None
        elapsed_ms = round((time.perf_counter() - started) * 1000.0, 3)
        stages = {role: target.stage or self.members.stage_of(target) for role, target in targets.items()}
        provenance = tuple(
            MemberProvenance(role=role, model=target.name, version=target.version, stage=stages[role], arm=None,
                             request_id=context.request_id, inference_time_ms=elapsed_ms,
                             provenance=self.members.provenance(target))
            for role, target in targets.items())
        return outputs, provenance

    def _member_version(self, ensemble: Ensemble, member: EnsembleMember) -> ModelVersion:
        """What the member serves now (for routing the request's inputs); missing -> 503 naming it."""
        try:
            return self.members.declared(member.model, member.version, member.followed_stage)
        except NotFound as exc:
            raise _unavailable(ensemble, member, exc) from exc

    async def _run_member(self, ensemble: Ensemble, member: EnsembleMember,
                          inputs: dict[str, Any], selector: Selector, context: RequestContext) -> InferenceResult:
        # A member followed in production is asked with no stage, as any production request is, so an A/B
        # experiment on the member model splits its traffic too.
        member_selector = Selector(version=member.version,
                                   stage=None if member.followed_stage == "production" else member.followed_stage,
                                   routing_key=selector.routing_key)
        # The caller's own scope: a pinned version is one the caller runs, so its access rule applies.
        member_context = RequestContext(deadline=context.deadline, received_at=context.received_at,
                                        api_key_id=context.api_key_id, scope=context.scope, protocol=context.protocol)
        try:
            return await self.members.infer(member.model, member_selector, inputs, member_context)
        except (NotFound, ModelLoadError) as exc:
            raise _unavailable(ensemble, member, exc) from exc
        except ServiceUnavailable as exc:
            if isinstance(exc, MemberUnavailable):
                raise
            exc.details = {**exc.details, "ensemble": ensemble.name, "member": member.role, "model": member.model}
            raise

    def _member_experiments(self, ensemble: Ensemble, selector: Selector) -> bool:
        """Whether an A/B experiment runs on a member this request would route: its split happens per member
        request, which a backend's ensemble with fixed member entries would bypass."""
        return any(member.followed_stage == "production"
                   and self.members.routes_experiment(member.model, selector.routing_key)
                   for member in ensemble.metadata.members)


def _check_outputs(name: str, requested: tuple[str, ...] | None) -> None:
    unknown = [output for output in requested or () if output not in OUTPUTS]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown} for model {name!r}; it has {sorted(OUTPUTS)}",
                           {"unknown": unknown, "outputs": sorted(OUTPUTS)})


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
        _check_rows(ensemble, rows, sentiment_rows)
        probabilities = np.repeat(probabilities, rows, axis=0)
    labels = sentiment.processing.signature.labels  # checked against the combiner at registration
    return ensemble.metadata.combiner.combine(price_values, probabilities, labels).outputs()


def _check_rows(ensemble: Ensemble, rows: int, sentiment_rows: int) -> None:
    if sentiment_rows != 1:
        raise InvalidInput(f"ensemble {ensemble.name}: {rows} bars windows but {sentiment_rows} texts; send "
                           "one text per window, or one text for all", {"price_rows": rows,
                                                                       "sentiment_rows": sentiment_rows})


def _result(ensemble: Ensemble, context: RequestContext, outputs: dict[str, np.ndarray],
            members: tuple[MemberProvenance, ...], started: float) -> InferenceResult:
    provenance = EnsembleProvenance(backend=ENSEMBLE_BACKEND, artifact=ENSEMBLE_FILE, format=ENSEMBLE_BACKEND,
                                    precision="", sha256=ensemble.sha256, members=members)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    return InferenceResult(model=ensemble.name, version=ensemble.version, stage=ensemble.stage, arm=None,
                           experiment_id=None, request_id=context.request_id,
                           inference_time_ms=round(elapsed_ms, 3), outputs=outputs, provenance=provenance,
                           processing=EnsembleProcessing())  # type: ignore[arg-type]


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
