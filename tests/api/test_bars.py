"""Raw OHLCV bars in, through the real app over the demo registry: the server runs the step each version
declares (metadata.json), so bars give the same answer as the precomputed tensors, over /v1 and OIP REST."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prediction_service.preprocessing.bars import preprocess_bars
from prediction_service.modelzoo.datasets import bar_windows, direction_bars_step, price_bars_step
from prediction_service.modelzoo.synthetic import synthetic_ohlcv
from prediction_service.registry import RegistryReader
from prediction_service.signature import OHLCV_COLUMNS


def test_the_demo_registry_declares_the_bars_steps(demo_store):
    reader = RegistryReader(demo_store)
    assert reader.resolve("lstm-price").signature.bars == price_bars_step()
    assert reader.resolve("cnn-lstm-direction").signature.bars == direction_bars_step()
    assert reader.resolve("sentiment-transformer").signature.bars is None
    written = json.loads((reader.resolve("cnn-lstm-direction").path / "metadata.json").read_text())
    assert written["signature"]["bars"]["kind"] == "ohlcv_features"


@pytest.mark.parametrize("model, step, tensor", [
    ("cnn-lstm-direction", direction_bars_step(), "features"),
    ("lstm-price", price_bars_step(), "ohlcv"),
])
async def test_bars_give_the_answer_of_the_precomputed_tensors(demo_client, model, step, tensor):
    bars = bar_windows(synthetic_ohlcv(step.min_bars + 3, seed=11), 3, step.min_bars)
    precomputed = preprocess_bars(step, bars)  # what a client computing the features itself would send
    url = f"/v1/models/{model}/predict"
    from_tensors = await demo_client.post(url, json={"inputs": {tensor: precomputed.tolist()}})
    from_bars = await demo_client.post(url, json={"bars": bars.tolist()})
    assert from_tensors.status_code == from_bars.status_code == 200, from_bars.text
    expected = from_tensors.json()["outputs"]
    assert from_bars.json()["outputs"] == expected
    assert from_bars.json()["predictions"] == from_tensors.json()["predictions"]
    one = await demo_client.post(url, json={"bars": bars[1].tolist()})  # one window, no batch dim
    assert one.status_code == 200, one.text
    name = next(iter(expected))
    assert one.json()["outputs"][name] == [expected[name][1]]


@pytest.mark.parametrize("bars, says", [
    ([[100.0, 101.0, 99.0, 100.5, 1000.0]] * 30, "at least 110 bars"),
    ([[100.0, 101.0, 99.0, 100.5]] * 120, "5 columns"),
    ([[100.0, 101.0, 99.0, 100.5, 1000.0]] * 119 + [[100.0, 101.0, 99.0, 100.5, "NaN"]], "numbers"),
    ([[100.0, 101.0, 99.0, -1.0, 1000.0]] * 120, "positive prices"),
    ("AAPL", "bars must be an array"),
])
async def test_bad_bars_are_422_with_what_was_expected(demo_client, bars, says):
    response = await demo_client.post("/v1/models/cnn-lstm-direction/predict", json={"bars": bars})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and says in json.dumps(error), error


async def test_nan_bars_over_oip_binary_are_422(demo_client):
    """JSON has no NaN; OIP's binary tensor data does."""
    bars = np.full((1, 110, 5), 100.0)
    bars[0, 50, 2] = np.nan
    payload = bars.tobytes()
    header = json.dumps({"inputs": [{"name": "bars", "datatype": "FP64", "shape": [1, 110, 5],
                                     "parameters": {"binary_data_size": len(payload)}}]}).encode()
    response = await demo_client.post("/v2/models/cnn-lstm-direction/infer", content=header + payload,
                                      headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 422, response.text
    assert "NaN or Inf" in response.json()["error"]


async def test_bars_need_a_model_with_a_bars_step_and_come_alone(demo_client):
    no_step = await demo_client.post("/v1/models/sentiment-transformer/predict",
                                     json={"bars": [[1.0, 1.0, 1.0, 1.0, 1.0]] * 60})
    assert no_step.status_code == 422 and "does not take bars" in no_step.text
    both = await demo_client.post("/v1/models/lstm-price/predict",
                                  json={"bars": [[1.0] * 5] * 60, "inputs": {"ohlcv": [[[1.0] * 5] * 60]}})
    assert both.status_code == 422 and "exactly one of" in both.text


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
async def test_oip_rest_takes_a_bars_input(demo_client, datatype):
    step = direction_bars_step()
    bars = bar_windows(synthetic_ohlcv(step.min_bars + 2, seed=4), 2, step.min_bars)
    if datatype == "FP32":
        bars = bars.astype(np.float32).astype(np.float64)  # the values an FP32 client sends, exactly
    features = preprocess_bars(step, bars)
    url = "/v2/models/cnn-lstm-direction/infer"
    raw = await demo_client.post(url, json={"inputs": [
        {"name": "bars", "datatype": datatype, "shape": list(bars.shape), "data": bars.reshape(-1).tolist()}]})
    tensors = await demo_client.post(url, json={"inputs": [
        {"name": "features", "datatype": "FP32", "shape": list(features.shape),
         "data": features.reshape(-1).tolist()}]})
    assert raw.status_code == tensors.status_code == 200, raw.text
    assert raw.json()["outputs"] == tensors.json()["outputs"]


async def test_metadata_describes_the_bars_input(demo_client):
    meta = (await demo_client.get("/v2/models/cnn-lstm-direction")).json()
    assert {"name": "bars", "datatype": "FP64", "shape": [-1, -1, 5]} in meta["inputs"]
    assert {"name": "features", "datatype": "FP32", "shape": [-1, 60, 110]} in meta["inputs"]
    sentiment = (await demo_client.get("/v2/models/sentiment-transformer")).json()
    assert all(entry["name"] != "bars" for entry in sentiment["inputs"])


def _columns(window: np.ndarray) -> dict[str, list[float]]:
    return {name: window[:, index].tolist() for index, name in enumerate(OHLCV_COLUMNS)}


@pytest.mark.parametrize("model, step", [("cnn-lstm-direction", direction_bars_step()),
                                         ("lstm-price", price_bars_step())])
async def test_named_columns_give_the_answer_of_the_row_form(demo_client, model, step):
    windows = bar_windows(synthetic_ohlcv(step.min_bars + 2, seed=21), 3, step.min_bars)
    url = f"/v1/models/{model}/predict"
    rows = await demo_client.post(url, json={"bars": windows.tolist()})
    one = await demo_client.post(url, json={"bars": _columns(windows[0])})
    batch = await demo_client.post(url, json={"bars": [_columns(w) for w in windows]})
    stacked = await demo_client.post(url, json={"bars": {name: windows[:, :, i].tolist()  # columns of windows
                                                         for i, name in enumerate(OHLCV_COLUMNS)}})
    assert rows.status_code == one.status_code == batch.status_code == stacked.status_code == 200, one.text
    expected = rows.json()["outputs"]
    assert batch.json()["outputs"] == stacked.json()["outputs"] == expected
    name = next(iter(expected))
    assert one.json()["outputs"][name] == [expected[name][0]]


def _named(**change) -> dict:
    columns = _columns(np.tile([100.0, 101.0, 99.0, 100.5, 1000.0], (120, 1)))
    columns.update(change)
    return {k: v for k, v in columns.items() if v is not None}


@pytest.mark.parametrize("bars, says", [
    (_named(volume=None), '"missing": ["volume"]'),
    (_named(vwap=[1.0] * 120), '"unexpected": ["vwap"]'),
    (_named(close=[100.5] * 119), "differ in length"),
    (_named(high=["101"] * 120), "column 'high' must be an array of numbers"),
    (_named(close=[100.5] * 30, open=[100.0] * 30, high=[101.0] * 30, low=[99.0] * 30, volume=[1.0] * 30),
     "at least 110 bars"),
    (_named(low=[-1.0] * 120), "positive prices"),
    ([_named(), [[100.0, 101.0, 99.0, 100.5, 1000.0]] * 120], "named columns are an object"),
    ({}, '"missing": ["open", "high", "low", "close", "volume"]'),
])
async def test_bad_named_columns_are_422_with_what_was_expected(demo_client, bars, says):
    response = await demo_client.post("/v1/models/cnn-lstm-direction/predict", json={"bars": bars})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and says in json.dumps(error), error
    if isinstance(bars, dict):
        assert "open" in json.dumps(error["details"]), error  # names the columns it expects
