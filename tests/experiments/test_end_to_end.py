"""A/B end to end against a real server: create, route traffic, feed outcomes, analyze, auto-promote.

The experiments apply their decisions by themselves (auto_apply), so outcomes come from an outcome-scoped
key: the first test predicts with a read key (which may not report even its own predictions), the second
predicts anonymously (a read key is refused there too)."""

from __future__ import annotations

import random
import shutil
import time

import httpx
import pytest

from prediction_service.registry import ModelRegistry
from tests.support.models import CLASSIFIER_SIGNATURE, TinyClassifier, register_tiny
from tests.support.server import running_server

ADMIN = {"X-API-Key": "admin-secret"}
READ = {"X-API-Key": "read-secret"}
OTHER_READ = {"X-API-Key": "other-read-secret"}
FILLS = {"X-API-Key": "fills-secret"}
KEYS = "admin-secret,read-secret:read,other-read-secret:read,fills-secret:outcome"


def _store_with_challenger(tiny_store_template, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store_template, store, symlinks=True)
    register_tiny(store, "tiny-classifier", "2.0.0", TinyClassifier(), CLASSIFIER_SIGNATURE, tmp_path / "w",
                  stage=None)
    return store


def _create(http: httpx.Client) -> str:
    spec = {"model_name": "tiny-classifier", "champion_version": "1.0.0", "challenger_version": "2.0.0",
            "traffic_split": 0.5, "task": "classification", "auto_apply": True, "min_samples_per_arm": 60}
    created = http.post("/v1/experiments", json=spec, headers=ADMIN)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def _predict_and_report(http: httpx.Client, rng: random.Random, i: int, predict_key: dict | None = None,
                        report_key: dict = READ) -> dict:
    """One prediction and its outcome: the challenger is right 90 % of the time, the champion 60 %."""
    row = [rng.uniform(-1, 1) for _ in range(4)]
    response = http.post("/v1/models/tiny-classifier/predict", json={"instance": row, "routing_key": f"client-{i}"},
                         headers=predict_key or {})
    assert response.status_code == 200, response.text
    body = response.json()
    if body.get("arm") is None:
        return body  # no experiment (any more)
    assert body["version"] == ("2.0.0" if body["arm"] == "challenger" else "1.0.0")
    predicted = ["down", "flat", "up"].index(body["predictions"][0]["label"])
    right = rng.random() < (0.9 if body["arm"] == "challenger" else 0.6)
    actual = predicted if right else (predicted + 1) % 3
    outcome = http.post(f"/v1/predictions/{body['request_id']}/outcome", json={"actual": actual},
                        headers=report_key)
    if outcome.status_code == 404:  # served under a stale route: the experiment ended meanwhile, not counted
        status = http.get(f"/v1/experiments/{body['experiment_id']}", headers=READ).json()["status"]
        assert status != "running", outcome.text
        return {**body, "stale": True}
    assert outcome.status_code in (200, 201), outcome.text
    return body


def _assert_promoted_in_registry(store) -> None:
    registry = ModelRegistry(store)
    assert registry.stages("tiny-classifier")["production"] == "2.0.0"
    assert registry.get("tiny-classifier", "1.0.0").metadata.status == "archived"
    assert any(e.event == "stage_change" and e.actor == "experiment"
               for e in registry.model_events("tiny-classifier"))


@pytest.mark.slow
def test_experiment_auto_promotes_a_better_challenger_and_moves_production(tiny_store_template, tmp_path):
    store = _store_with_challenger(tiny_store_template, tmp_path)
    # no background schedule: the decision is applied by the analyze call below
    env = {"API_KEYS": KEYS, "PREDICT_REQUIRES_KEY": "true", "EXPERIMENT_AUTO_APPLY_INTERVAL_SECONDS": "0"}
    with running_server(store, env=env) as (base, _):
        with httpx.Client(base_url=base, timeout=10) as http:
            experiment_id = _create(http)
            rng = random.Random(7)
            arms = {"champion": 0, "challenger": 0}
            # a read key cannot post an outcome for another key's prediction (it could steer production)
            row = {"instance": [0.1, 0.2, 0.3, 0.4], "routing_key": "someone"}
            theirs = http.post("/v1/models/tiny-classifier/predict", json=row, headers=OTHER_READ).json()
            refused = http.post(f"/v1/predictions/{theirs['request_id']}/outcome", json={"actual": 0}, headers=READ)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
            own = http.post(f"/v1/predictions/{theirs['request_id']}/outcome", json={"actual": 0},
                            headers=OTHER_READ)
            assert own.status_code == 403, own.text  # its own prediction: still a vote on production
            # enough for the always-valid (mSPRT) test, which pays for peeking with width: at 200 per arm its
            # p-value for this 30-point gap was 0.07-0.08 in some runs
            for i in range(1000):
                body = _predict_and_report(http, rng, i, predict_key=READ, report_key=FILLS)
                assert body["experiment_id"] == experiment_id and body["arm"] in arms
                arms[body["arm"]] += 1
            assert min(arms.values()) > 300  # a 50/50 split, give or take

            again = http.post(f"/v1/predictions/{body['request_id']}/outcome", json={"actual": 0}, headers=FILLS)
            assert again.status_code == 409

            analysis = http.get(f"/v1/experiments/{experiment_id}/analyze", headers=READ)
            assert analysis.status_code == 200, analysis.text
            result = analysis.json()
            assert result["decision"] == "promote", (result["reasons"], result["comparisons"])
            assert http.get(f"/v1/experiments/{experiment_id}", headers=READ).json()["status"] == "promoted"
    _assert_promoted_in_registry(store)


@pytest.mark.slow
def test_auto_apply_promotes_on_its_schedule_without_an_analyze_call(tiny_store_template, tmp_path):
    store = _store_with_challenger(tiny_store_template, tmp_path)
    env = {"API_KEYS": KEYS, "EXPERIMENT_AUTO_APPLY_INTERVAL_SECONDS": "0.3",
           "EXPERIMENT_ROUTE_CACHE_TTL_SECONDS": "0.1"}
    with running_server(store, env=env, workers=2) as (base, _):
        with httpx.Client(base_url=base, timeout=10) as http:
            experiment_id = _create(http)
            # anonymous predictions in an auto_apply experiment: a read key may not report their outcomes
            anonymous = http.post("/v1/models/tiny-classifier/predict", json={"instance": [0.1, 0.2, 0.3, 0.4]}).json()
            refused = http.post(f"/v1/predictions/{anonymous['request_id']}/outcome", json={"actual": 0},
                                headers=READ)
            assert refused.status_code == 403, refused.text
            rng = random.Random(11)
            served_after = None
            for i in range(3000):  # bounded: the sequential test decides after ~150 scored predictions per arm
                body = _predict_and_report(http, rng, i, report_key=FILLS)
                if body.get("arm") is None or body.get("stale"):
                    served_after = body
                    break
            assert served_after is not None, "the experiment never ended"
            assert http.get(f"/v1/experiments/{experiment_id}", headers=READ).json()["status"] == "promoted"
            # production traffic moves to the promoted challenger in every worker (once each has loaded it)
            for _ in range(100):
                versions = {http.post("/v1/models/tiny-classifier/predict", json={"instance": [0.1, 0.2, 0.3, 0.4]}
                                      ).json()["version"] for _ in range(20)}
                if versions == {"2.0.0"}:
                    break
                time.sleep(0.1)
            assert versions == {"2.0.0"}, versions
    _assert_promoted_in_registry(store)
