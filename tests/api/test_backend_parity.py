"""Same API, same responses, whichever backend serves: every zoo model through the REST API on the
simple, torchscript, TorchServe and Triton adapters (real servers), compared with the simple adapter.
And the failure behaviour through the service: backend down -> 503 + not ready, back -> recovers."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import numpy as np
import pytest

from prediction_service.modelzoo.datasets import bar_windows, dataset_for
from prediction_service.modelzoo.synthetic import synthetic_ohlcv
from prediction_service.settings import AdapterType, Settings, TorchServeSettings, TritonSettings
from tests.support.asgi import served_app

REQUESTS = {
    "lstm-price": lambda: {"inputs": {"ohlcv": dataset_for("lstm_price", 3, seed=21).inputs["ohlcv"].tolist()}},
    "cnn-lstm-direction": lambda: {"inputs": {
        "features": dataset_for("cnn_lstm_direction", 2, seed=22).inputs["features"].tolist()}},
    "sentiment-transformer": lambda: {"text": ["Shares rally after strong earnings beat", "Guidance cut, stock falls"]},
    # the tree model: one ONNX graph with ai.onnx.ml operators, served from raw bars by its declared step
    "gbdt-direction": lambda: {"bars": bar_windows(synthetic_ohlcv(60, seed=23), 2, 51).tolist()},
    # the transformers PatchTST forecaster: its first 5 of 8 steps, cut by the server after any backend
    "patchtst-price": lambda: {"bars": bar_windows(synthetic_ohlcv(80, seed=24), 2, 64).tolist(), "n_steps": 5},
}
TORCH_ONLY = ("torchscript",)
"""Adapters that run TorchScript / state_dict artifacts only: a tree model has neither (its one artifact is
ONNX), so they cannot serve gbdt-direction and it is left out of their store."""


def backend_settings(kind: str, store, request) -> Settings:
    if kind == "torchserve":
        server = request.getfixturevalue("shared_torchserve")
        return Settings(model_store=store, serving_adapter_type=AdapterType.TORCHSERVE, torchserve=TorchServeSettings(
            inference_url=server.inference_url, management_url=server.management_url, model_store=server.model_store))
    if kind == "triton":
        server = request.getfixturevalue("shared_triton")
        return Settings(model_store=store, serving_adapter_type=AdapterType.TRITON, triton=TritonSettings(
            server_url=server.http_url, server_grpc_url=server.grpc_url, model_repository=server.model_repository))
    return Settings(model_store=store, serving_adapter_type=AdapterType(kind))


@pytest.fixture(scope="module")
def reference_responses(demo_store):
    async def collect():
        async with served_app(Settings(model_store=demo_store)) as (_, http):
            return {name: (await http.post(f"/v1/models/{name}/predict", json=make())).json()
                    for name, make in REQUESTS.items()}
    return asyncio.run(collect())


@pytest.mark.parametrize("kind", ["torchscript", "torchserve", "triton"])
async def test_every_zoo_model_answers_the_same_on_every_backend(kind, demo_store, tmp_path, request,
                                                                 reference_responses):
    store = tmp_path / "store"
    shutil.copytree(demo_store, store, symlinks=True)
    names = list(REQUESTS)
    if kind in TORCH_ONLY:
        shutil.rmtree(store / "gbdt-direction")
        names.remove("gbdt-direction")
    async with served_app(backend_settings(kind, store, request)) as (_, http):
        ready = await http.get("/health/ready")
        assert ready.status_code == 200, ready.text
        for name in names:
            make = REQUESTS[name]
            response = await http.post(f"/v1/models/{name}/predict", json=make())
            assert response.status_code == 200, (kind, name, response.text)
            body, expected = response.json(), reference_responses[name]
            assert body.keys() == expected.keys()
            assert (body["model"], body["version"], body["stage"]) == (name, "1.0.0", "production")
            assert body["provenance"]["backend"] == kind
            assert body["provenance"]["sha256"] in {a["sha256"] for a in (await http.get(f"/v1/models/{name}")).json()
                                                    ["versions_detail"][0]["artifacts"]}
            for output, values in expected["outputs"].items():
                np.testing.assert_allclose(np.array(body["outputs"][output]), np.array(values), rtol=1e-4, atol=1e-5,
                                           err_msg=f"{kind} {name} {output}")
            if isinstance(expected["predictions"][0], dict):
                assert [p["label"] for p in body["predictions"]] == [p["label"] for p in expected["predictions"]]


@pytest.mark.triton
async def test_triton_down_gives_503_and_not_ready_then_recovers(tiny_store, tmp_path):
    from tests.support.triton_fixtures import start_local_triton

    server = start_local_triton(tmp_path / "triton-repo")
    settings = Settings(model_store=tiny_store, serving_adapter_type=AdapterType.TRITON, triton=TritonSettings(
        server_url=server.http_url, server_grpc_url=server.grpc_url, model_repository=server.model_repository,
        timeout_seconds=2.0))
    predict = "/v1/models/tiny-regressor/predict"
    try:
        async with served_app(settings) as (_, http):
            assert (await http.post(predict, json={"instance": [1, 2, 3, 4]})).json()["predictions"] == [
                pytest.approx(31.0)]
            server.kill()
            down = await http.post(predict, json={"instance": [1, 2, 3, 4]})
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "backend_unavailable"
            assert "triton" in down.json()["error"]["message"].lower()
            ready = await http.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "not_ready"

            from prediction_service.commands.servers.triton import LocalTriton
            server = LocalTriton(server.model_repository, http_port=server.http_port, grpc_port=server.grpc_port,
                                 metrics_port=server.metrics_port)
            await asyncio.to_thread(server.start)
            for _ in range(50):  # the adapter reloads its models into the fresh server
                back = await http.post(predict, json={"instance": [1, 2, 3, 4]})
                if back.status_code == 200:
                    break
                await asyncio.sleep(0.2)
            assert back.status_code == 200 and back.json()["predictions"] == [pytest.approx(31.0)]
            await _eventually_ready(http)  # health reloads what Triton lost (the classifier) in the background
    finally:
        server.stop()


async def _eventually_ready(http: httpx.AsyncClient, attempts: int = 100) -> None:
    for _ in range(attempts):
        ready = await http.get("/health/ready")
        if ready.status_code == 200:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not ready again: {ready.text}")


@pytest.mark.torchserve
async def test_torchserve_down_gives_503_and_not_ready_then_recovers(tiny_store, tmp_path):
    from prediction_service.commands.servers.torchserve import LocalTorchServe
    from tests.support.torchserve_fixtures import _require_torchserve

    _require_torchserve()
    server = LocalTorchServe(tmp_path / "ts-store", tmp_path / "ts-work", token_auth=False).start()
    settings = Settings(model_store=tiny_store, serving_adapter_type=AdapterType.TORCHSERVE,
                        torchserve=TorchServeSettings(inference_url=server.inference_url,
                                                      management_url=server.management_url,
                                                      model_store=server.model_store, timeout_seconds=2.0))
    predict = "/v1/models/tiny-regressor/predict"
    try:
        async with served_app(settings) as (_, http):
            assert (await http.post(predict, json={"instance": [1, 2, 3, 4]})).status_code == 200
            server.kill()
            down = await http.post(predict, json={"instance": [1, 2, 3, 4]})
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "backend_unavailable"
            assert (await http.get("/health/ready")).status_code == 503
            server = LocalTorchServe(server.model_store, tmp_path / "ts-work2", ports=server.ports, token_auth=False)
            await asyncio.to_thread(server.start)
            for _ in range(100):  # the first requests start the re-registration; it outlives their deadlines
                back = await http.post(predict, json={"instance": [1, 2, 3, 4]})
                if back.status_code == 200:
                    break
                await asyncio.sleep(0.2)
            assert back.status_code == 200 and back.json()["predictions"] == [pytest.approx(31.0)]
            await _eventually_ready(http)
    finally:
        server.stop()
