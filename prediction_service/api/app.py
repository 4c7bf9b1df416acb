"""create_app(settings): wires registry reader, adapter, model manager and data plane into FastAPI."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from .. import __version__
from ..adapters.factory import ServingAdapterFactory
from ..dataplane import DataPlane
from ..errors import NotFound
from ..experiments import ExperimentService, ExperimentStore
from ..model_manager import ModelManager
from ..monitoring.audit import AuditLog, audit_db_path
from ..monitoring.metrics import ServiceMetrics, mark_worker_dead, multiprocess_dir
from ..registry import ModelKey, ModelRegistry
from ..settings import Settings
from .auth import ApiKeyStore
from .errors import install_error_handlers
from .ratelimit import RateLimiter
from .responses import FastJSONResponse
from .routes import experiments, health, models, monitoring, predict, registry
from .shutdown import readiness_on_signal

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, metrics_registry: CollectorRegistry | None = None) -> FastAPI:
    """``metrics_registry``: where the Prometheus metrics are defined (tests pass their own)."""
    settings = settings or Settings()
    adapter = ServingAdapterFactory.create(settings)  # an unknown type fails here, before serving
    model_registry = ModelRegistry(settings.model_store)
    reader = model_registry.reader
    metrics = ServiceMetrics(metrics_registry or CollectorRegistry())
    manager = ModelManager(settings, reader, adapter,
                           on_event=_all(metrics.on_model_event, _event_recorder(model_registry, adapter.name)))
    if hasattr(adapter, "batch_observer"):
        adapter.batch_observer = metrics.observe_batch
    experiment_service = _experiment_service(settings, model_registry)
    dataplane = DataPlane(settings, manager, adapter, experiments=experiment_service, observers=[metrics])
    audit = AuditLog(settings.audit, audit_db_path(settings)) if settings.audit.enabled else None
    if audit is not None:
        dataplane.observers.append(audit)

    async def refresh_metrics() -> None:
        await metrics.refresh(adapter, dataplane.in_flight, audit.stats() if audit else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("starting: adapter=%s store=%s", adapter.name, settings.model_store)
        with readiness_on_signal(app, settings.server.shutdown_drain_seconds):
            if audit is not None:
                audit.start()
            await manager.start()
            # Everything allocated so far (torch, onnx, loaded models) lives for the whole process: move it
            # out of the collector's reach so full collections stop pausing the event loop for tens of ms.
            gc.freeze()
            background = []
            if multiprocess_dir() is not None:  # other workers answer scrapes too: keep our gauges fresh
                background.append(asyncio.create_task(metrics.run_refresher(refresh_metrics)))
            if settings.experiments.auto_apply_interval_seconds > 0:
                background.append(asyncio.create_task(
                    _apply_experiment_decisions(experiment_service, settings.experiments.auto_apply_interval_seconds)))
            yield
            # uvicorn has stopped accepting and waited for in-flight requests (bounded by the grace period)
            app.state.shutting_down = True
            for task in background:
                task.cancel()
            await manager.stop()
            await adapter.close()
            if audit is not None:
                audit.close(timeout_s=max(1.0, settings.server.shutdown_grace_seconds))
            mark_worker_dead()

    app = FastAPI(
        title="prediction-service",
        version=__version__,
        description="Low-latency serving of small trading models: one REST API over pluggable backends, "
                    "a filesystem registry with stages, A/B experiments and hot reload.",
        default_response_class=FastJSONResponse,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.api_keys = ApiKeyStore(settings.security.api_keys)
    app.state.rate_limiter = RateLimiter(settings.security.rate_limit_per_second,
                                         on_limited=metrics.observe_rate_limited)
    app.state.adapter = adapter
    app.state.reader = reader
    app.state.manager = manager
    app.state.registry = model_registry
    app.state.experiments = experiment_service
    app.state.dataplane = dataplane
    app.state.metrics = metrics
    app.state.refresh_metrics = refresh_metrics
    app.state.audit = audit
    app.state.shutting_down = False
    app.state.readiness_checks = []
    app.state.readiness_details = []
    if audit is not None:
        app.state.readiness_details.append(lambda: {"audit": vars(audit.stats())})
        if settings.audit.required_for_readiness:
            app.state.readiness_checks.append(audit.problems)
    install_error_handlers(app)
    for module in (predict, models, registry, experiments, health, monitoring):
        app.include_router(module.router)
    return app


def _event_recorder(model_registry: ModelRegistry, backend: str):
    """Loads and unloads go to the registry's event log: who served what, from when."""
    def record(event: str, key: ModelKey, details: dict) -> None:
        details = {**details, "backend": backend, "pid": os.getpid()}
        if event == "load":
            model_registry.events.record_load(key.name, key.version, details=details)
        elif event == "unload":
            model_registry.events.record_unload(key.name, key.version, details=details)
        else:
            model_registry.events.record(event, key.name, key.version, actor="server", details=details)
    return record


def _experiment_service(settings: Settings, model_registry: ModelRegistry) -> ExperimentService:
    path = settings.experiments.db_path or settings.state_dir / "experiments.sqlite3"

    def version_exists(name: str, version: str) -> bool:
        try:
            model_registry.get(name, version)
        except NotFound:
            return False
        return True

    def promote(name: str, version: str) -> None:
        model_registry.promote(name, version, "production", actor="experiment")

    store = ExperimentStore(path, busy_timeout_ms=settings.experiments.busy_timeout_ms)
    return ExperimentService(store=store, settings=settings.experiments, promoter=promote,
                             version_exists=version_exists)


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
