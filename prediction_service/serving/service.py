"""Service: the per-worker objects every front door uses, built once from Settings; ``start()`` / ``stop()``.

The FastAPI app and the gRPC server both take a Service; neither builds or looks up its parts by name.
Admission (API key + rate limit) lives here too, so every door checks callers the same way.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Mapping

from prometheus_client import CollectorRegistry

from ..adapters.base import ServingAdapter
from ..adapters.factory import ServingAdapterFactory
from ..security.auth import ApiKey, ApiKeyStore, Scope
from ..security.jwt import JwtVerifier
from .dataplane import DataPlane
from ..errors import NotFound
from ..experiments import ExperimentService, ExperimentStore
from ..experiments.service import ExperimentObserver, RegistryCatalog
from ..types import RequestContext
from .model_manager import ModelManager
from ..monitoring.audit import AuditLog, audit_db_path
from ..monitoring.drift import attach_drift
from ..monitoring.metrics import ServiceMetrics, mark_worker_dead, multiprocess_dir
from ..monitoring.tracing import Tracing
from ..security.ratelimit import ParseBudget, RateLimiter
from ..registry import ModelKey, ModelRegistry
from ..registry.families import FamilyIndex
from .pipeline import RequestPipeline
from .repository import ModelRepository
from .shadow import ShadowRunner
from .shared_memory import SharedMemoryRegistry
from ..settings import Settings

log = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: Settings, metrics_registry: CollectorRegistry | None = None):
        """``metrics_registry``: where the Prometheus metrics are defined (tests pass their own)."""
        self.settings = settings
        self.adapter: ServingAdapter = ServingAdapterFactory.create(settings)  # names checked by Settings
        self.registry = ModelRegistry(settings.model_store, state=settings.state)
        self.reader = self.registry.reader
        self.metrics = ServiceMetrics(metrics_registry or CollectorRegistry())
        self.tracing = Tracing.from_settings(settings.tracing)
        """OpenTelemetry tracing when OTEL_EXPORTER_OTLP_ENDPOINT is set; None: no request is traced."""
        self.default_priority = settings.batching.default_priority
        self.manager = ModelManager(settings, self.reader, self.adapter,
                                    on_event=_all(self.metrics.on_model_event, self._record_model_event))
        self.adapter.batch_observer = self.metrics.observe_batch
        self.families = FamilyIndex(self.reader)
        """Which model serves each (symbol, timeframe, model type): rebuilt with every stage poll."""
        self.manager.add_refresher(self.families.refresh)
        self.experiments = _experiment_service(settings, self.registry, observer=self.metrics)
        self.audit = (AuditLog(settings.audit, audit_db_path(settings), state=settings.state)
                      if settings.audit.enabled else None)
        self.dataplane = DataPlane(settings, self.manager, self.adapter, experiments=self.experiments,
                                   observers=[self.metrics])
        if self.audit is not None:
            self.dataplane.observers.append(self.audit)
            audit = self.audit
            self.dataplane.readiness_details.append(lambda: {"audit": vars(audit.stats())})
            if settings.audit.required_for_readiness:
                self.dataplane.readiness_checks.append(audit.problems)
        if self.experiments is not None:
            self.dataplane.models.shadow = ShadowRunner(
                self.dataplane.models.run_version, self.experiments,
                queue_size=settings.experiments.shadow_queue_size, concurrency=settings.experiments.shadow_concurrency,
                priority=settings.batching.priority_levels, timeout_s=settings.experiments.shadow_timeout_seconds,
                until_idle=self.dataplane.until_idle,
                write_linger_s=settings.experiments.record_linger_ms / 1000.0,
                batch_linger_s=settings.experiments.shadow_batch_linger_ms / 1000.0,
                max_batch_rows=settings.batching.max_batch_size, observer=self.metrics, audit=self.audit)
        self.drift = attach_drift(settings, self.dataplane, self.reader, self.metrics.registry)
        """Input drift per model version (monitoring/drift.py); None when DRIFT_ENABLED is false."""
        self.pipeline = RequestPipeline(self.dataplane, settings.limits, settings.batching.priority_levels)
        """Every door's request path: admit -> decode -> infer -> encode, observed as the client saw it."""
        self.repository = ModelRepository(self.manager)
        """The OIP model-repository extension: index, load and unload (admin)."""
        self.shared_memory = SharedMemoryRegistry()
        """The OIP system shared-memory extension: this worker's registered /dev/shm regions."""
        self.api_keys = ApiKeyStore(settings.security.api_keys, settings.batching.priority_levels,
                                    JwtVerifier.from_settings(settings.security))
        self.rate_limiter = RateLimiter(settings.security.rate_limit_per_second,
                                        on_limited=self.metrics.observe_rate_limited)
        self.parse_budget = ParseBudget(settings.limits.large_json_bytes_per_second,
                                        settings.limits.max_request_bytes)
        """Bytes of large JSON bodies this worker parses per second, all doors together."""
        self._background: list[asyncio.Task] = []

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        log.info("starting: adapter=%s store=%s", self.adapter.name, self.settings.model_store)
        if self.audit is not None:
            self.audit.start()
        await self.manager.start()
        # Everything allocated so far (torch, onnx, loaded models) lives for the whole process: move it out
        # of the collector's reach so full collections stop pausing the event loop for tens of ms.
        gc.freeze()
        if multiprocess_dir() is not None:  # other workers answer scrapes too: keep our gauges fresh
            self._background.append(asyncio.create_task(self.metrics.run_refresher(self.refresh_metrics)))
        if self.drift is not None:
            self._background.append(asyncio.create_task(self.drift.run()))
        interval = self.settings.experiments.auto_apply_interval_seconds
        if interval > 0:
            self._background.append(asyncio.create_task(_apply_experiment_decisions(self.experiments, interval)))
        try:
            await self.check_health()  # the gauges start true to the state, not at 0 for one interval
        except Exception:  # noqa: BLE001 - a metric never stops the start; the schedule retries
            log.exception("health check failed")
        if self.settings.health_check_interval_seconds > 0:
            self._background.append(asyncio.create_task(
                self.metrics.run_refresher(self.check_health, self.settings.health_check_interval_seconds)))
        if self.settings.mlflow.follows:  # MLflow aliases move what is served (imported only then)
            from ..mlflow_bridge.follow import MlflowFollower

            follower = MlflowFollower(self.registry, self.settings.mlflow)
            self.dataplane.readiness_details.append(follower.details)
            self._background.append(asyncio.create_task(follower.run()))

    async def stop(self) -> None:
        """After the front doors have drained: stop background work, unload, flush the audit log."""
        self.shutting_down = True
        for task in self._background:
            task.cancel()
        if self.dataplane.models.shadow is not None:
            await self.dataplane.models.shadow.close()
        await self.dataplane.flush()
        await self.manager.stop()
        await self.adapter.close()
        self.shared_memory.close()
        if self.audit is not None:
            self.audit.close(timeout_s=max(1.0, self.settings.server.shutdown_grace_seconds))
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # exports the spans still buffered
        mark_worker_dead()

    @property
    def shutting_down(self) -> bool:
        """True from the first SIGTERM: readiness is false on every door while they drain."""
        return self.dataplane.shutting_down

    @shutting_down.setter
    def shutting_down(self, value: bool) -> None:
        self.dataplane.shutting_down = value

    async def refresh_metrics(self) -> None:
        await self.metrics.refresh(self.adapter, self.dataplane.in_flight,
                                   self.audit.stats() if self.audit else None)

    async def check_health(self) -> None:
        """Backend health and readiness into their gauges. On a schedule, not per scrape: a remote
        adapter's health() calls its server."""
        self.metrics.observe_health(await self.adapter.health())
        self.metrics.observe_readiness(await self.dataplane.server_ready())

    # ---- admission ---------------------------------------------------------------------------------

    def authorize(self, presented_key: str | None, caller: str, scope: Scope, endpoint: str) -> ApiKey | None:
        """Check the key for ``scope`` (Unauthorized / Forbidden) and take a rate-limit token (RateLimited)."""
        key = self.api_keys.authenticate(presented_key, scope)
        self._take_token(key, caller, endpoint)
        return key

    def authorize_predict(self, presented_key: str | None, caller: str) -> ApiKey | None:
        """``authenticate_predict``, then a rate-limit token (RateLimited)."""
        key = self.authenticate_predict(presented_key)
        self._take_token(key, caller, "predict")
        return key

    def authenticate_predict(self, presented_key: str | None) -> ApiKey | None:
        """Predictions are open unless PREDICT_REQUIRES_KEY=true; then any valid key. A key presented
        anyway is checked (an invalid one is 401): its scope may allow picking explicit versions."""
        if self.settings.security.predict_requires_key or presented_key:
            return self.api_keys.authenticate(presented_key, Scope.READ)
        return None

    def request_context(self, key: ApiKey | None, deadline: float | None, protocol: str) -> RequestContext:
        """The context a front door hands the data plane for an admitted caller: at its key's default priority
        (else the server's) until the request names one."""
        if key is None:
            return RequestContext(deadline=deadline, protocol=protocol, priority=self.default_priority)
        return RequestContext(deadline=deadline, api_key_id=key.key_id, scope=key.scope, protocol=protocol,
                              priority=key.priority or self.default_priority)

    def open_trace(self, context: RequestContext, carrier: Mapping[str, str]) -> None:
        """With tracing on, the request's trace (continuing the caller's traceparent in ``carrier``: HTTP
        headers or gRPC metadata) on ``context``; without, nothing."""
        if self.tracing is not None:
            context.trace = self.tracing.open(carrier, context.protocol)

    def _take_token(self, key: ApiKey | None, caller: str, endpoint: str) -> None:
        # After authentication, so unknown keys cannot fill buckets; by key id, else by client address.
        if self.rate_limiter.enabled:
            self.rate_limiter.check(f"key:{key.key_id}" if key is not None else f"addr:{caller}", endpoint)

    # ---- model events ------------------------------------------------------------------------------

    def _record_model_event(self, event: str, key: ModelKey, details: dict) -> None:
        """Loads and unloads go to the registry's event log: who served what, from when."""
        details = {**details, "backend": self.adapter.name, "pid": os.getpid()}
        events = self.registry.events
        if event == "load":
            events.record_load(key.name, key.version, details=details)
        elif event == "unload":
            events.record_unload(key.name, key.version, details=details)
        else:
            events.record(event, key.name, key.version, actor="server", details=details)


