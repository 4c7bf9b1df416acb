"""The protocol-agnostic request flow on numpy tensors: admit -> resolve -> route (A/B) -> pre-process and
validate -> run -> provenance. Model metadata and readiness come from here too, for every front door.

Every front door (REST /v1, Open Inference Protocol REST and gRPC) decodes its wire format into
``dict[str, np.ndarray]`` + ``Selector`` and encodes the ``InferenceResult``; none of them imports another,
and nothing here imports FastAPI or protobuf.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from .adapters.base import LoadedModel, ServingAdapter
from .auth import Scope
from .errors import (DeadlineExceeded, Forbidden, ModelNotFound, Overloaded, PredictionServiceError,
                     ServiceUnavailable, Unauthorized)
from .inference import (InferenceResult, ModelMetadata, PredictionObserver, PredictionRecord, Provenance,
                        Readiness, RequestContext, Selector, TensorMetadata, BARS_INPUT, TEXT_INPUT)
from .model_manager import ModelManager
from .ensemble.runner import EnsembleRunner  # ensemble hook (issue 19)
from .ensemble.metadata import EnsembleDetail, EnsembleSummary
from .ensemble.store import EnsembleCatalog
from .processing import ModelProcessing
from .registry import ModelVersion, validate_name
from .settings import Settings

log = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499
"""Status recorded for a request its caller cancelled (nginx's convention; never sent)."""

ReadinessCheck = Callable[[], list[str]]
"""Extra readiness conditions (e.g. the audit log): the reasons it is not ready, empty when it is."""


class ExperimentRouter(Protocol):
    """experiments.ExperimentService, as the data plane uses it."""

    def route(self, model_name: str, routing_key: str | None = None) -> Any: ...

    def record_prediction(self, request_id: str, assignment: Any, latency_ms: float, error: bool,
                          prediction: np.ndarray | None = None, *, api_key_id: str | None = None) -> bool: ...


class DataPlane:
    def __init__(self, settings: Settings, manager: ModelManager, adapter: ServingAdapter,
                 experiments: ExperimentRouter | None = None,
                 observers: list[PredictionObserver] | None = None):
        self.settings = settings
        self.manager = manager
        self.adapter = adapter
        self.experiments = experiments
        self.observers: list[PredictionObserver] = list(observers or [])
        self.readiness_checks: list[ReadinessCheck] = []
        self.readiness_details: list[Callable[[], dict[str, Any]]] = []
        """Reported beside readiness, never flipping it."""
        self.shutting_down = False
        self.in_flight = 0
        # ---- ensemble hook (issue 19): a registered ensemble's members come back through infer ----
        self.ensembles = EnsembleRunner(EnsembleCatalog(manager.reader.root, state=settings.state))
        manager.add_refresher(self.ensembles.refresh)  # which names are ensembles: rescanned off the loop

    # ---- inference ----------------------------------------------------------------------------------

    def admit(self, name: str, context: RequestContext) -> "Decoding":
        """Refuse at once, from the model name alone, when this worker is full (503) or the queue of the
        version production serves is (429): front doors call it before they read or decode a body, so
        a refusal costs next to nothing. ``infer`` checks again once the request is decoded.

        Returns the guard a front door decodes under: ``with dataplane.admit(name, context): ...``, so a
        request refused while its body is read or decoded is counted and audited like any failure."""
        refusal = self.refusal(name)
        if refusal is not None:
            self.count_shed(name, context, refusal)
            raise refusal
        return Decoding(self, name, context)

    def count_shed(self, name: str, context: RequestContext, refusal: PredictionServiceError) -> None:
        """A request refused by admission: metrics count it; the audit log, which records predictions,
        skips it (``shed``). Called by ``admit`` and by the ASGI edge (api/early_refusal.py)."""
        self._notify(PredictionRecord(context, name, None, None, None, None, 0.0, int(refusal.status),
                                      refusal.code, shed=True))

    def refusal(self, name: str) -> PredictionServiceError | None:
        """What ``admit`` would refuse ``name`` with now (nothing counted), else None."""
        busy = self._busy()
        if busy is not None:
            return busy
        key = self.manager.production_key(name)
        if key is not None and self.adapter.queue_full(key):
            return Overloaded(f"queue for {key} is full", {"model": name, "version": key.version})
        return None

    def _busy(self) -> ServiceUnavailable | None:
        limit = self.settings.limits.max_in_flight
        if self.in_flight < limit:
            return None
        return ServiceUnavailable(f"server busy: {self.in_flight} predictions in flight", {"max_in_flight": limit})

    async def infer(self, name: str, selector: Selector, inputs: dict[str, Any],
                    context: RequestContext) -> InferenceResult:
        busy = self._busy()
        if busy is not None:
            self.refuse(name, context, busy)
            raise busy
        self.in_flight += 1
        started = time.perf_counter()
        record = PredictionRecord(context, name, None, selector.stage, None, None, 0.0, 200)
        try:
            if self.ensembles.is_ensemble(name):  # ensemble hook (issue 19): a set lookup for models
                return await self.ensembles.infer(self, name, selector, inputs, context, record)
            return await self._infer(name, selector, inputs, context, record, started)
        except PredictionServiceError as exc:
            record.status, record.error_code = int(exc.status), exc.code
            raise
        except asyncio.CancelledError:  # the caller went away (disconnect, gRPC cancellation)
            record.status, record.error_code = CLIENT_CLOSED_REQUEST, "cancelled"
            raise
        except Exception:
            record.status, record.error_code = 500, "internal_error"
            raise
        finally:
            self.in_flight -= 1
            record.latency_ms = (time.perf_counter() - started) * 1000.0
            self._notify(record)

    def refuse(self, name: str, context: RequestContext, error: PredictionServiceError) -> None:
        """A request a front door refused before inference (bad body, bad header): metrics and the
        audit log count it like any other failed prediction."""
        self._notify(PredictionRecord(context, name, None, None, None, None, 0.0, int(error.status), error.code))

    def _notify(self, record: PredictionRecord) -> None:
        for observer in self.observers:
            try:
                observer.observe(record)
            except Exception:  # noqa: BLE001 - observers never fail a prediction
                log.exception("prediction observer failed")

    async def _infer(self, name: str, selector: Selector, inputs: dict[str, Any], context: RequestContext,
                     record: PredictionRecord, received: float) -> InferenceResult:
        validate_name(name)
        version, stage, assignment = selector.version, selector.stage, None
        if version is not None:
            self._check_version_access(name, version, context)
        if version is None and stage is None and self.experiments is not None:
            assignment = self.experiments.route(name, selector.routing_key)
            if assignment is not None:
                version = assignment.version
        target = await self.manager.resolve(name, version=version, stage=stage,
                                            caller_chose=selector.version is not None)
        # A version asked for explicitly (or by an experiment) still reports the stage it holds, if any.
        served_stage = target.stage if target.stage is not None else self._stage_of(target)
        if assignment is not None:
            record.arm, record.experiment_id = assignment.arm.value, assignment.experiment_id
        record.version, record.stage = target.version, served_stage
        processing = ModelProcessing(target, self.settings.limits)
        if processing.runs_off_loop(inputs):  # tokenizing texts, bar features: CPU work, off the event loop
            arrays = await asyncio.to_thread(processing.preprocess, inputs)
        else:
            arrays = processing.preprocess(inputs)
        record.inputs = arrays
        started = time.perf_counter()
        try:
            async with self.manager.serving(target):
                outputs = await self._run(target, arrays, context.deadline)
        except PredictionServiceError:
            if assignment is not None:  # the arm's error rate counts backend failures too
                await self._record_arm(context, assignment, received, error=True, outputs=None, target=target)
            raise
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if assignment is not None:
            await self._record_arm(context, assignment, received, error=False, outputs=outputs, target=target)
        record.outputs = outputs
        provenance = _provenance(self.adapter.name, self.adapter.loaded_model(target.key))
        record.backend = provenance.backend
        return InferenceResult(
            model=name, version=target.version, stage=served_stage,
            arm=assignment.arm.value if assignment else None,
            experiment_id=assignment.experiment_id if assignment else None,
            request_id=context.request_id, inference_time_ms=round(elapsed_ms, 3), outputs=outputs,
            provenance=provenance, processing=processing,
        )

    async def _run(self, target: ModelVersion, arrays: dict[str, np.ndarray], deadline: float | None):
        for attempt in (1, 2):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded("request deadline passed before the model ran")
            try:
                async with asyncio.timeout(remaining):
                    return await self.adapter.predict(target.key, arrays, deadline=deadline)
            except ModelNotFound:
                if attempt == 2:
                    raise
                await self.manager.ensure_loaded(target)  # evicted or unloaded between resolve and run
            except TimeoutError as exc:
                raise DeadlineExceeded("request deadline exceeded while the model ran") from exc
        raise AssertionError("unreachable")

    async def _record_arm(self, context: RequestContext, assignment: Any, received: float, *, error: bool,
                          outputs: dict[str, np.ndarray] | None, target: ModelVersion) -> None:
        # Written before the response leaves, so an outcome posted right after always finds its prediction.
        prediction = outputs[target.signature.outputs[0].name] if outputs is not None else None
        latency_ms = (time.perf_counter() - received) * 1000.0
        await asyncio.to_thread(self.experiments.record_prediction, context.request_id, assignment, latency_ms,
                                error, prediction, api_key_id=context.api_key_id)

    def _check_version_access(self, name: str, version: str, context: RequestContext) -> None:
        """Any caller may pick a stage; an explicit version needs SECURITY's version_selection_scope, an
        archived one admin (when API keys are configured)."""
        security = self.settings.security
        if not security.api_keys:
            return
        archived = self.manager.reader.get(name, version).metadata.status == "archived"
        needed = Scope.ADMIN if archived else {"any": None, "read": Scope.READ,
                                               "admin": Scope.ADMIN}[security.version_selection_scope]
        if needed is None:
            return
        what = "an archived version" if archived else "an explicit version"
        if context.scope is None:
            raise Unauthorized(f"asking for {what} needs an API key ({needed.name.lower()} scope); "
                               "or ask for a stage")
        if context.scope < needed:
            raise Forbidden(f"asking for {what} needs {needed.name.lower()} scope")

    def _stage_of(self, version: ModelVersion) -> str | None:
        stages = self.manager.reader.stages(version.name)
        return next((stage for stage, v in stages.items() if v == version.version), None)

    # ---- metadata and readiness ---------------------------------------------------------------------

    def model_version(self, name: str, version: str | None = None) -> ModelVersion:
        """``version``, or what production serves, or the newest version when nothing is in production."""
        validate_name(name)
        reader = self.manager.reader
        if version is not None:
            return reader.get(name, version)
        served = self.manager.routes(name).get("production") or reader.stages(name).get("production")
        if served is not None:
            return reader.get(name, served)
        versions = reader.versions(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} has no versions", {"model": name})
        return versions[-1]

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        if self.ensembles.is_ensemble(name):  # ensemble metadata (issue 19): bars + text in, combiner out
            return self.ensembles.metadata(self, name, version)
        target = self.model_version(name, version)
        signature = target.signature
        loaded = self.adapter.loaded_model(target.key)
        artifact = loaded.artifact if loaded is not None else _preferred_artifact(target)
        text = signature.text
        return ModelMetadata(
            name=name, version=target.version,
            versions=tuple(v.version for v in self.manager.reader.versions(name)),
            stage=self._stage_of(target), platform=artifact.format if artifact else "",
            backend=loaded.backend if loaded is not None else self.adapter.name,
            inputs=tuple(TensorMetadata.of(spec) for spec in signature.inputs),
            outputs=tuple(TensorMetadata.of(spec) for spec in signature.outputs),
            max_batch_size=signature.max_batch_size, task=signature.task,
            labels=tuple(signature.labels) if signature.labels else None,
            text_input=TensorMetadata(TEXT_INPUT, "object", (-1,)) if text is not None else None,
            loaded=loaded is not None,
            bars_input=TensorMetadata(BARS_INPUT, "float64", (-1, -1, 5)) if signature.bars is not None else None,
        )

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether a request for ``name`` (at ``version``, else production) would run without a load."""
        if self.ensembles.is_ensemble(name):  # ensemble readiness (issue 19): every member's version loaded
            return not self.shutting_down and self.ensembles.ready(self, name, version)
        return not self.shutting_down and self.adapter.is_loaded(self.model_version(name, version).key)

    def ensemble_summaries(self) -> list[EnsembleSummary]:
        """GET /v1/models entries for the registered ensembles (issue 19), marked ``kind: ensemble``."""
        return self.ensembles.summaries()

    def model_detail(self, name: str) -> EnsembleDetail | None:
        """GET /v1/models/{name} for an ensemble (issue 19); None for a model (the route describes those)."""
        return self.ensembles.detail(self, name) if self.ensembles.is_ensemble(name) else None

    def server_live(self) -> bool:
        return True

    async def server_ready(self) -> Readiness:
        if self.shutting_down:
            return Readiness(False, ("shutting down",), self.adapter.name, "")
        health = await self.adapter.health()
        _, problems = self.manager.ready()
        reasons = ([] if health.healthy else [f"backend {health.backend}: {health.detail}"]) + problems
        for check in self.readiness_checks:
            reasons.extend(check())
        details: dict[str, Any] = {}
        for detail in self.readiness_details:
            details.update(detail())
        return Readiness(not reasons, tuple(reasons), health.backend, health.detail, details)


class Decoding:
    """The span between admission and ``DataPlane.infer`` where a front door reads and decodes the
    request: a domain error raised in it (bad body, bad header, too large) is recorded as a refusal."""

    __slots__ = ("dataplane", "name", "context")

    def __init__(self, dataplane: DataPlane, name: str, context: RequestContext):
        self.dataplane, self.name, self.context = dataplane, name, context

    def __enter__(self) -> RequestContext:
        return self.context

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> bool:
        if isinstance(error, PredictionServiceError):
            self.dataplane.refuse(self.name, self.context, error)
        return False


def _preferred_artifact(version: ModelVersion):
    artifacts = version.metadata.artifacts
    return artifacts[0] if artifacts else None


def _provenance(backend: str, loaded: LoadedModel | None) -> Provenance:
    if loaded is None:
        return Provenance(backend, "", "", "", "")
    artifact = loaded.artifact
    return Provenance(loaded.backend, artifact.file, artifact.format, artifact.precision, artifact.sha256)
