"""The experiments REST router through an ASGI client, with API-key scopes and the shared error body."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from prediction_service.api.routes.experiments import router
from prediction_service.experiments.service import ExperimentService
from prediction_service.settings import SecuritySettings, Settings
from tests.support.asgi import asgi_client, router_app

ADMIN = {"X-API-Key": "admin-key"}
READ = {"X-API-Key": "read-key"}
SPEC = {"model_name": "sentiment", "champion_version": "1.0.0", "challenger_version": "1.1.0",
        "traffic_split": 0.5}


@pytest.fixture
def app(service: ExperimentService, tmp_path) -> FastAPI:
    app = router_app(router, Settings(model_store=tmp_path / "store",
                                      security=SecuritySettings(api_keys="admin-key,read-key:read")))
    app.state.service.experiments = service  # the recording promoter of tests/experiments/conftest.py
    return app


@pytest.fixture
async def client(app: FastAPI):
    async with asgi_client(app, lifespan=False) as c:
        yield c


async def create(client: httpx.AsyncClient, **overrides) -> dict:
    response = await client.post("/v1/experiments", json=SPEC | overrides, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()


async def test_create_get_list(client):
    exp = await create(client)
    assert exp["status"] == "running" and exp["traffic_split"] == 0.5 and exp["mode"] == "sequential"
    got = await client.get(f"/v1/experiments/{exp['id']}", headers=READ)
    assert got.status_code == 200 and got.json() == exp
    listed = await client.get("/v1/experiments", params={"model_name": "sentiment", "status": "running"},
                              headers=READ)
    assert [e["id"] for e in listed.json()] == [exp["id"]]
    assert (await client.get("/v1/experiments", params={"status": "stopped"}, headers=READ)).json() == []


async def test_scopes(client):
    assert (await client.post("/v1/experiments", json=SPEC)).status_code == 401
    forbidden = await client.post("/v1/experiments", json=SPEC, headers=READ)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
    assert (await client.get("/v1/experiments")).status_code == 401
    exp = await create(client)
    assert (await client.post(f"/v1/experiments/{exp['id']}/stop", headers=READ)).status_code == 403


@pytest.mark.parametrize("overrides, status, code", [
    ({"traffic_split": 0}, 422, "invalid_request"),
    ({"traffic_split": 1}, 422, "invalid_request"),
    ({"traffic_split": 1.5}, 422, "invalid_request"),
    ({"challenger_version": "1.0.0"}, 400, "bad_request"),
    ({"challenger_version": "7.7.7"}, 404, "version_not_found"),
    ({"model_name": "nope"}, 404, "version_not_found"),
    ({"mode": "bayesian"}, 422, "invalid_request"),
    ({"surprise": 1}, 422, "invalid_request"),
    ({"mode": "fixed", "auto_apply": True}, 400, "bad_request"),  # a one-look test checked on a schedule
    ({"planned_outcomes": 5000}, 400, "bad_request"),  # a horizon means nothing to a sequential test
    ({"thresholds": {"target_accuracy_gain": 0.01}}, 400, "bad_request"),  # no power at the 1-point margin
])
async def test_bad_creates_are_4xx_and_create_nothing(client, overrides, status, code):
    response = await client.post("/v1/experiments", json=SPEC | overrides, headers=ADMIN)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert (await client.get("/v1/experiments", headers=READ)).json() == []


async def test_second_running_experiment_is_409(client):
    first = await create(client)
    again = await client.post("/v1/experiments", json=SPEC | {"challenger_version": "1.2.0"}, headers=ADMIN)
    assert again.status_code == 409
    assert again.json()["error"]["details"]["experiment_id"] == first["id"]


async def test_stop(client):
    exp = await create(client)
    stopped = await client.post(f"/v1/experiments/{exp['id']}/stop", json={"reason": "done"}, headers=ADMIN)
    assert stopped.status_code == 200
    assert stopped.json()["status"] == "stopped" and stopped.json()["end_reason"] == "done"
    assert (await client.post(f"/v1/experiments/{exp['id']}/stop", headers=ADMIN)).status_code == 409
    assert (await client.post("/v1/experiments/unknown/stop", headers=ADMIN)).status_code == 404


async def test_outcome_and_analyze(client, service: ExperimentService):
    exp = await create(client)
    rng = np.random.default_rng(0)
    # Arms come from hashing the (random) experiment id: give each arm exactly 70 % correct outcomes so
    # that no assignment can make one arm look significantly worse (random outcomes did, in ~alpha/2 of runs).
    actual, per_arm = {}, {"champion": 0, "challenger": 0}
    for i in range(200):
        assignment = service.route("sentiment", f"k{i}")
        service.record_prediction(f"req-{i}", assignment, float(rng.normal(5, 1)), False,
                                  np.array([[0.2, 0.8]]))
        actual[i] = int(per_arm[assignment.arm.value] % 10 < 7)  # class 1 is what the model predicted
        per_arm[assignment.arm.value] += 1
    for i in range(200):
        response = await client.post(f"/v1/predictions/req-{i}/outcome", json={"actual": actual[i], "pnl": 1.0},
                                     headers=READ)
        assert response.status_code == 201, response.text
    assert response.json()["request_id"] == "req-199" and response.json()["correct"] in (True, False)

    duplicate = await client.post("/v1/predictions/req-0/outcome", json={"actual": 1}, headers=READ)
    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "conflict"
    unknown = await client.post("/v1/predictions/nope/outcome", json={"actual": 1}, headers=READ)
    assert unknown.status_code == 404
    assert (await client.post("/v1/predictions/req-0/outcome", json={}, headers=READ)).status_code == 422
    assert (await client.post("/v1/predictions/req-0/outcome", json={"actual": 1})).status_code == 401

    analysis = await client.get(f"/v1/experiments/{exp['id']}/analyze", headers=READ)
    assert analysis.status_code == 200
    body = analysis.json()
    assert body["decision"] == "continue" and body["reasons"]
    assert body["arms"]["champion"]["outcomes"] + body["arms"]["challenger"]["outcomes"] == 200
    assert body["arms"]["challenger"]["total_pnl"] is not None
    accuracy = next(c for c in body["comparisons"] if c["metric"] == "accuracy")
    assert accuracy["method"] == "msprt-batch" and 0 <= accuracy["p_value"] <= 1  # sequential, batch means by default
    assert (await client.get("/v1/experiments/nope/analyze", headers=READ)).status_code == 404
