"""FastAPI dependencies shared by the routers: app state accessors and API-key scopes.

The key checks are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in its thread
pool, a thread hop per request on the hot path for a few microseconds of work.
"""

from __future__ import annotations

from fastapi import Request

from ..settings import Settings
from .auth import API_KEY_HEADER, ApiKey, ApiKeyStore, Scope


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def _key_store(request: Request) -> ApiKeyStore:
    return request.app.state.api_keys


async def require_read(request: Request) -> ApiKey | None:
    """Read-only management endpoints: any valid key when keys are configured."""
    return _key_store(request).authenticate(request.headers.get(API_KEY_HEADER), Scope.READ)


async def require_admin(request: Request) -> ApiKey | None:
    """Endpoints that change state (registry writes, reload, experiments)."""
    return _key_store(request).authenticate(request.headers.get(API_KEY_HEADER), Scope.ADMIN)


async def require_predict(request: Request) -> ApiKey | None:
    """Predictions are open unless PREDICT_REQUIRES_KEY=true; then any valid key."""
    if not request.app.state.settings.security.predict_requires_key:
        return None
    return await require_read(request)