def _experiment_service(settings: Settings, model_registry: ModelRegistry,
                        observer: ExperimentObserver | None = None) -> ExperimentService:
    path = settings.experiments.db_path or settings.state_dir / "experiments.sqlite3"

    def version_exists(name: str, version: str) -> bool:
        try:
            model_registry.get(name, version)
        except NotFound:
            return False
        return True

    def promote(name: str, version: str) -> None:
        model_registry.promote(name, version, "production", actor="experiment")

    store = ExperimentStore(path, busy_timeout_ms=settings.experiments.busy_timeout_ms, state=settings.state)
    return ExperimentService(store=store, settings=settings.experiments, promoter=promote,
                             version_exists=version_exists, catalog=RegistryCatalog(model_registry),
                             observer=observer)


async def _apply_experiment_decisions(service: ExperimentService, interval_s: float) -> None:
    """auto_apply without anyone calling analyze: PROMOTE / ROLLBACK lands within one interval."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(service.apply_due_decisions)
        except Exception:  # noqa: BLE001 - keep the schedule going (SQLite busy, a promotion refused, ...)
            log.exception("auto-apply of experiment decisions failed")


def _all(*callbacks):
    """One model-event hook that fans out to several listeners (metrics, the registry's event log)."""
    def call(event: str, key: ModelKey, details: dict) -> None:
        for callback in callbacks:
            try:
                callback(event, key, details)
            except Exception:  # noqa: BLE001 - a listener never fails a load or unload
                log.exception("model event listener failed")
    return call
