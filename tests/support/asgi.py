"""The app in-process: an httpx client over ``httpx.ASGITransport``, with the app's lifespan around it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry

from prediction_service.settings import Settings

BASE_URL = "http://test"


@asynccontextmanager
async def asgi_client(app: FastAPI, *, lifespan: bool = True,
                      **client_options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client for ``app`` at ``BASE_URL`` (``client_options``: httpx's, e.g. ``headers``). With ``lifespan``
    the app starts before the client opens and stops after it closes; without, it is served as it is (a
    router-only app whose Service is never started)."""
    async with AsyncExitStack() as stack:
        if lifespan:
            await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        yield await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url=BASE_URL,
                                                                **client_options))


@asynccontextmanager
async def served_app(settings: Settings | None = None, *, metrics_registry: CollectorRegistry | None = None,
                     headers: dict[str, str] | None = None, **overrides: Any
                     ) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """``create_app`` for ``settings`` (or ``Settings(**overrides)``), started, with a client for it.
    ``metrics_registry`` as create_app takes it (pass one to read the metrics the requests left)."""
    from prediction_service.api.app import create_app

    if settings is not None and overrides:
        raise TypeError("served_app takes settings or Settings fields, not both")
    app = create_app(settings if settings is not None else Settings(**overrides), metrics_registry=metrics_registry)
    async with asgi_client(app, headers=headers) as client:
        yield app, client


def router_app(router: APIRouter, settings: Settings) -> FastAPI:
    """One router on a bare app with the service's error handlers and an unstarted Service for ``settings``."""
    from prediction_service.api.errors import install_error_handlers
    from prediction_service.serving.service import Service

    app = FastAPI()
    app.state.service = Service(settings)
    install_error_handlers(app)
    app.include_router(router)
    return app
