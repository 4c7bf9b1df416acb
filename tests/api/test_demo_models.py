"""The demo registry's zoo models served through the API: price, direction and sentiment."""

from __future__ import annotations

import numpy as np
import pytest

from prediction_service.modelzoo.datasets import dataset_for


async def test_all_demo_models_are_ready_and_in_production(demo_client):
    ready = await demo_client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    models = {m["name"]: m for m in (await demo_client.get("/v1/models")).json()}
    assert set(models) == {"lstm-price", "cnn-lstm-direction", "sentiment-transformer", "gbdt-direction", "patchtst-price",
                           "price-sentiment"}
    ensemble = models.pop("price-sentiment")
    assert all(m["stages"]["production"] == "1.0.0" and m["loaded_versions"] == ["1.0.0"] for m in models.values())
    assert ensemble["kind"] == "ensemble" and ensemble["stages"]["production"] == "1.0.0"


async def test_lstm_price_batch_matches_the_registered_state_dict(demo_client, demo_store):
    import torch

    from prediction_service.architectures import build_model
    from prediction_service.registry import RegistryReader

    windows = dataset_for("lstm_price", 4, seed=3).inputs["ohlcv"]
    body = (await demo_client.post("/v1/models/lstm-price/predict", json={"inputs": {"ohlcv": windows.tolist()}})).json()
    version = RegistryReader(demo_store).resolve("lstm-price")
    model = build_model(version.metadata.architecture, version.metadata.architecture_config)
    model.load_state_dict(torch.load(version.path / "state_dict.pt", weights_only=True))
    with torch.no_grad():
        expected = model(torch.from_numpy(windows)).numpy()
    np.testing.assert_allclose(np.array(body["outputs"]["price"]), expected, rtol=1e-4, atol=1e-5)
    assert len(body["predictions"]) == 4


async def test_cnn_lstm_direction_labels(demo_client):
    features = dataset_for("cnn_lstm_direction", 2, seed=5).inputs["features"]
    response = await demo_client.post("/v1/models/cnn-lstm-direction/predict",
                                      json={"instances": [{"features": f.tolist()} for f in features]})
    assert response.status_code == 200, response.text
    assert [p["label"] in ("down", "flat", "up") for p in response.json()["predictions"]] == [True, True]


async def test_sentiment_from_text(demo_client):
    response = await demo_client.post("/v1/models/sentiment-transformer/predict",
                                      json={"text": ["Shares rally after strong earnings beat",
                                                     "Company warns of losses and layoffs"]})
    assert response.status_code == 200, response.text
    labels = [p["label"] for p in response.json()["predictions"]]
    assert labels == ["positive", "negative"]


async def test_text_over_the_token_limit_is_truncated_and_served(demo_client):
    """The sentiment model declares truncation (it was trained on texts cut the same way): 80 words are served
    as their first 62 (+ [CLS] and [SEP])."""
    long = await demo_client.post("/v1/models/sentiment-transformer/predict", json={"text": "profit " * 80})
    head = await demo_client.post("/v1/models/sentiment-transformer/predict", json={"text": "profit " * 62})
    assert long.status_code == head.status_code == 200, long.text
    assert long.json()["predictions"] == head.json()["predictions"]


@pytest.mark.parametrize("payload", [{"text": []}, {"text": [""] * 300}, {"text": [1, 2]}])
async def test_bad_text_payloads(demo_client, payload):
    response = await demo_client.post("/v1/models/sentiment-transformer/predict", json=payload)
    assert response.status_code == 422 and "error" in response.json()


async def test_patchtst_price_forecasts_n_steps_from_raw_bars(demo_client):
    from prediction_service.modelzoo.datasets import bar_windows
    from prediction_service.modelzoo.synthetic import synthetic_ohlcv

    bars = bar_windows(synthetic_ohlcv(90, seed=11), 2, 64).tolist()
    full = await demo_client.post("/v1/models/patchtst-price/predict", json={"bars": bars})
    three = await demo_client.post("/v1/models/patchtst-price/predict", json={"bars": bars, "n_steps": 3})
    over = await demo_client.post("/v1/models/patchtst-price/predict", json={"bars": bars, "n_steps": 9})
    assert full.status_code == 200 and three.status_code == 200, (full.text, three.text)
    forecast = np.array(full.json()["predictions"])
    assert forecast.shape == (2, 8) and np.all(np.abs(forecast - 1.0) < 0.5)  # ratios to the last close
    np.testing.assert_array_equal(np.array(three.json()["predictions"]), forecast[:, :3])
    assert over.status_code == 422 and "forecasts 8 steps ahead" in over.json()["error"]["message"]
