"""create_app(settings): wires registry reader, adapter, model manager and data plane into FastAPI."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..adapters.factory import ServingAdapterFactory
from ..dataplane import DataPlane
from ..model_manager import ModelManager
from ..registry import RegistryReader
from ..settings import Settings
from .auth import ApiKeyStore
from .errors import install_error_handlers
from .responses import FastJSONResponse
from .routes import health, models, predict

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    adapter = ServingAdapterFactory.create(settings)  # an unknown type fails here, before serving
    reader = RegistryReader(settings.model_store)
    manager = ModelManager(settings, reader, adapter)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("starting: adapter=%s store=%s", adapter.name, settings.model_store)
        await manager.start()
        yield
        app.state.shutting_down = True
        await manager.stop()
        await adapter.close()

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
    app.state.adapter = adapter
    app.state.reader = reader
    app.state.manager = manager
    app.state.dataplane = DataPlane(settings, manager, adapter)
    app.state.shutting_down = False
    app.state.readiness_checks = []
    install_error_handlers(app)
    for module in (predict, models, health):
        app.include_router(module.router)
    return app
