"""A request's priority at every door: the /v1 ``priority`` field, the OIP ``priority`` parameter (REST and
gRPC, Triton's meaning: 1 is the highest, 0 the default), the API key's default priority and the server's;
a bad one is 422 / INVALID_ARGUMENT before the model runs. What reaches the batcher is read from the context
the adapter is called with."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2, service_pb2_grpc

from prediction_service.adapters.base import QueueStats
from prediction_service.grpc.server import GrpcServer
from prediction_service.monitoring.metrics import ServiceMetrics
from prediction_service.registry import ModelKey
from prediction_service.security.auth import ApiKeyStore
from prediction_service.settings import AuditSettings, BatchingSettings, SecuritySettings, Settings
from tests.support.asgi import served_app

ROW = [1.0, 2.0, 3.0, 4.0]
PREDICT = "/v1/models/tiny-regressor/predict"
INFER = "/v2/models/tiny-regressor/infer"
KEYS = "live-secret:read,research-secret:read:3,backfill-secret:outcome:2"


class PriorityProbe:
    """The adapter's predict, recording the priority of every request that reached it."""

    def __init__(self, predict):
        self._predict = predict
        self.seen: list[int] = []

    async def __call__(self, key, inputs, *, deadline=None, context=None):
        self.seen.append(context.priority)
        return await self._predict(key, inputs, deadline=deadline, context=context)


def settings(tiny_store, **batching) -> Settings:
    return Settings(model_store=tiny_store, security=SecuritySettings(api_keys=KEYS),
                    batching=BatchingSettings(**batching), audit=AuditSettings(enabled=False))


def oip_body(parameters: dict | None = None) -> dict:
    body: dict = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    if parameters is not None:
        body["parameters"] = parameters
    return body


@pytest.fixture
async def served(tiny_store, monkeypatch):
    async with served_app(settings(tiny_store), metrics_registry=CollectorRegistry()) as (app, http):
        probe = PriorityProbe(app.state.service.dataplane.adapter.predict)
        monkeypatch.setattr(app.state.service.dataplane.adapter, "predict", probe)
        yield app, http, probe


async def test_v1_priority_field(served):
    _, http, probe = served
    for priority in (1, 3, 0):
        response = await http.post(PREDICT, json={"instance": ROW, "priority": priority})
        assert response.status_code == 200, response.text
    assert probe.seen == [1, 3, 1]  # 0: the default (BATCH_DEFAULT_PRIORITY, 1)


