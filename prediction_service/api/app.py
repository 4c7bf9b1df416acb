"""create_app(settings): wires registry reader, adapter, model manager and data plane into FastAPI."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from .. import __version__
from ..adapters.factory import ServingAdapterFactory
from ..dataplane import DataPlane
from ..model_manager import ModelManager
from ..monitoring.audit import AuditLog, audit_db_path
from ..monitoring.metrics import ServiceMetrics, mark_worker_dead, multiprocess_dir
from ..registry import RegistryReader
from ..settings import Settings
from .auth import ApiKeyStore
from .errors import install_error_handlers
from .ratelimit import RateLimiter
from .responses import FastJSONResponse
from .routes import health, models, monitoring, predict
from .shutdown import readiness_on_signal

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, metrics_registry: CollectorRegistry | None = None) -> FastAPI:
    """``metrics_registry``: where the Prometheus metrics are defined (tests pass their own)."""
    settings = settings or Settings()
    adapter = ServingAdapterFactory.create(settings)  # an unknown type fails here, before serving
    reader = RegistryReader(settings.model_store)
    metrics = ServiceMetrics(metrics_registry or CollectorRegistry())
    manager = ModelManager(settings, reader, adapter, on_event=metrics.on_model_event)
    if hasattr(adapter, "batch_observer"):
        adapter.batch_observer = metrics.observe_batch
    dataplane = DataPlane(settings, manager, adapter, observers=[metrics])
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
            refresher = None
            if multiprocess_dir() is not None:  # other workers answer scrapes too: keep our gauges fresh
                refresher = asyncio.get_running_loop().create_task(metrics.run_refresher(refresh_metrics))
            yield
            # uvicorn has stopped accepting and waited for in-flight requests (bounded by the grace period)
            app.state.shutting_down = True
            if refresher is not None:
                refresher.cancel()
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
    for module in (predict, models, health, monitoring):
        app.include_router(module.router)
    return app
