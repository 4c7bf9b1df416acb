"""The ensemble served through the real app like any model (/v1 and OIP REST): the answer is the documented
combination of what its members answer for the same inputs, provenance names the ensemble version and each
member's, a member that cannot serve makes it 503 naming the member."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prediction_service.ensemble import EnsembleRegistry
from prediction_service.modelzoo.synthetic import synthetic_ohlcv
from prediction_service.registry import ModelRegistry

from .conftest import COMBINER, ENSEMBLE, register_ensemble

HEADLINES = ["Shares rally after strong earnings beat", "Regulator opens probe, stock plunges",
             "Company schedules annual meeting"]


def _windows(rows: int = 3) -> list:
    return [synthetic_ohlcv(60, seed=20 + row).tolist() for row in range(rows)]


async def _members(http, bars, texts):
    price = await http.post("/v1/models/lstm-price/predict", json={"bars": bars})
    sentiment = await http.post("/v1/models/sentiment-transformer/predict", json={"text": texts})
    assert price.status_code == sentiment.status_code == 200, (price.text, sentiment.text)
    return price.json(), sentiment.json()


async def test_output_is_the_documented_combination_of_the_members(ensemble_client):
    bars = _windows()
    response = await ensemble_client.post(f"/v1/models/{ENSEMBLE}/predict",
                                          json={"inputs": {"bars": bars, "text": HEADLINES}})
    assert response.status_code == 200, response.text
    body = response.json()
    price, sentiment = await _members(ensemble_client, bars, HEADLINES)
    expected = COMBINER.combine(np.array(price["outputs"]["price"], dtype=np.float32),
                                np.array(sentiment["outputs"]["probabilities"], dtype=np.float32),
                                ["negative", "neutral", "positive"]).outputs()
    for name, values in expected.items():
        np.testing.assert_allclose(np.array(body["outputs"][name]), values, rtol=1e-6, err_msg=name)
    assert body["predictions"][0]["prediction"] == body["outputs"]["prediction"][0][0]
    assert sorted(body["predictions"][0]) == ["confidence", "prediction", "price", "sentiment_score"]

    provenance = body["provenance"]
    assert (body["model"], body["version"], body["stage"]) == (ENSEMBLE, "1.0.0", "production")
    assert provenance["backend"] == "ensemble" and provenance["artifact"] == "ensemble.json"
    assert provenance["sha256"] == EnsembleRegistry(ensemble_client.app.state.service.settings.model_store) \
        .get(ENSEMBLE, "1.0.0").sha256
    members = {m["role"]: m for m in provenance["members"]}
    assert (members["price"]["model"], members["price"]["version"]) == ("lstm-price", "1.0.0")
    assert members["price"]["sha256"] == price["provenance"]["sha256"]
    assert (members["sentiment"]["model"], members["sentiment"]["version"]) == ("sentiment-transformer", "1.0.0")
    assert members["sentiment"]["sha256"] == sentiment["provenance"]["sha256"]


async def test_one_text_serves_every_window_and_rows_must_match(ensemble_client):
    bars = _windows(2)
    one = await ensemble_client.post(f"/v1/models/{ENSEMBLE}/predict", json={"inputs": {"bars": bars,
                                                                                       "text": HEADLINES[:1]}})
    assert one.status_code == 200, one.text
    scores = one.json()["outputs"]["sentiment_score"]
    assert len(scores) == 2 and scores[0] == scores[1]
    mismatch = await ensemble_client.post(f"/v1/models/{ENSEMBLE}/predict",
                                          json={"inputs": {"bars": bars, "text": HEADLINES}})
    assert mismatch.status_code == 422 and "2 bars windows but 3 texts" in mismatch.text


async def test_oip_rest_serves_it_with_member_versions(ensemble_client):
    bars = np.asarray(_windows(1), dtype=np.float64)
    request = {"inputs": [
        {"name": "bars", "datatype": "FP64", "shape": list(bars.shape), "data": bars.reshape(-1).tolist()},
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": [HEADLINES[1]]}]}
    response = await ensemble_client.post(f"/v2/models/{ENSEMBLE}/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    parameters = body["parameters"]
    assert body["model_version"] == "1.0.0" and parameters["backend"] == "ensemble"
    assert parameters["price_model_version"] == "lstm-price:1.0.0"
    assert parameters["sentiment_model_version"] == "sentiment-transformer:1.0.0"
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    v1 = await ensemble_client.post(f"/v1/models/{ENSEMBLE}/predict",
                                    json={"inputs": {"bars": bars.tolist(), "text": [HEADLINES[1]]}})
    assert outputs["prediction"] == [row[0] for row in v1.json()["outputs"]["prediction"]]


async def test_a_missing_member_is_503_naming_it(ensemble_client):
    root = ensemble_client.app.state.service.settings.model_store
    ModelRegistry(root).archive("sentiment-transformer", "1.0.0", actor="test")  # no production version left
    response = await ensemble_client.post(f"/v1/models/{ENSEMBLE}/predict",
                                          json={"inputs": {"bars": _windows(1), "text": HEADLINES[:1]}})
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "ensemble_member_unavailable"
    assert "sentiment-transformer" in error["message"] and error["details"]["member"] == "sentiment"
    assert error["details"]["model"] == "sentiment-transformer"


async def test_stage_and_version_select_the_ensemble_version(ensemble_client):
    root = ensemble_client.app.state.service.settings.model_store
    register_ensemble(root, "2.0.0", stage="staging")
    body = {"inputs": {"bars": _windows(1), "text": HEADLINES[:1]}}
    staging = await ensemble_client.post(f"/v1/models/{ENSEMBLE}/predict", json={**body, "stage": "staging"})
    pinned = await ensemble_client.post(f"/v1/models/{ENSEMBLE}/predict", json={**body, "version": "1.0.0"})
    assert staging.status_code == pinned.status_code == 200, (staging.text, pinned.text)
    assert (staging.json()["version"], staging.json()["stage"]) == ("2.0.0", "staging")
    assert pinned.json()["version"] == "1.0.0"


@pytest.mark.parametrize("inputs, says", [
    ({"bars": [[[1.0] * 5] * 60]}, "needs input for its sentiment member"),
    ({"text": ["hello"]}, "needs input for its price member"),
    ({"bars": [[[1.0] * 5] * 60], "text": ["x"], "extra": [1]}, "'extra' is not an input of any member"),
    ({"bars": [[[1.0] * 5] * 3], "text": ["x"]}, "at least 60 bars"),
])
async def test_bad_inputs_are_422_saying_what_to_send(ensemble_client, inputs, says):
    response = await ensemble_client.post(f"/v1/models/{ENSEMBLE}/predict", json={"inputs": inputs})
    assert response.status_code == 422, response.text
    assert says in json.dumps(response.json()["error"])
