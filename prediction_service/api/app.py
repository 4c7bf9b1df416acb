"""create_app(settings): the FastAPI front doors (REST /v1 and the Open Inference Protocol over REST) over
one Service, whose lifecycle the app's lifespan runs."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from .. import __version__
from ..serving.service import Service
from ..settings import Settings
from ..v1.schemas import API_KEY_HEADER, DEADLINE_HEADER, REQUEST_ID_HEADER
from . import oip_rest
from .early_refusal import EarlyRefusal
from .tarpit import ErrorTarpit
from .errors import install_error_handlers
from .hot_path import ServingApp
from .responses import FastJSONResponse
from .routes import (drift, experiments, forecast, health, model_server_v2, models, monitoring, predict, registry,
                     seed_aliases, stream)
from .shutdown import readiness_on_signal

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, metrics_registry: CollectorRegistry | None = None,
               service: Service | None = None, grpc: bool = False) -> FastAPI:
    """``metrics_registry``: where the Prometheus metrics are defined (tests pass their own);
    ``service``: an already built Service (tests that swap a part of it); ``grpc``: also serve the Open
    Inference Protocol over gRPC on SERVER_GRPC_PORT (what ``serve`` runs; off so tests open no port)."""
    service = service or Service(settings or Settings(), metrics_registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server = service.settings.server
        grpc_door = _grpc_server(service) if grpc and server.grpc_port else None
        with readiness_on_signal(service, server.shutdown_drain_seconds,
                                 on_drain=grpc_door.begin_draining if grpc_door else None):
            await service.start()
            if grpc_door is not None:
                await grpc_door.start()
            yield
            # uvicorn has stopped accepting and waited for in-flight requests (bounded by the grace period)
            service.shutting_down = True
            if grpc_door is not None:  # refuses new calls, waits for calls in progress (up to the grace)
                await grpc_door.stop(server.shutdown_grace_seconds)
            await service.stop()

    app = ServingApp(
        title="prediction-service",
        version=__version__,
        description="Low-latency serving of small trading models: one REST API over pluggable backends, "
                    "a filesystem registry with stages, A/B experiments and hot reload.",
        default_response_class=FastJSONResponse,
        lifespan=lifespan,
    )
    app.state.service = service
    app.early_refusal = EarlyRefusal(service)
    app.tracing = service.tracing is not None
    limits = service.settings.limits
    app.tarpit = ErrorTarpit(limits.tarpit_errors_per_second, limits.tarpit_burst, limits.tarpit_delay_ms / 1000.0)
    install_error_handlers(app)
    for module in (predict, forecast, models, registry, experiments, health, monitoring, seed_aliases, model_server_v2,
                   drift, stream):
        app.include_router(module.router)
    app.include_router(oip_rest.router)
    _allow_cors(app, service.settings.security.cors_origin_list)
    return app


CORS_HEADERS = (API_KEY_HEADER, DEADLINE_HEADER, REQUEST_ID_HEADER, "Content-Type", "Content-Encoding",
                "Inference-Header-Content-Length")
"""Request headers a page may send: the key, the deadline, its own request id, and the body's type and
encoding (Open Inference Protocol binary tensors included)."""
CORS_EXPOSED = (REQUEST_ID_HEADER, "Retry-After", "Inference-Header-Content-Length")
CORS_MAX_AGE_S = 600


def _allow_cors(app: ServingApp, origins: list[str]) -> None:
    """CORS for the origins of CORS_ALLOW_ORIGINS (none: off, nothing added). The middleware wraps the app's
    dispatch, before the hot routes (hot_path.py): a preflight is answered there, and every answer to a listed
    origin, a hot route's or an error, carries the CORS headers; a request without an Origin passes straight on."""
    if not origins:
        return
    app.cors = CORSMiddleware(app.dispatch, allow_origins=origins, allow_methods=["GET", "POST", "PATCH", "DELETE"],
                              allow_headers=list(CORS_HEADERS), expose_headers=list(CORS_EXPOSED),
                              allow_credentials=False, max_age=CORS_MAX_AGE_S)


def create_serving_app() -> FastAPI:
    """The app ``serve`` hands uvicorn (a factory, one per worker): every door, gRPC included."""
    return create_app(grpc=True)


def _grpc_server(service: Service):
    from ..grpc.server import GrpcServer  # grpc and tritonclient load only where the door is served

    return GrpcServer(service, service.settings.server.host, service.settings.server.grpc_port)
