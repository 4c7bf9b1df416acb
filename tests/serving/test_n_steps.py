"""``n_steps``: a forecaster answers with the first n_steps of the horizon its signature declares, the same through
/v1, the OIP REST and gRPC doors and the price aliases; more than the horizon (or n_steps to a model without
one) is 422 naming the horizon. Served by a real packaged patchtst-price (ONNX Runtime) from a tmp registry."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from torch import nn
from tritonclient.grpc import service_pb2, service_pb2_grpc

from prediction_service.modelzoo import patchtst
from prediction_service.modelzoo.datasets import bar_windows
from prediction_service.modelzoo.synthetic import synthetic_ohlcv
from prediction_service.packaging.pipeline import PackagingOptions, PackagingRequest, package_model
from prediction_service.preprocessing.bars import preprocess_bars
from prediction_service.registry.store import ModelRegistry
from prediction_service.settings import Settings
from prediction_service.signature import ModelSignature, TensorSpec
from tests.support.asgi import served_app

FAST = PackagingOptions(benchmark_runs=0, validation_rows=16, torchscript=False, state_dict=False)
FORECASTER, PLAIN = patchtst.NAME, "plain-regressor"
HORIZON = patchtst.HORIZON


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("n-steps")
    trained = patchtst.train(patchtst.PatchTSTPlan(steps=3, train_rows=64))
    package_model(trained.model, PackagingRequest(name=FORECASTER, version="1.0.0", signature=patchtst.signature()),
                  root, FAST, validation_inputs=patchtst.validation_rows(16, 5))
    torch.manual_seed(0)
    plain = ModelSignature(inputs=[TensorSpec(name="x", dtype="float32", shape=(-1, 3))],
                           outputs=[TensorSpec(name="y", dtype="float32", shape=(-1, 2))])
    package_model(nn.Linear(3, 2), PackagingRequest(name=PLAIN, version="1.0.0", signature=plain), root, FAST)
    for name in (FORECASTER, PLAIN):
        ModelRegistry(root).promote(name, "1.0.0", "production", actor="test")
    return root


def _bars(rows: int = 3) -> np.ndarray:
    return bar_windows(synthetic_ohlcv(150, seed=8), rows, patchtst.CONTEXT)


def _windows(rows: int = 3) -> np.ndarray:
    return preprocess_bars(patchtst.bars_step(), _bars(rows))


async def _v1(http, body: dict, name: str = FORECASTER):
    return await http.post(f"/v1/models/{name}/predict", json=body)


async def test_v1_keeps_the_first_n_steps_of_the_horizon(store):
    bars = _bars().tolist()
    async with served_app(Settings(model_store=store)) as (_, http):
        full = await _v1(http, {"bars": bars})
        cut = await _v1(http, {"bars": bars, "n_steps": 3})
        one = await _v1(http, {"bars": bars, "n_steps": 1})
        whole = await _v1(http, {"bars": bars, "n_steps": HORIZON})
    for response in (full, cut, one, whole):
        assert response.status_code == 200, response.text
    assert np.asarray(full.json()["outputs"]["forecast"]).shape == (3, HORIZON)
    everything = np.asarray(full.json()["predictions"])
    assert np.asarray(cut.json()["outputs"]["forecast"]).shape == (3, 3)
    np.testing.assert_array_equal(np.asarray(cut.json()["predictions"]), everything[:, :3])
    assert one.json()["predictions"] == [[row[0]] for row in everything.tolist()]  # still a list of steps
    assert whole.json()["predictions"] == full.json()["predictions"]


async def test_more_steps_than_the_horizon_is_422_naming_it(store):
    async with served_app(Settings(model_store=store)) as (_, http):
        over = await _v1(http, {"bars": _bars().tolist(), "n_steps": HORIZON + 1})
        no_horizon = await _v1(http, {"inputs": {"x": [[1.0, 2.0, 3.0]]}, "n_steps": 1}, name=PLAIN)
        plain = await _v1(http, {"inputs": {"x": [[1.0, 2.0, 3.0]]}}, name=PLAIN)
        bad = [await _v1(http, {"bars": _bars().tolist(), "n_steps": value}) for value in (0, -2, "3", 2.5, True)]
    assert over.status_code == 422
    error = over.json()["error"]
    assert f"horizon of model {FORECASTER}" in error["message"] and str(HORIZON) in error["message"]
    assert error["details"] == {"n_steps": HORIZON + 1, "horizon": HORIZON}
    assert no_horizon.status_code == 422 and "no horizon" in no_horizon.json()["error"]["message"]
    assert plain.status_code == 200
    assert [response.status_code for response in bad] == [422] * 5


async def test_oip_rest_parameter(store):
    windows = _windows()
    tensor = {"name": "ohlcv", "datatype": "FP32", "shape": list(windows.shape), "data": windows.ravel().tolist()}
    async with served_app(Settings(model_store=store)) as (_, http):
        url = f"/v2/models/{FORECASTER}/infer"
        full = await http.post(url, json={"inputs": [tensor]})
        cut = await http.post(url, json={"inputs": [tensor], "parameters": {"n_steps": 2}})
        over = await http.post(url, json={"inputs": [tensor], "parameters": {"n_steps": HORIZON + 5}})
        bad = await http.post(url, json={"inputs": [tensor], "parameters": {"n_steps": "two"}})
    assert full.status_code == 200 and cut.status_code == 200, cut.text
    (whole,), (first,) = full.json()["outputs"], cut.json()["outputs"]
    assert whole["shape"] == [3, HORIZON] and first["shape"] == [3, 2]
    np.testing.assert_array_equal(np.reshape(first["data"], (3, 2)), np.reshape(whole["data"], (3, HORIZON))[:, :2])
    assert over.status_code == 422 and f"forecasts {HORIZON} steps ahead" in over.text
    assert bad.status_code == 422 and "n_steps" in bad.text


async def test_oip_grpc_parameter(store):
    from prediction_service.grpc.server import GrpcServer

    windows = _windows()

    def message(**parameters: int) -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest(model_name=FORECASTER, raw_input_contents=[windows.tobytes()])
        request.inputs.add(name="ohlcv", datatype="FP32", shape=list(windows.shape))
        for key, value in parameters.items():
            request.parameters[key].int64_param = value
        return request

    async with served_app(Settings(model_store=store)) as (app, _):
        door = GrpcServer(app.state.service, "127.0.0.1", 0)
        await door.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{door.port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                full = await stub.ModelInfer(message())
                cut = await stub.ModelInfer(message(n_steps=5))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.ModelInfer(message(n_steps=HORIZON + 1))
        finally:
            await door.stop(1.0)
    whole = np.frombuffer(full.raw_output_contents[0], dtype=np.float32).reshape(3, HORIZON)
    assert list(cut.outputs[0].shape) == [3, 5]
    np.testing.assert_array_equal(np.frombuffer(cut.raw_output_contents[0], dtype=np.float32).reshape(3, 5),
                                  whole[:, :5])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"forecasts {HORIZON} steps ahead" in refused.value.details()


async def test_price_aliases_forecast_n_steps_in_price_units(store):
    bars = _bars(2)
    settings = Settings(model_store=store, seed_api={"price_model": FORECASTER})
    async with served_app(settings) as (_, http):
        full = await http.post("/v1/models/" + FORECASTER + "/predict", json={"bars": bars.tolist()})
        price = await http.post("/api/v1/predict/price", json={"ohlcv_data": bars[0].tolist(), "n_steps": 4})
        batch = await http.post("/api/v1/predict/batch", json={
            "items": [{"ohlcv_data": window.tolist()} for window in bars], "n_steps": 2})
        over = await http.post("/api/v1/predict/price", json={"ohlcv_data": bars[0].tolist(), "n_steps": 99})
    assert price.status_code == 200 and batch.status_code == 200, (price.text, batch.text)
    forecasts = np.asarray(full.json()["predictions"])
    answer = price.json()
    np.testing.assert_allclose(answer["forecast_steps"], forecasts[0, :4], rtol=1e-6)
    np.testing.assert_allclose(answer["predicted_prices"], forecasts[0, :4] * bars[0, -1, 3], rtol=1e-6)
    assert answer["predicted_price"] == pytest.approx(forecasts[0, 0] * bars[0, -1, 3], rel=1e-6)
    rows = batch.json()["predictions"]
    assert [len(row["forecast_steps"]) for row in rows] == [2, 2]
    np.testing.assert_allclose([row["forecast_steps"] for row in rows], forecasts[:, :2], rtol=1e-6)
    assert over.status_code == 422 and "horizon" in over.text
