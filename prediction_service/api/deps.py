"""FastAPI dependencies shared by the routers: app state accessors, API-key scopes and rate limits.

The key checks are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in its thread
pool, a thread hop per request on the hot path for a few microseconds of work. Each also takes a token
from the caller's rate-limit bucket (by key id, or by client address when the request carries no key),
after authentication so unknown keys cannot fill buckets.
"""

from __future__ import annotations

from fastapi import Request

from ..settings import Settings
from .auth import API_KEY_HEADER, ApiKey, ApiKeyStore, Scope
from .ratelimit import RateLimiter


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def _key_store(request: Request) -> ApiKeyStore:
    return request.app.state.api_keys


def _rate_limit(request: Request, key: ApiKey | None, endpoint: str) -> None:
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None or not limiter.enabled:
        return
    caller = f"key:{key.key_id}" if key is not None else f"addr:{request.client.host if request.client else '-'}"
    limiter.check(caller, endpoint)


async def require_read(request: Request) -> ApiKey | None:
    """Read-only management endpoints: any valid key when keys are configured."""
    key = _key_store(request).authenticate(request.headers.get(API_KEY_HEADER), Scope.READ)
    _rate_limit(request, key, "management")
    return key


async def require_admin(request: Request) -> ApiKey | None:
    """Endpoints that change state (registry writes, reload, experiments)."""
    key = _key_store(request).authenticate(request.headers.get(API_KEY_HEADER), Scope.ADMIN)
    _rate_limit(request, key, "management")
    return key


async def require_predict(request: Request) -> ApiKey | None:
    """Predictions are open unless PREDICT_REQUIRES_KEY=true; then any valid key."""
    key = None
    if request.app.state.settings.security.predict_requires_key:
        key = _key_store(request).authenticate(request.headers.get(API_KEY_HEADER), Scope.READ)
    _rate_limit(request, key, "predict")
    return key
