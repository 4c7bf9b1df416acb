"""create_app(settings): the FastAPI front doors (REST /v1 and the Open Inference Protocol over REST) over
one Service, whose lifecycle the app's lifespan runs."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from .. import __version__
from ..service import Service
from ..settings import Settings
from .errors import install_error_handlers
from .responses import FastJSONResponse
from .routes import experiments, health, models, monitoring, predict, registry
from .shutdown import readiness_on_signal

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, metrics_registry: CollectorRegistry | None = None,
               service: Service | None = None) -> FastAPI:
    """``metrics_registry``: where the Prometheus metrics are defined (tests pass their own);
    ``service``: an already built Service (tests that swap a part of it)."""
    service = service or Service(settings or Settings(), metrics_registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        with readiness_on_signal(service, service.settings.server.shutdown_drain_seconds):
            await service.start()
            yield
            # uvicorn has stopped accepting and waited for in-flight requests (bounded by the grace period)
            service.shutting_down = True
            await service.stop()

    app = FastAPI(
        title="prediction-service",
        version=__version__,
        description="Low-latency serving of small trading models: one REST API over pluggable backends, "
                    "a filesystem registry with stages, A/B experiments and hot reload.",
        default_response_class=FastJSONResponse,
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    for module in (predict, models, registry, experiments, health, monitoring):
        app.include_router(module.router)
    return app
