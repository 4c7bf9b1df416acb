"""The prediction API through a real ASGI client over real ONNX / TorchScript models."""

from __future__ import annotations

import asyncio

import pytest

from prediction_service.registry.fsutil import sha256_file
from tests.support.asgi import served_app

ROW = [1.0, 2.0, 3.0, 4.0]  # tiny-regressor 1.0.0: y = x . [1,2,3,4] + 1 = 31


async def test_predict_one_instance_names_version_stage_and_provenance(client, tiny_store):
    response = await client.post("/v1/models/tiny-regressor/predict", json={"instance": ROW})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-regressor"
    assert body["version"] == "1.0.0"
    assert body["stage"] == "production"
    assert body["predictions"] == [pytest.approx(31.0)]
    assert body["outputs"]["y"] == [[pytest.approx(31.0)]]
    assert body["request_id"] and response.headers["x-request-id"] == body["request_id"]
    assert body["inference_time_ms"] >= 0
    provenance = body["provenance"]
    assert provenance["backend"] == "simple" and provenance["precision"] == "fp32"
    assert provenance["sha256"] == sha256_file(tiny_store / "tiny-regressor" / "v1.0.0" / provenance["artifact"])


async def test_predict_batch_stage_and_explicit_version(client):
    batch = {"inputs": {"x": [ROW, [0.0, 0.0, 0.0, 0.0]]}}
    prod = (await client.post("/v1/models/tiny-regressor/predict", json=batch)).json()
    assert prod["predictions"] == [pytest.approx(31.0), pytest.approx(1.0)]
    staging = (await client.post("/v1/models/tiny-regressor/predict", json={**batch, "stage": "staging"})).json()
    assert staging["version"] == "2.0.0" and staging["stage"] == "staging"
    assert staging["predictions"] == [pytest.approx(62.0), pytest.approx(2.0)]
    explicit = (await client.post("/v1/models/tiny-regressor/predict", json={**batch, "version": "2.0.0"})).json()
    assert explicit["version"] == "2.0.0" and explicit["stage"] == "staging"


async def test_instances_list_of_rows_and_dicts(client):
    bare = await client.post("/v1/models/tiny-regressor/predict", json={"instances": [ROW, ROW]})
    keyed = await client.post("/v1/models/tiny-regressor/predict", json={"instances": [{"x": ROW}]})
    assert bare.json()["predictions"] == [pytest.approx(31.0)] * 2
    assert keyed.json()["predictions"] == [pytest.approx(31.0)]


async def test_classifier_returns_labels_and_scores(client):
    body = (await client.post("/v1/models/tiny-classifier/predict", json={"instance": ROW})).json()
    prediction = body["predictions"][0]
    assert prediction["label"] in ("down", "flat", "up")
    assert sum(prediction["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction["label"] == max(prediction["scores"], key=prediction["scores"].get)


async def test_concurrent_requests_each_get_their_own_answer(client):
    rows = [[float(i), 0.0, 0.0, 0.0] for i in range(40)]
    responses = await asyncio.gather(*(client.post("/v1/models/tiny-regressor/predict", json={"instance": r})
                                       for r in rows))
    got = [r.json()["predictions"][0] for r in responses]
    assert got == [pytest.approx(1.0 + i) for i in range(40)]
    adapter = client.app.state.service.adapter
    key = next(m.key for m in adapter.loaded() if m.key.name == "tiny-regressor" and m.key.version == "1.0.0")
    stats = await adapter.describe(key)
    assert stats["requests"] >= 40 and stats["batches"] < stats["requests"]  # merged into fewer runs


async def test_list_and_describe_models(client):
    models = (await client.get("/v1/models")).json()
    names = {m["name"]: m for m in models}
    assert set(names) == {"tiny-regressor", "tiny-classifier"}
    assert names["tiny-regressor"]["versions"] == ["1.0.0", "2.0.0"]
    assert names["tiny-regressor"]["stages"] == {"production": "1.0.0", "staging": "2.0.0"}
    detail = (await client.get("/v1/models/tiny-regressor")).json()
    assert detail["signature"]["inputs"][0] == {"name": "x", "dtype": "float32", "shape": [-1, 4]}
    assert detail["serving"]["production"] == "1.0.0"
    assert "1.0.0" in detail["backend"]


async def test_health_and_readiness(client):
    assert (await client.get("/health/live")).json() == {"status": "alive"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"


async def test_not_ready_when_a_production_model_cannot_load(settings, tiny_store):
    (tiny_store / "tiny-classifier" / "v1.0.0" / "model.onnx").write_bytes(b"corrupted")
    async with served_app(settings) as (_, http):
        ready = await http.get("/health/ready")
        assert ready.status_code == 503
        assert any("tiny-classifier" in reason for reason in ready.json()["reasons"])
        failed = await http.post("/v1/models/tiny-classifier/predict", json={"instance": ROW})
        assert failed.status_code == 503
        assert failed.json()["error"]["code"] == "model_load_failed"
        # the other model serves regardless
        ok = await http.post("/v1/models/tiny-regressor/predict", json={"instance": ROW})
        assert ok.status_code == 200


async def test_openapi_documents_every_route(client):
    spec = (await client.get("/openapi.json")).json()
    assert {"/v1/models/{name}/predict", "/v1/models", "/v1/models/{name}", "/health/live",
            "/health/ready"} <= set(spec["paths"])
    predict = spec["paths"]["/v1/models/{name}/predict"]["post"]
    assert "requestBody" in predict and "200" in predict["responses"]
