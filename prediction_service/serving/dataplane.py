"""The protocol-agnostic data plane on numpy tensors: admission, dispatch by name to a servable (a model or
an ensemble, serving/servables.py), model metadata and readiness for every front door, and the record of
each finished prediction (observers and A/B arms).

Every front door (REST /v1, Open Inference Protocol REST and gRPC, the aliases) goes through the request
pipeline (serving/pipeline.py), which calls ``admit``, ``infer``, then ``settle`` (the A/B arm's record, the
observers); none of the doors imports another, and nothing here imports FastAPI or protobuf.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..adapters.base import ServingAdapter
from ..security.auth import VersionAccess
from ..errors import Overloaded, PredictionServiceError, ServiceUnavailable
from ..execution.group_commit import GroupCommit
from ..experiments.service import ServedPrediction
from ..log_throttle import ThrottledLog
from ..types import (InferenceRequest, InferenceResult, ModelMetadata, PredictionObserver, PredictionRecord,
                     Readiness, RequestContext)
from .model_manager import ModelManager
from ..ensemble.metadata import EnsembleDetail, EnsembleSummary
from ..ensemble.runner import EnsembleRunner
from ..ensemble.store import EnsembleCatalog
from ..registry import ModelVersion
from .servables import CLIENT_CLOSED_REQUEST, ExperimentRouter, ModelGateway, ModelServable, Servable
from ..settings import Settings

log = logging.getLogger(__name__)
_arm_log = ThrottledLog(log)


def _arm_write_failed(exc: Exception, count: int) -> None:
    # the clients' answers stand; the arms miss these samples
    _arm_log.warning(type(exc).__name__, f"could not record {count} A/B arm predictions: {exc!r}")

ReadinessCheck = Callable[[], list[str]]
"""Extra readiness conditions (e.g. the audit log): the reasons it is not ready, empty when it is."""


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
        self._idle = asyncio.Event()
        """Set when in_flight drops to 0, for whoever waits in ``until_idle``."""
        self._arm_writes: GroupCommit[ServedPrediction, bool] | None = None
        if experiments is not None:
            self._arm_writes = GroupCommit(experiments.record_predictions, on_error=_arm_write_failed,
                                           linger_s=settings.experiments.record_linger_ms / 1000.0)
            experiments.flush_pending_records = self._arm_writes.flush
        self.models = ModelServable(settings, manager, adapter, experiments)
        catalog = EnsembleCatalog(manager.reader.root, state=settings.state, models=manager.reader)
        self.ensembles = EnsembleRunner(catalog, ModelGateway(self.models, self.settle), VersionAccess(settings.security))
        manager.add_refresher(self.ensembles.refresh)  # which names are ensembles: rescanned off the loop

    def servable(self, name: str) -> Servable:
        """Models and ensembles share one namespace; an ensemble name is a set lookup."""
        return self.ensembles if self.ensembles.is_ensemble(name) else self.models

    # ---- admission ----------------------------------------------------------------------------------

    def admit(self, name: str, context: RequestContext) -> None:
        """Refuse at once, from the model name alone, when this worker is full (503) or the queue of the
        version production serves is (429): the pipeline calls it before a body is read or decoded, so
        a refusal costs next to nothing. ``infer`` checks again once the request is decoded."""
        refusal = self.refusal(name)
        if refusal is not None:
            self.count_shed(name, context, refusal)
            raise refusal

    def count_shed(self, name: str, context: RequestContext, refusal: PredictionServiceError) -> None:
        """A request refused by admission: metrics count it; the audit log, which records predictions,
        skips it (``shed``). Called by ``admit`` and by the ASGI edge (api/early_refusal.py)."""
        self.observe(PredictionRecord(context, name, None, None, None, None, 0.0, int(refusal.status),
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

    # ---- inference ----------------------------------------------------------------------------------

    async def infer(self, name: str, request: InferenceRequest, context: RequestContext,
                    record: PredictionRecord) -> InferenceResult:
        """Run a decoded request on the servable ``name`` names; ``record`` learns what ran (version,
        stage, arm, inputs, outputs). The caller settles the record once the answer is encoded."""
        busy = self._busy()
        if busy is not None:
            raise busy
        self.in_flight += 1
        try:
            return await self.servable(name).infer(name, request, context, record)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def until_idle(self) -> None:
        """Until no prediction is in flight in this worker (shadow copies use the capacity production leaves
        idle): woken when the last one finishes, no polling."""
        while self.in_flight > 0:
            self._idle.clear()
            await self._idle.wait()

    async def settle(self, record: PredictionRecord) -> None:
        """A finished prediction, as its caller got it: the A/B arm's record handed to its writer, then the
        observers (metrics, audit log)."""
        if record.arm_run is not None:
            self.record_arm(record)
        self.observe(record)

    def record_arm(self, record: PredictionRecord) -> None:
        """The arm's sample for a request that reached its version, written behind the response: the records
        of the requests that finish together share one transaction, and no answer waits for a commit (an
        outcome posted right after waits for its prediction's record instead: record_outcome_when_served).
        One its caller abandoned (499) is no sample."""
        arm_run = record.arm_run
        if arm_run is None or self.experiments is None or record.status == CLIENT_CLOSED_REQUEST:
            return
        error = record.status != 200
        prediction = None if error or record.outputs is None else record.outputs.get(arm_run.output)
        assert self._arm_writes is not None  # made with the experiments
        self._arm_writes.enqueue(ServedPrediction(record.context.request_id, arm_run.assignment, record.latency_ms,
                                                  error, prediction, record.context.api_key_id))

    async def flush(self) -> None:
        """Until the arm records handed over so far are written (shutdown)."""
        if self._arm_writes is not None:
            await self._arm_writes.flush()

    def observe(self, record: PredictionRecord) -> None:
        """Metrics and the audit log learn of a finished (or refused) request."""
        for observer in self.observers:
            try:
                observer.observe(record)
            except Exception:  # noqa: BLE001 - observers never fail a prediction
                log.exception("prediction observer failed")

    # ---- metadata and readiness ---------------------------------------------------------------------

    def model_version(self, name: str, version: str | None = None) -> ModelVersion:
        """``version``, or what production serves, or the newest version when nothing is in production."""
        return self.models.model_version(name, version)

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        return self.servable(name).metadata(name, version)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether a request for ``name`` (at ``version``, else production) would run without a load."""
        return not self.shutting_down and self.servable(name).ready(name, version)

    def ensemble_summaries(self) -> list[EnsembleSummary]:
        """GET /v1/models entries for the registered ensembles, marked ``kind: ensemble``."""
        return self.ensembles.summaries()

    def model_detail(self, name: str) -> EnsembleDetail | None:
        """GET /v1/models/{name} for an ensemble; None for a model (the route describes those)."""
        return self.ensembles.detail(name) if self.ensembles.is_ensemble(name) else None

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
