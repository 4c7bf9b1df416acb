"""An auto_apply experiment's outcomes are votes on production: on the real app, with read, outcome and admin
keys, a read key's outcomes are refused (403) even for predictions it made itself, outcome and admin keys are
accepted, and only accepted outcomes count. Without auto_apply a read key still reports its own predictions."""

from __future__ import annotations

import httpx
import pytest

from prediction_service.settings import ExperimentSettings, SecuritySettings, Settings
from tests.support.asgi import served_app

ADMIN = {"X-API-Key": "admin-key"}
READ = {"X-API-Key": "read-key"}
FILLS = {"X-API-Key": "fills-key"}
KEYS = "admin-key,read-key:read,fills-key:outcome"
MODEL = "tiny-regressor"  # 1.0.0 in production, 2.0.0 validated in staging (tests/conftest.py)


def settings(tiny_store) -> Settings:
    # no background schedule: nothing analyses (or applies) except the calls below
    return Settings(model_store=tiny_store, security=SecuritySettings(api_keys=KEYS),
                    experiments=ExperimentSettings(auto_apply_interval_seconds=0))


async def start(http: httpx.AsyncClient, auto_apply: bool) -> str:
    spec = {"model_name": MODEL, "champion_version": "1.0.0", "challenger_version": "2.0.0",
            "traffic_split": 0.5, "task": "regression", "auto_apply": auto_apply}
    created = await http.post("/v1/experiments", json=spec, headers=ADMIN)
    assert created.status_code == 201, created.text
    return created.json()["id"]


async def predict(http: httpx.AsyncClient, experiment_id: str, i: int, headers: dict) -> str:
    response = await http.post(f"/v1/models/{MODEL}/predict",
                               json={"instance": [0.1, 0.2, 0.3, float(i)], "routing_key": f"unit-{i}"},
                               headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["experiment_id"] == experiment_id and body["arm"] in ("champion", "challenger")
    return body["request_id"]


async def outcome(http: httpx.AsyncClient, request_id: str, headers: dict | None) -> httpx.Response:
    return await http.post(f"/v1/predictions/{request_id}/outcome", json={"actual": 1.0, "pnl": 5.0},
                           headers=headers or {})


async def outcomes_counted(http: httpx.AsyncClient, experiment_id: str) -> int:
    analysis = await http.get(f"/v1/experiments/{experiment_id}/analyze", headers=READ)
    assert analysis.status_code == 200, analysis.text
    return sum(arm["outcomes"] for arm in analysis.json()["arms"].values())


async def test_auto_apply_takes_outcomes_only_from_outcome_and_admin_keys(tiny_store):
    async with served_app(settings(tiny_store)) as (_, http):
        experiment_id = await start(http, auto_apply=True)
        mine = [await predict(http, experiment_id, i, READ) for i in range(6)]
        for request_id in mine[:4]:  # a read key voting with its own predictions
            refused = await outcome(http, request_id, READ)
            assert refused.status_code == 403, refused.text
            error = refused.json()["error"]
            assert error["code"] == "forbidden" and "outcome" in error["message"]
        assert (await outcome(http, mine[0], None)).status_code == 401
        assert await outcomes_counted(http, experiment_id) == 0

        assert (await outcome(http, mine[4], FILLS)).status_code == 201
        assert (await outcome(http, mine[5], ADMIN)).status_code == 201
        fills_own = await predict(http, experiment_id, 100, FILLS)
        assert (await outcome(http, fills_own, FILLS)).status_code == 201
        # a refused outcome left nothing behind: an outcome key may still report that prediction, once
        assert (await outcome(http, mine[0], FILLS)).status_code == 201
        assert (await outcome(http, mine[0], FILLS)).status_code == 409
        assert await outcomes_counted(http, experiment_id) == 4
        experiment = (await http.get(f"/v1/experiments/{experiment_id}", headers=READ)).json()
        assert experiment["status"] == "running"


@pytest.mark.parametrize("reporter", [READ, FILLS])
async def test_without_auto_apply_a_read_key_reports_its_own_predictions(tiny_store, reporter):
    async with served_app(settings(tiny_store)) as (_, http):
        experiment_id = await start(http, auto_apply=False)
        request_id = await predict(http, experiment_id, 1, READ)
        accepted = await outcome(http, request_id, reporter)
        assert accepted.status_code == 201, accepted.text
        theirs = await predict(http, experiment_id, 2, FILLS)
        assert (await outcome(http, theirs, READ)).status_code == 403  # not another key's prediction
        assert await outcomes_counted(http, experiment_id) == 1
