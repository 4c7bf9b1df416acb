"""API keys (scopes) on management endpoints and predictions; per-caller rate limits."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from prediction_service.security.ratelimit import RateLimiter
from prediction_service.errors import RateLimited
from prediction_service.settings import AuditSettings, SecuritySettings, Settings
from tests.support.asgi import served_app

ROW = [1.0, 2.0, 3.0, 4.0]
PREDICT = "/v1/models/tiny-regressor/predict"
RELOAD = "/v1/models/tiny-regressor/reload"
KEYS = "admin-secret,reader-secret:read"


def _served(tiny_store, **security):
    settings = Settings(model_store=tiny_store, security=SecuritySettings(**security),
                        audit=AuditSettings(enabled=False))
    return served_app(settings, metrics_registry=CollectorRegistry())


async def test_management_endpoint_needs_an_admin_key(tiny_store):
    async with _served(tiny_store, api_keys=KEYS) as (_, http):
        missing = await http.post(RELOAD)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "ApiKey"
        assert (await http.post(RELOAD, headers={"X-API-Key": "wrong"})).status_code == 401
        forbidden = await http.post(RELOAD, headers={"X-API-Key": "reader-secret"})
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
        ok = await http.post(RELOAD, headers={"X-API-Key": "admin-secret"})
        assert ok.status_code == 200 and ok.json()["serving"]["production"] == "1.0.0"
        # read endpoints take any valid key
        assert (await http.get("/v1/models")).status_code == 401
        assert (await http.get("/v1/models", headers={"X-API-Key": "reader-secret"})).status_code == 200
        # predictions stay open unless PREDICT_REQUIRES_KEY
        assert (await http.post(PREDICT, json={"instance": ROW})).status_code == 200


async def test_predict_can_require_a_key(tiny_store):
    async with _served(tiny_store, api_keys=KEYS, predict_requires_key=True) as (_, http):
        assert (await http.post(PREDICT, json={"instance": ROW})).status_code == 401
        assert (await http.post(PREDICT, json={"instance": ROW}, headers={"X-API-Key": "nope"})).status_code == 401
        reader = await http.post(PREDICT, json={"instance": ROW}, headers={"X-API-Key": "reader-secret"})
        assert reader.status_code == 200


async def test_no_keys_configured_means_open(tiny_store):
    async with _served(tiny_store) as (_, http):
        assert (await http.post(RELOAD)).status_code == 200


async def test_rate_limit_per_key_and_per_address(tiny_store):
    async with _served(tiny_store, api_keys=KEYS, predict_requires_key=True, rate_limit_per_second=3) as (_, http):
        admin, reader = {"X-API-Key": "admin-secret"}, {"X-API-Key": "reader-secret"}
        statuses = [(await http.post(PREDICT, json={"instance": ROW}, headers=reader)).status_code for _ in range(6)]
        assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
        limited = await http.post(PREDICT, json={"instance": ROW}, headers=reader)
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        # another key has its own bucket
        assert (await http.post(PREDICT, json={"instance": ROW}, headers=admin)).status_code == 200
        metrics = (await http.get("/metrics")).text
        assert 'prediction_rate_limited_total{endpoint="predict"}' in metrics

    async with _served(tiny_store, rate_limit_per_second=2) as (_, http):  # no keys: by client address
        statuses = [(await http.post(PREDICT, json={"instance": ROW})).status_code for _ in range(5)]
        assert statuses[:2] == [200, 200] and statuses[-1] == 429
        assert (await http.post(RELOAD)).status_code == 429  # management shares the caller's bucket


def test_token_bucket_refills_at_the_rate():
    now = [100.0]
    limiter = RateLimiter(2.0, clock=lambda: now[0])
    limiter.check("a", "predict")
    limiter.check("a", "predict")
    with pytest.raises(RateLimited) as info:
        limiter.check("a", "predict")
    assert info.value.headers()["Retry-After"] == "1"
    now[0] += 0.5  # one token back
    limiter.check("a", "predict")
    with pytest.raises(RateLimited):
        limiter.check("a", "predict")
    assert not RateLimiter(0).enabled
