"""The model-server-v2 paths (/api/ml/..., GET /health) answer like the /v1 routes they alias: the same data plane,
numbers, versions and provenance, with model-server-v2 field names, under the same API keys, admission, deadlines,
audit and metrics."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from prometheus_client import CollectorRegistry

from prediction_service.modelzoo.synthetic import synthetic_ohlcv
from prediction_service.monitoring.audit import AuditReader
from prediction_service.settings import AuditSettings, SecuritySettings, Settings
from tests.ensemble.conftest import ENSEMBLE, app_client
from tests.support.asgi import served_app
from prediction_service.registry import ModelKey
from tests.support.gated import gated

TEXT = "Shares rally after strong earnings beat"
ROW = [1.0, 2.0, 3.0, 4.0]
ADMIN = {"X-API-Key": "admin-secret"}
READER = {"X-API-Key": "reader-secret"}
KEYS = SecuritySettings(api_keys="admin-secret,reader-secret:read", predict_requires_key=True)


@pytest.fixture(scope="module")
def ml_store(demo_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("model-server-v2") / "store"
    shutil.copytree(demo_store, root, symlinks=True)  # the three demo models and the ensemble, in production
    return root


@pytest.fixture
async def http(ml_store):
    async with app_client(ml_store) as (_, client):
        yield client


def _window(seed: int = 5) -> list:
    return synthetic_ohlcv(60, seed=seed).tolist()


def _names_the_version(body: dict, model: str, version: str = "1.0.0") -> None:
    assert (body["model_name"], body["model_version"], body["stage"]) == (model, version, "production")
    assert body["provenance"]["sha256"] and body["provenance"]["backend"]


async def test_predict_answers_like_v1_for_bars_tensors_text_and_the_ensemble(http):
    window = _window()
    v1 = (await http.post("/v1/models/lstm-price/predict", json={"bars": window})).json()
    bars = await http.post("/api/ml/predict", json={"model_name": "lstm-price", "features": {"bars": window}})
    assert bars.status_code == 200, bars.text
    body = bars.json()
    assert body["prediction"] == v1["predictions"][0] and body["confidence"] is None
    assert body["provenance"] == v1["provenance"] and bars.headers["x-request-id"] == body["request_id"]
    _names_the_version(body, "lstm-price")

    sentiment = (await http.post("/api/ml/predict", json={"model_name": "sentiment-transformer",
                                                          "features": {"text": TEXT}})).json()
    reference = (await http.post("/v1/models/sentiment-transformer/predict", json={"text": [TEXT]})).json()
    scores = reference["predictions"][0]["scores"]
    assert (sentiment["prediction"], sentiment["scores"]) == (reference["predictions"][0]["label"], scores)
    assert sentiment["confidence"] == max(scores.values())

    ensemble = (await http.post("/api/ml/predict", json={"model_name": ENSEMBLE,
                                                         "features": {"bars": window, "text": TEXT}})).json()
    row = (await http.post(f"/v1/models/{ENSEMBLE}/predict",
                           json={"inputs": {"bars": [window], "text": [TEXT]}})).json()["predictions"][0]
    assert (ensemble["prediction"], ensemble["confidence"]) == (row["prediction"], row["confidence"])
    assert ensemble["components"] == {"price": row["price"], "sentiment_score": row["sentiment_score"]}
    assert [m["version"] for m in ensemble["provenance"]["members"]] == ["1.0.0", "1.0.0"]


async def test_batch_is_one_model_run_over_the_examples(http):
    windows = [_window(7), _window(8), _window(9)]
    batch = await http.post("/api/ml/predict/batch", json={"model_name": "lstm-price",
                                                           "features": [{"bars": w} for w in windows]})
    v1 = await http.post("/v1/models/lstm-price/predict", json={"bars": windows})
    assert batch.status_code == v1.status_code == 200, batch.text
    body = batch.json()
    assert body["count"] == 3 and [p["index"] for p in body["predictions"]] == [0, 1, 2]
    assert [p["prediction"] for p in body["predictions"]] == v1.json()["predictions"]
    _names_the_version(body, "lstm-price")


@pytest.mark.parametrize("path, body, says", [
    ("/api/ml/predict", {"features": {"text": TEXT}}, "model_name"),
    ("/api/ml/predict", {"model_name": "lstm-price", "features": "a window"}, "an example is an object"),
    ("/api/ml/predict", {"model_name": "lstm-price", "features": {"bars": [[1.0] * 5] * 3}}, "at least 60 bars"),
    ("/api/ml/predict", {"model_name": "lstm-price", "features": {"bars": _window()}, "version": "1.0.0"},
     "version"),  # model-server-v2 says model_version
    ("/api/ml/predict/batch", {"model_name": "lstm-price", "features": []}, "features"),
    ("/api/ml/predict/batch", {"model_name": "lstm-price", "features": [{"bars": _window()}, {"text": TEXT}]},
     "keys differ"),
])
async def test_bad_bodies_are_422_not_500(http, path, body, says):
    response = await http.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input" and says in response.text


async def test_malformed_json_is_400_and_an_unknown_model_404(http):
    malformed = await http.post("/api/ml/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    unknown = await http.post("/api/ml/predict", json={"model_name": "no-such-model", "features": ROW})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


async def test_models_reload_and_health(http):
    listed = (await http.get("/api/ml/models")).json()
    kinds = {m["model_name"]: m["kind"] for m in listed["models"]}
    assert kinds == {"cnn-lstm-direction": "model", "gbdt-direction": "model", "lstm-price": "model",
                     "patchtst-price": "model", "sentiment-transformer": "model", ENSEMBLE: "ensemble"} \
        and listed["count"] == 6
    lstm = next(m for m in listed["models"] if m["model_name"] == "lstm-price")
    assert lstm["stages"]["production"] == "1.0.0" and lstm["versions"] == ["1.0.0"]

    one = (await http.post("/api/ml/models/reload", json={"model_name": "lstm-price"})).json()
    assert one == {"reloaded": [{"model_name": "lstm-price", "serving": {"production": "1.0.0"},
                                 "load_failures": {}}], "count": 1}
    every = (await http.post("/api/ml/models/reload")).json()  # no body: every registered model
    assert [r["model_name"] for r in every["reloaded"]] == ["cnn-lstm-direction", "gbdt-direction", "lstm-price",
                                                            "patchtst-price", "sentiment-transformer"]
    unknown = await http.post("/api/ml/models/reload", json={"model_name": "no-such-model"})
    assert unknown.status_code == 404

    for path in ("/health", "/api/ml/health"):
        health = await http.get(path)
        assert health.status_code == 200 and health.json()["status"] == "healthy", health.text
        assert {"lstm-price", "sentiment-transformer"} <= set(health.json()["models_loaded"])


async def test_every_alias_needs_the_key_v1_needs(ml_store):
    window = {"model_name": "lstm-price", "features": {"bars": _window()}}
    async with app_client(ml_store, security=KEYS) as (_, client):
        for path, body in (("/api/ml/predict", window), ("/api/ml/predict/batch", {**window, "features": [
                {"bars": _window()}]})):
            refused = await client.post(path, json=body)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized", path
            garbled = await client.post(path, content=b"{not json", headers={"content-type": "application/json"})
            assert garbled.status_code == 401  # the key is checked before the body is read
            assert (await client.post(path, json=body, headers=READER)).status_code == 200
        assert (await client.get("/api/ml/models")).status_code == 401
        assert (await client.get("/api/ml/models", headers=READER)).status_code == 200
        assert (await client.post("/api/ml/models/reload", headers=READER)).status_code == 403
        assert (await client.post("/api/ml/models/reload", headers=ADMIN)).status_code == 200
        create = {"model_name": "lstm-price", "version_a": "1.0.0", "version_b": "1.0.0"}
        assert (await client.post("/api/ml/ab-test/create", json=create, headers=READER)).status_code == 403
        assert (await client.post("/api/ml/ab-test/x/stop", headers=READER)).status_code == 403
        assert (await client.get("/api/ml/ab-test/x/analyze")).status_code == 401
        assert (await client.get("/health")).status_code == 200  # open, as /health/ready is


async def test_ab_tests_audit_metrics_and_deadlines_through_the_aliases(tiny_store_template, tmp_path, monkeypatch):
    store = tmp_path / "store"
    shutil.copytree(tiny_store_template, store, symlinks=True)
    metrics = CollectorRegistry()
    settings = Settings(model_store=store, audit=AuditSettings(flush_interval_ms=20), security=KEYS)
    async with served_app(settings, metrics_registry=metrics) as (app, http):
        created = await http.post("/api/ml/ab-test/create", headers=ADMIN, json={
            "model_name": "tiny-regressor", "version_a": "1.0.0", "version_b": "2.0.0", "traffic_split": 0.5,
            "task": "regression"})
        assert created.status_code == 201, created.text
        test = created.json()
        assert (test["version_a"], test["version_b"], test["status"]) == ("1.0.0", "2.0.0", "running")
        assert (await http.get(f"/v1/experiments/{test['test_id']}", headers=READER)).json()["challenger_version"] \
            == "2.0.0"  # the same experiment /v1 sees
        bad = await http.post("/api/ml/ab-test/create", headers=ADMIN, json={
            "model_name": "tiny-regressor", "version_a": "1.0.0", "version_b": "2.0.0", "traffic_split": 1.5})
        assert bad.status_code == 422 and "traffic_split" in bad.text

        answers = [await http.post("/api/ml/predict", headers=READER, json={
            "model_name": "tiny-regressor", "features": ROW, "routing_key": f"k{i}"}) for i in range(20)]
        bodies = [a.json() for a in answers]
        assert all(a.status_code == 200 for a in answers), bodies[0]
        assert {(b["arm"], b["model_version"]) for b in bodies} == {("champion", "1.0.0"), ("challenger", "2.0.0")}
        assert {b["experiment_id"] for b in bodies} == {test["test_id"]}
        for body in bodies[:4]:
            outcome = await http.post(f"/v1/predictions/{body['request_id']}/outcome", headers=ADMIN,
                                      json={"actual": body["prediction"]})
            assert outcome.status_code == 201, outcome.text

        analysis = await http.post(f"/api/ml/ab-test/{test['test_id']}/analyze", headers=READER)
        assert analysis.status_code == 200, analysis.text
        result = analysis.json()
        assert (result["decision"], result["winner"], result["applied"]) == ("continue", None, False)
        assert result["arms"]["a"]["requests"] + result["arms"]["b"]["requests"] == 20
        assert (await http.get(f"/api/ml/ab-test/{test['test_id']}/analyze", headers=READER)).status_code == 200
        stopped = await http.post(f"/api/ml/ab-test/{test['test_id']}/stop", headers=ADMIN, json={"reason": "done"})
        assert (stopped.json()["status"], stopped.json()["end_reason"]) == ("stopped", "done")
        assert (await http.post("/api/ml/ab-test/no-such-test/stop", headers=ADMIN)).status_code == 404

        # the model holds its run (gated) past the request's 15 ms deadline
        async with gated(app, ModelKey("tiny-classifier", "1.0.0"), monkeypatch) as gate:
            late = asyncio.create_task(http.post("/api/ml/predict", headers={**READER, "X-Request-Deadline-Ms": "15"},
                                                 json={"model_name": "tiny-classifier", "features": ROW}))
            await gate.wait_started()
            late = await late
        assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"

    def sample(name: str, **labels: str) -> float:
        return metrics.get_sample_value(name, labels) or 0.0

    assert sum(sample("prediction_requests_total", model="tiny-regressor", version=v, status="200")
               for v in ("1.0.0", "2.0.0")) == 20
    assert sample("prediction_requests_total", model="tiny-classifier", version="1.0.0", status="504") == 1
    reader = AuditReader(store / ".state" / "audit.sqlite3")  # the lifespan exit flushed the writer
    for body in bodies:
        entry = reader.request(body["request_id"])
        assert entry is not None and (entry.version, entry.arm, entry.status) == (body["model_version"],
                                                                                  body["arm"], 200)
    assert reader.request(late.headers["x-request-id"]).status == 504


async def test_a_bad_body_is_counted_under_its_model_as_on_v1(ml_store, tmp_path):
    """The body is decoded in the request pipeline: a 422 is a failed prediction of the model it names (metrics,
    audit); a body that names no model is refused before it (there is no model to count it under)."""
    store = tmp_path / "store"
    shutil.copytree(ml_store, store, symlinks=True)
    metrics = CollectorRegistry()
    async with served_app(Settings(model_store=store, audit=AuditSettings(flush_interval_ms=20)),
                          metrics_registry=metrics) as (_, http):
        bad = await http.post("/api/ml/predict", json={"model_name": "lstm-price", "features": "a window"})
        nameless = await http.post("/api/ml/predict", json={"model_name": 7, "features": ROW})
        assert bad.status_code == nameless.status_code == 422 and "model_name" in nameless.text
        assert bad.headers["x-request-id"] and nameless.headers["x-request-id"]
    counted = sum(s.value for family in metrics.collect() for s in family.samples
                  if s.name == "prediction_requests_total" and s.labels["status"] == "422")
    assert counted == 1  # as on /v1: under the model label of predictions that resolved to no version
    reader = AuditReader(store / ".state" / "audit.sqlite3")
    entry = reader.request(bad.headers["x-request-id"])
    assert entry is not None and (entry.model, entry.status, entry.error_code) == ("lstm-price", 422, "invalid_input")
    assert reader.request(nameless.headers["x-request-id"]) is None


async def test_a_forecaster_answers_its_first_n_steps(http):
    bars = synthetic_ohlcv(64, seed=12).tolist()
    v1 = (await http.post("/v1/models/patchtst-price/predict", json={"bars": bars})).json()
    three = await http.post("/api/ml/predict", json={"model_name": "patchtst-price", "features": {"bars": bars},
                                                     "n_steps": 3})
    over = await http.post("/api/ml/predict", json={"model_name": "patchtst-price", "features": {"bars": bars},
                                                    "n_steps": 9})
    assert three.status_code == 200, three.text
    assert three.json()["prediction"] == v1["predictions"][0][:3] and len(v1["predictions"][0]) == 8
    assert over.status_code == 422 and "forecasts 8 steps ahead" in over.text
