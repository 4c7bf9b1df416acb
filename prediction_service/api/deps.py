"""FastAPI dependencies shared by the routers: the Service, and API-key scopes with rate limits.

The key checks are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in its thread
pool, a thread hop per request on the hot path for a few microseconds of work. They read only the
headers, so a caller without a valid key is refused before its body is read. The checks themselves
live in ``Service.authorize*``, shared with the gRPC door.
"""

from __future__ import annotations

from fastapi import Request

from ..security.auth import API_KEY_HEADER, ApiKey, Scope, presented_credential
from ..types import RequestContext
from ..serving.service import Service
from ..settings import Settings


def get_service(request: Request) -> Service:
    return request.app.state.service


def open_context(request: Request, api_key: ApiKey | None, protocol: str) -> tuple[Service, RequestContext]:
    """The Service and a new request context for an inference route. Its request id is the audit id,
    sent back as X-Request-Id, on errors too (api/errors.py reads it from request.state). With tracing on,
    the context carries the request's trace (the caller's traceparent / tracestate headers continued), and
    request.state too: the app sends its traceresponse with the answer (api/hot_path.py)."""
    service = request.app.state.service
    context = service.request_context(api_key, None, protocol)
    request.state.request_id = context.request_id
    if service.tracing is not None:
        service.open_trace(context, request.headers)
        request.state.trace = context.trace
    return service, context


def get_settings(request: Request) -> Settings:
    return request.app.state.service.settings


def _credential(request: Request) -> str | None:
    """The caller's API key (X-API-Key), else its Authorization: Bearer token."""
    return presented_credential(request.headers.get(API_KEY_HEADER), request.headers.get("authorization"))


def _caller(request: Request) -> str:
    return request.client.host if request.client else "-"


async def require_read(request: Request) -> ApiKey | None:
    """Read-only management endpoints: any valid key when keys are configured."""
    return get_service(request).authorize(_credential(request), _caller(request), Scope.READ,
                                          "management")


async def require_admin(request: Request) -> ApiKey | None:
    """Endpoints that change state (registry writes, reload, experiments)."""
    return get_service(request).authorize(_credential(request), _caller(request), Scope.ADMIN,
                                          "management")


async def require_predict(request: Request) -> ApiKey | None:
    """Predictions are open unless PREDICT_REQUIRES_KEY=true; then any valid key."""
    return get_service(request).authorize_predict(_credential(request), _caller(request))
