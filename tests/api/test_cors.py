"""CORS for a browser dashboard: off by default; with CORS_ALLOW_ORIGINS, preflights from a listed origin are
answered and its requests (the hot inference path included, errors included) carry Access-Control-Allow-Origin;
any other origin gets none."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prediction_service.settings import SecuritySettings, Settings
from tests.support.asgi import served_app

DASHBOARD = "https://dash.example.com"
OTHER = "https://evil.example.com"
PREDICT = "/v1/models/tiny-regressor/predict"
ROW = [1.0, 2.0, 3.0, 4.0]


def _preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type,x-api-key,x-request-deadline-ms"}


@pytest.fixture
async def cors_client(tiny_store):
    settings = Settings(model_store=tiny_store, security=SecuritySettings(
        cors_allow_origins=f"{DASHBOARD}, http://localhost:3000", api_keys="reader:read", predict_requires_key=True))
    async with served_app(settings) as (_, http):
        yield http


async def test_preflight_from_an_allowed_and_a_refused_origin(cors_client):
    allowed = await cors_client.options(PREDICT, headers=_preflight(DASHBOARD))
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == DASHBOARD
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert {"x-api-key", "x-request-deadline-ms", "content-type"} <= {
        h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")}
    assert "access-control-allow-credentials" not in allowed.headers  # keys travel in a header, not cookies

    refused = await cors_client.options(PREDICT, headers=_preflight(OTHER))
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


async def test_answers_to_an_allowed_origin_carry_the_headers_on_the_hot_path_and_on_errors(cors_client):
    served = await cors_client.post(PREDICT, json={"instance": ROW},
                                    headers={"Origin": DASHBOARD, "X-API-Key": "reader"})
    assert served.status_code == 200, served.text
    assert served.headers["access-control-allow-origin"] == DASHBOARD
    assert "x-request-id" in served.headers["access-control-expose-headers"].lower()
    for path, body in ((PREDICT, {"instance": ROW}), ("/api/ml/predict", {"model_name": "tiny-regressor",
                                                                         "features": ROW})):
        refused = await cors_client.post(path, json=body, headers={"Origin": DASHBOARD})  # no key: 401, readable
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == DASHBOARD
    listed = await cors_client.get("/v1/models", headers={"Origin": "http://localhost:3000", "X-API-Key": "reader"})
    assert listed.headers["access-control-allow-origin"] == "http://localhost:3000"

    other = await cors_client.post(PREDICT, json={"instance": ROW}, headers={"Origin": OTHER, "X-API-Key": "reader"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers  # the browser hides it
    plain = await cors_client.post(PREDICT, json={"instance": ROW}, headers={"X-API-Key": "reader"})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


async def test_off_by_default(client):
    assert Settings().security.cors_allow_origins == ""
    preflight = await client.options(PREDICT, headers=_preflight(DASHBOARD))
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers
    served = await client.post(PREDICT, json={"instance": ROW}, headers={"Origin": DASHBOARD})
    assert served.status_code == 200 and "access-control-allow-origin" not in served.headers


@pytest.mark.parametrize("origins", ["*", "https://dash.example.com/", "dash.example.com", "ftp://x.example.com"])
def test_only_origins_are_accepted(origins):
    with pytest.raises(ValidationError, match="CORS_ALLOW_ORIGINS"):
        SecuritySettings(cors_allow_origins=origins)


def test_the_environment_variable(monkeypatch):
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", f"{DASHBOARD},http://[::1]:8080")
    assert Settings().security.cors_origin_list == [DASHBOARD, "http://[::1]:8080"]
