"""POST /v1/predictions/{id}/outcome outside auto_apply is authorised per prediction: the key that made the
prediction, a key of outcome scope, or admin; anonymous predictions take outcomes from any read key. An
auto_apply experiment takes outcomes only from outcome or admin keys, unless a setting says so."""

from __future__ import annotations

import hashlib

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from prediction_service.api.routes.experiments import router
from prediction_service.security.auth import ApiKeyStore, Scope
from prediction_service.experiments.models import ExperimentSpec
from prediction_service.experiments.service import ExperimentService
from prediction_service.settings import SecuritySettings, Settings
from tests.support.asgi import asgi_client, router_app

KEYS = "admin-key,read-key:read,other-key:read,fills-key:outcome"
ADMIN, READ, OTHER, FILLS = ({"X-API-Key": k} for k in ("admin-key", "read-key", "other-key", "fills-key"))


def key_id(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()[:8]


def make_app(service: ExperimentService, tmp_path, api_keys: str = KEYS) -> FastAPI:
    app = router_app(router, Settings(model_store=tmp_path / "store", security=SecuritySettings(api_keys=api_keys)))
    app.state.service.experiments = service
    return app


async def post_outcome(app: FastAPI, request_id: str, headers: dict | None) -> httpx.Response:
    async with asgi_client(app, lifespan=False) as client:
        return await client.post(f"/v1/predictions/{request_id}/outcome", json={"actual": 1}, headers=headers or {})


def predict(service: ExperimentService, request_id: str, api_key_id: str | None) -> None:
    assignment = service.route("sentiment", request_id)
    service.record_prediction(request_id, assignment, 3.0, False, np.array([[0.1, 0.8, 0.1]]), api_key_id=api_key_id)


def start(service: ExperimentService, auto_apply: bool) -> None:
    service.create(ExperimentSpec(model_name="sentiment", champion_version="1.0.0", challenger_version="1.1.0",
                                  traffic_split=0.5, auto_apply=auto_apply))


async def test_only_the_predicting_key_or_an_outcome_key_reports_a_keyed_prediction(service, tmp_path):
    start(service, auto_apply=False)
    app = make_app(service, tmp_path)
    for i in range(4):
        predict(service, f"mine-{i}", key_id("read-key"))
    refused = await post_outcome(app, "mine-0", OTHER)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert "key that made the prediction" in refused.json()["error"]["message"]
    assert (await post_outcome(app, "mine-0", None)).status_code == 401
    assert (await post_outcome(app, "mine-0", READ)).status_code == 201  # its own prediction
    assert (await post_outcome(app, "mine-1", FILLS)).status_code == 201  # the fills reporter: any prediction
    assert (await post_outcome(app, "mine-2", ADMIN)).status_code == 201
    assert (await post_outcome(app, "unknown", OTHER)).status_code == 404
    data = service.store.arm_data(service.list()[0].id)
    assert sum(d.actual.size for d in data.values()) == 3  # the refused outcome left nothing behind


async def test_anonymous_predictions_cannot_feed_auto_apply_from_a_read_key(service, tmp_path):
    start(service, auto_apply=True)
    app = make_app(service, tmp_path)
    predict(service, "anon-1", None)
    predict(service, "anon-2", None)
    refused = await post_outcome(app, "anon-1", READ)
    assert refused.status_code == 403 and "outcome scope" in refused.json()["error"]["message"]
    assert (await post_outcome(app, "anon-1", FILLS)).status_code == 201
    assert (await post_outcome(app, "anon-2", ADMIN)).status_code == 201


async def test_anonymous_predictions_take_read_key_outcomes_without_auto_apply(service, tmp_path):
    start(service, auto_apply=False)
    predict(service, "anon-1", None)
    assert (await post_outcome(make_app(service, tmp_path), "anon-1", READ)).status_code == 201


async def test_a_setting_lets_read_key_outcomes_drive_auto_apply(make_service, tmp_path):
    service = make_service(anonymous_outcomes_auto_apply=True)
    start(service, auto_apply=True)
    app = make_app(service, tmp_path)
    predict(service, "anon-1", None)
    predict(service, "mine-1", key_id("read-key"))
    assert (await post_outcome(app, "anon-1", READ)).status_code == 201
    assert (await post_outcome(app, "mine-1", READ)).status_code == 201
    assert (await post_outcome(app, "mine-1", OTHER)).status_code == 403  # still not another key's prediction


async def test_without_api_keys_outcomes_are_open(service, tmp_path):
    start(service, auto_apply=True)
    predict(service, "anon-1", None)
    assert (await post_outcome(make_app(service, tmp_path, api_keys=""), "anon-1", None)).status_code == 201


def test_outcome_scope_parses_between_read_and_admin():
    store = ApiKeyStore("a,r:read,f:outcome")
    scopes = {k.key_id: k.scope for k in store.keys}
    assert scopes[key_id("f")] is Scope.OUTCOME and Scope.READ < Scope.OUTCOME < Scope.ADMIN
    assert store.authenticate("f", Scope.READ).scope is Scope.OUTCOME  # reads like a read key
    with pytest.raises(ValueError, match=":outcome"):
        ApiKeyStore("k:write")
