"""The AIPX-compatible paths answer like the /v1 routes they alias (same data plane, same versions, same numbers),
with the seed's field names and confidence, under the same API-key rules."""

from __future__ import annotations

import shutil

import pytest

from prediction_service.modelzoo.synthetic import synthetic_ohlcv
from prediction_service.settings import SecuritySettings
from tests.ensemble.conftest import ENSEMBLE, app_client

TEXT = "Shares rally after strong earnings beat"


@pytest.fixture(scope="module")
def alias_store(demo_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("aliases") / "store"
    shutil.copytree(demo_store, root, symlinks=True)  # setup-demo registers the ensemble
    return root


@pytest.fixture
async def http(alias_store):
    async with app_client(alias_store) as (_, client):
        yield client


def _window(seed: int = 5) -> list:
    return synthetic_ohlcv(60, seed=seed).tolist()


async def test_price_answers_like_v1(http):
    window = _window()
    alias = await http.post("/api/v1/predict/price", json={"symbol": "005930", "ohlcv_data": window})
    v1 = await http.post("/v1/models/lstm-price/predict", json={"bars": window})
    assert alias.status_code == v1.status_code == 200, alias.text
    body, reference = alias.json(), v1.json()
    assert body["forecast"] == reference["predictions"][0]
    # lstm-price forecasts next close / last close (its bars step divides by the last close)
    assert body["predicted_price"] == pytest.approx(reference["predictions"][0] * window[-1][3], rel=1e-12)
    assert (body["model_name"], body["model_version"], body["symbol"]) == ("lstm-price", "1.0.0", "005930")
    assert body["confidence"] is None  # a regression model has no class score to report
    assert body["provenance"] == reference["provenance"]
    assert alias.headers["x-request-id"] == body["request_id"]


async def test_sentiment_answers_like_v1_with_confidence(http):
    alias = await http.post("/api/v1/predict/sentiment", json={"text": TEXT})
    v1 = await http.post("/v1/models/sentiment-transformer/predict", json={"text": [TEXT]})
    assert alias.status_code == v1.status_code == 200, alias.text
    body, scores = alias.json(), v1.json()["predictions"][0]["scores"]
    assert body["scores"] == scores and body["label"] == v1.json()["predictions"][0]["label"]
    assert body["sentiment"] == pytest.approx(scores["positive"] - scores["negative"])
    assert body["confidence"] == max(scores.values())


async def test_ensemble_answers_like_v1(http):
    window = _window(6)
    alias = await http.post("/api/v1/predict/ensemble",
                            json={"symbol": "005930", "ohlcv_data": window, "news_text": TEXT})
    v1 = await http.post(f"/v1/models/{ENSEMBLE}/predict", json={"inputs": {"bars": [window], "text": [TEXT]}})
    assert alias.status_code == v1.status_code == 200, alias.text
    body, row = alias.json(), v1.json()["predictions"][0]
    last_close = window[-1][3]
    assert body["final_prediction"] == pytest.approx(row["prediction"] * last_close, rel=1e-12)
    assert body["price_component"] == pytest.approx(row["price"] * last_close, rel=1e-12)
    assert body["sentiment_component"] == row["sentiment_score"]
    assert body["confidence"] == row["confidence"]
    assert [m["version"] for m in body["provenance"]["members"]] == ["1.0.0", "1.0.0"]


async def test_batch_is_one_model_run_over_the_windows(http):
    windows = [_window(7), _window(8), _window(9)]
    alias = await http.post("/api/v1/predict/batch", json={"items": [{"symbol": f"s{i}", "ohlcv_data": w}
                                                                      for i, w in enumerate(windows)]})
    v1 = await http.post("/v1/models/lstm-price/predict", json={"bars": windows})
    assert alias.status_code == v1.status_code == 200, alias.text
    body = alias.json()
    assert body["count"] == 3
    assert [p["forecast"] for p in body["predictions"]] == v1.json()["predictions"]
    assert [(p["batch_index"], p["symbol"]) for p in body["predictions"]] == [(0, "s0"), (1, "s1"), (2, "s2")]


async def test_metadata_of_a_model_and_of_the_ensemble(http):
    model = await http.get("/api/v1/models/lstm-price/metadata")
    oip = await http.get("/v2/models/lstm-price")
    assert model.status_code == oip.status_code == 200
    assert {k: v for k, v in model.json().items() if k in oip.json()} == oip.json()
    assert model.json()["max_batch_size"] > 0
    ensemble = (await http.get(f"/api/v1/models/{ENSEMBLE}/metadata")).json()
    assert ensemble["platform"] == "ensemble" and ensemble["stage"] == "production"
    assert [m["model"] for m in ensemble["members"]] == ["lstm-price", "sentiment-transformer"]
    assert (await http.get("/api/v1/models/nope/metadata")).status_code == 404


async def test_metrics_count_the_alias_requests(http):
    await http.post("/api/v1/predict/sentiment", json={"text": TEXT})
    body = (await http.get("/api/v1/metrics")).json()
    reference = (await http.get("/v1/stats")).json()
    assert sum(body["requests_by_status"].values()) >= 1
    assert body["requests_by_status"] == reference["requests_by_status"]


async def test_bad_requests_are_422_like_v1(http):
    short = await http.post("/api/v1/predict/price", json={"ohlcv_data": [[1.0] * 5] * 3})
    assert short.status_code == 422 and "at least 60 bars" in short.text
    missing = await http.post("/api/v1/predict/ensemble", json={"ohlcv_data": _window()})
    assert missing.status_code == 422 and "news_text" in missing.text


async def test_aliases_need_a_key_when_predictions_do(alias_store):
    async with app_client(alias_store, security=SecuritySettings(api_keys="admin-secret,reader:read",
                                                                  predict_requires_key=True)) as (_, client):
        refused = await client.post("/api/v1/predict/sentiment", json={"text": TEXT})
        assert refused.status_code == 401
        ok = await client.post("/api/v1/predict/sentiment", json={"text": TEXT}, headers={"X-API-Key": "reader"})
        assert ok.status_code == 200, ok.text
        assert (await client.get("/api/v1/models/lstm-price/metadata")).status_code == 401