@pytest.mark.parametrize("priority", [4, 9, -1, "1", 1.5, True, None])
async def test_v1_bad_priority_is_422(served, priority):
    _, http, probe = served
    body = {"instance": ROW, "priority": priority}
    if priority is None:
        body["priority"] = [1]
    response = await http.post(PREDICT, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert probe.seen == []  # refused before the model ran


async def test_oip_rest_priority_parameter(served):
    _, http, probe = served
    for parameters in ({"priority": 2}, {"priority": 0}, None, {"priority": 3, "stage": "production"}):
        response = await http.post(INFER, json=oip_body(parameters))
        assert response.status_code == 200, response.text
    assert probe.seen == [2, 1, 1, 3]


@pytest.mark.parametrize("priority", [4, 2**40, -1, "2", 2.0, True])
async def test_oip_rest_bad_priority_is_422(served, priority):
    _, http, probe = served
    response = await http.post(INFER, json=oip_body({"priority": priority}))
    assert response.status_code == 422, response.text
    assert "priority" in response.json()["error"]
    assert probe.seen == []


async def test_an_api_keys_priority_is_its_requests_default(served):
    _, http, probe = served

    async def predict(key: str | None, **fields) -> None:
        headers = {"X-API-Key": key} if key else {}
        response = await http.post(PREDICT, json={"instance": ROW, **fields}, headers=headers)
        assert response.status_code == 200, response.text

    await predict("research-secret")                  # the key's 3
    await predict("research-secret", priority=1)      # the request's own wins
    await predict("research-secret", priority=0)      # 0 asks for the default: the key's
    await predict("backfill-secret")                  # 2
    await predict("live-secret")                      # no priority on the key: the server's
    await predict(None)                               # anonymous: the server's
    response = await http.post(INFER, json=oip_body(), headers={"X-API-Key": "research-secret"})
    assert response.status_code == 200
    assert probe.seen == [3, 1, 3, 2, 1, 1, 3]


async def test_the_server_default_priority(tiny_store, monkeypatch):
    async with served_app(settings(tiny_store, default_priority=2, priority_levels=4),
                          metrics_registry=CollectorRegistry()) as (app, http):
        probe = PriorityProbe(app.state.service.dataplane.adapter.predict)
        monkeypatch.setattr(app.state.service.dataplane.adapter, "predict", probe)
        for body in ({"instance": ROW}, {"instance": ROW, "priority": 4}):
            assert (await http.post(PREDICT, json=body)).status_code == 200
        assert (await http.post(PREDICT, json={"instance": ROW}, headers={"X-API-Key": "research-secret"})
                ).status_code == 200
        assert probe.seen == [2, 4, 3]


async def test_oip_grpc_priority_parameter(served):
    app, _, probe = served
    door = GrpcServer(app.state.service, "127.0.0.1", 0)
    await door.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{door.port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

            async def infer(value: dict | None) -> service_pb2.ModelInferResponse:
                request = service_pb2.ModelInferRequest(model_name="tiny-regressor")
                tensor = request.inputs.add(name="x", datatype="FP32")
                tensor.shape.extend([1, 4])
                request.raw_input_contents.append(np.array([ROW], np.float32).tobytes())
                for field, number in (value or {}).items():
                    setattr(request.parameters["priority"], field, number)
                return await stub.ModelInfer(request, metadata=(("x-api-key", "research-secret"),))

            await infer({"uint64_param": 2})   # what tritonclient sends (infer(..., priority=2))
            await infer({"int64_param": 1})
            await infer({"uint64_param": 0})   # 0: the default, here the key's
            await infer(None)
            assert probe.seen == [2, 1, 3, 3]
            for bad in ({"uint64_param": 4}, {"int64_param": -1}, {"string_param": "high"},
                        {"bool_param": True}, {"double_param": 1.0}):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await infer(bad)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
                assert "priority" in refused.value.details()
            assert probe.seen == [2, 1, 3, 3]
    finally:
        await door.stop(0)


def test_api_keys_parse_a_priority_compatibly():
    store = ApiKeyStore("a,r:read,o:outcome:2,l:read:1", priority_levels=3)
    assert [(key.scope.name, key.priority) for key in store.keys] == [
        ("ADMIN", None), ("READ", None), ("OUTCOME", 2), ("READ", 1)]
    for spec in ("k:read:0", "k:read:4", "k:read:x", "k:read:-1", "k:read:1.5"):
        with pytest.raises(ValueError, match="priority") as refused:
            ApiKeyStore(spec, priority_levels=3)
        assert "k:read" not in str(refused.value)  # the key never appears in the message
    with pytest.raises(ValueError, match="scope"):
        ApiKeyStore("k:3")  # the priority is the third field; the second is the scope


async def test_queue_metrics_are_labelled_by_priority():
    metrics = ServiceMetrics(CollectorRegistry())

    class Adapter:
        stats = QueueStats(4, 10, 20, 2.0, 5, 0, depth_by_priority=(1, 0, 3), shed_by_priority=(0, 2, 3))

        def loaded(self):
            return []

        def queue_stats(self):
            return {ModelKey("m", "1.0.0"): self.stats}

    adapter = Adapter()
    await metrics.refresh(adapter)
    registry = metrics.registry
    depth = [registry.get_sample_value("prediction_queue_depth", {"model": "m:1.0.0", "priority": p})
             for p in ("1", "2", "3")]
    shed = [registry.get_sample_value("prediction_batcher_shed_total", {"model": "m:1.0.0", "priority": p})
            for p in ("1", "2", "3")]
    assert depth == [1, 0, 3] and shed == [0, 2, 3]
    adapter.stats = QueueStats(0, 10, 20, 2.0, 7, 0, depth_by_priority=(0, 0, 0), shed_by_priority=(0, 2, 5))
    await metrics.refresh(adapter)
    assert registry.get_sample_value("prediction_batcher_shed_total", {"model": "m:1.0.0", "priority": "3"}) == 5
    assert registry.get_sample_value("prediction_queue_depth", {"model": "m:1.0.0", "priority": "3"}) == 0
