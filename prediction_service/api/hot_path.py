"""ServingApp: FastAPI, with the inference POSTs dispatched before the middleware stack and the router.

A py-spy profile of ``POST /v1/models/{name}/predict`` under load put about a fifth of the event loop's
time in Starlette/FastAPI layers the predict path does not use (exception, async-exit-stack and body-limit
middlewares, router matching over every route, telemetry hooks). The hot routes are ``DirectRoute``
endpoints (direct_route.py): they take the Request and return a Response, and every error they raise is
a domain error mapped by the app's own exception handlers (api/errors.py). So the app matches their
paths itself, calls their handlers, and maps exceptions through the same handler table; everything else
(and OpenAPI, which still documents them) goes through FastAPI as usual. Before a hot route runs, the
overload check (``early_refusal``) may answer it at once. With CORS on, its middleware wraps all of this.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..monitoring.tracing import TRACERESPONSE
from .direct_route import DirectRoute
from .tarpit import ErrorTarpit

Handler = Callable[[Request], Awaitable[Response]]


RefusalCheck = Callable[[Scope, str], Response | None]
"""(scope, model name) -> the overload refusal to send without running the route, or None."""


class ServingApp(FastAPI):
    _hot: list[tuple[Route, Handler]] | None = None
    early_refusal: RefusalCheck | None = None
    """Asked first for hot routes with a ``{name}`` (api/early_refusal.py); None: every request runs its route."""
    tarpit: ErrorTarpit | None = None
    """Holds back the error answers of a connection past its error budget (api/tarpit.py); None: never."""
    tracing: bool = False
    """The service traces predictions (OTEL_EXPORTER_OTLP_ENDPOINT): a hot route's answer, error or not, carries
    its request's ``traceresponse`` (the route put the trace on ``request.state``, api/deps.py)."""
    cors: ASGIApp | None = None
    """Starlette's CORSMiddleware around this app's dispatch when CORS_ALLOW_ORIGINS lists origins (api/app.py):
    it answers preflights and adds its headers to every answer to a listed origin, the hot routes' included;
    None: no CORS."""

    def include_router(self, router: APIRouter, **kwargs: Any) -> None:
        super().include_router(router, **kwargs)
        if not kwargs.get("prefix"):  # hot paths match the routes' own paths
            self._hot = (self._hot or []) + [(route, route.get_route_handler()) for route in router.routes
                                             if isinstance(route, DirectRoute) and "POST" in (route.methods or ())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.cors is not None and scope["type"] == "http":
            await self.cors(scope, receive, send)  # which calls dispatch
        else:
            await self.dispatch(scope, receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route, handler in self._hot_routes():
                match = route.path_regex.match(scope["path"])
                if match is not None:
                    name = match.groupdict().get("name")
                    if name is not None and self.early_refusal is not None:
                        refused = self.early_refusal(scope, name)
                        if refused is not None:  # shed before any per-request object exists
                            if self.tarpit is not None:
                                await self.tarpit.hold(scope, refused.status_code)
                            await refused(scope, receive, send)
                            return
                    scope["app"] = self
                    scope["route"] = route
                    scope["path_params"] = {name: route.param_convertors[name].convert(value)
                                            for name, value in match.groupdict().items()}
                    await self._serve(handler, scope, receive, send)
                    return
        await super().__call__(scope, receive, send)

    def _hot_routes(self) -> list[tuple[Route, Handler]]:
        return self._hot or []

    async def _serve(self, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await handler(request)
        except Exception as exc:  # noqa: BLE001 - mapped by the app's handler table, like the router would
            response = await self._exception_handler(exc)(request, exc)
        if self.tracing:
            trace = scope.get("state", {}).get("trace")
            value = trace.traceresponse if trace is not None else None
            if value is not None:
                response.headers[TRACERESPONSE] = value
        if self.tarpit is not None:
            await self.tarpit.hold(scope, response.status_code)
        await response(scope, receive, send)

    def _exception_handler(self, exc: Exception):
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                return handler
        raise exc
