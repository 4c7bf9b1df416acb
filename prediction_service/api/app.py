"""create_app(settings): wires registry reader, adapter, model manager and data plane into FastAPI."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..adapters.factory import ServingAdapterFactory
import os

from ..dataplane import DataPlane
from ..errors import NotFound
from ..experiments import ExperimentService, ExperimentStore
from ..model_manager import ModelManager
from ..registry import ModelKey, ModelRegistry
from ..settings import Settings
from .auth import ApiKeyStore
from .errors import install_error_handlers
from .responses import FastJSONResponse
from .routes import experiments, health, models, predict, registry

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    adapter = ServingAdapterFactory.create(settings)  # an unknown type fails here, before serving
    model_registry = ModelRegistry(settings.model_store)
    reader = model_registry.reader
    manager = ModelManager(settings, reader, adapter, on_event=_event_recorder(model_registry, adapter.name))
    experiment_service = _experiment_service(settings, model_registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("starting: adapter=%s store=%s", adapter.name, settings.model_store)
        await manager.start()
        # Everything allocated so far (torch, onnx, loaded models) lives for the whole process: move it
        # out of the collector's reach so full collections stop pausing the event loop for tens of ms.
        gc.freeze()
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
    app.state.registry = model_registry
    app.state.experiments = experiment_service
    app.state.dataplane = DataPlane(settings, manager, adapter, experiments=experiment_service)
    app.state.shutting_down = False
    app.state.readiness_checks = []
    install_error_handlers(app)
    for module in (predict, models, registry, experiments, health):
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
