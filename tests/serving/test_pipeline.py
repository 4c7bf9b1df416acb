"""The one request path: observers (metrics, audit, A/B arms) learn what the client got, encode failures
included; requested outputs are checked before the model runs; one deadline rule caps what a caller's
scope may ask for."""

from __future__ import annotations

import time

import numpy as np
import pytest

from prediction_service.security.auth import Scope
from prediction_service.errors import BadRequest, InvalidInput
from prediction_service.types import InferenceRequest, PredictionRecord, RequestContext, Selector
from prediction_service.v1.schemas import MAX_DEADLINE_MS
from prediction_service.serving.deadline import request_deadline
from prediction_service.settings import LimitSettings

ROW = [1.0, 2.0, 3.0, 4.0]


class Recorder:
    """A prediction observer that keeps what it is told."""

    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []

    def observe(self, record: PredictionRecord) -> None:
        self.records.append(record)


def _requests(service, model: str, status: str) -> float:
    return sum(sample.value for metric in service.metrics.registry.collect() for sample in metric.samples
               if sample.name == "prediction_requests_total" and sample.labels.get("model") == model
               and sample.labels.get("status") == status)


def _model_runs(service, model: str) -> float:
    return sum(sample.value for metric in service.metrics.registry.collect() for sample in metric.samples
               if sample.name == "prediction_batch_rows_count" and sample.labels.get("model") == model)


@pytest.fixture
def service(client):
    return client.app.state.service


async def _decode() -> InferenceRequest:
    return InferenceRequest(Selector(), {"x": np.asarray([ROW], dtype=np.float32)})


async def test_an_answer_the_door_cannot_encode_is_recorded_as_the_error_the_client_got(service):
    recorder = Recorder()
    service.dataplane.observers.append(recorder)

    def encode(result):
        raise BadRequest("output 'y' is not UTF-8 text")

    with pytest.raises(BadRequest):
        await service.pipeline.run("tiny-regressor", RequestContext(), _decode, encode)
    [record] = recorder.records
    assert (record.status, record.error_code, record.version) == (400, "bad_request", "1.0.0")
    assert record.outputs is not None  # the model ran; the client still got the 400
    assert _requests(service, "tiny-regressor", "400") == 1 and _requests(service, "tiny-regressor", "200") == 0


async def test_an_encoded_answer_is_recorded_once_as_200(service):
    recorder = Recorder()
    service.dataplane.observers.append(recorder)
    answer = await service.pipeline.run("tiny-regressor", RequestContext(), _decode,
                                        lambda result: result.outputs["y"].tolist())
    assert answer == [[31.0]]
    assert [record.status for record in recorder.records] == [200]


async def test_a_decode_error_is_recorded_like_any_failed_prediction(service):
    recorder = Recorder()
    service.dataplane.observers.append(recorder)

    async def decode() -> InferenceRequest:
        raise InvalidInput("bad body")

    with pytest.raises(InvalidInput):
        await service.pipeline.run("tiny-regressor", RequestContext(), decode, lambda result: result)
    assert [(record.status, record.shed) for record in recorder.records] == [(422, False)]


@pytest.mark.parametrize("door", ["oip-json", "grpc-style"])
async def test_an_unknown_requested_output_is_refused_before_the_model_runs(client, service, door):
    runs = _model_runs(service, "tiny-regressor")
    if door == "oip-json":
        response = await client.post("/v2/models/tiny-regressor/infer", json={
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}],
            "outputs": [{"name": "nope"}]})
        assert response.status_code == 422, response.text
        assert "unknown output" in response.json()["error"]
    else:
        async def decode() -> InferenceRequest:
            return InferenceRequest(Selector(), {"x": np.asarray([ROW], dtype=np.float32)}, outputs=("nope",))
        with pytest.raises(InvalidInput, match="unknown output"):
            await service.pipeline.run("tiny-regressor", RequestContext(), decode, lambda result: result)
    assert _model_runs(service, "tiny-regressor") == runs
    assert _requests(service, "tiny-regressor", "422") == 1


@pytest.mark.parametrize("scope, expected_s", [(None, 5.0), (Scope.READ, 5.0), (Scope.OUTCOME, 5.0),
                                                (Scope.ADMIN, 120.0)])
def test_the_deadline_is_capped_by_the_callers_scope(scope, expected_s):
    limits = LimitSettings(caller_deadline_ceiling_ms=5000)
    start = time.monotonic()
    assert request_deadline(limits, scope, 120_000, start=start) - start == pytest.approx(expected_s)


def test_the_deadline_rule_takes_the_default_and_the_oip_timeout():
    limits = LimitSettings(default_deadline_ms=1000, caller_deadline_ceiling_ms=5000)
    start = time.monotonic()
    assert request_deadline(limits, None, None, start=start) - start == pytest.approx(1.0)
    assert request_deadline(limits, Scope.ADMIN, MAX_DEADLINE_MS, 0.25, start=start) - start == pytest.approx(0.25)
    assert request_deadline(limits, Scope.ADMIN, MAX_DEADLINE_MS, start=start) - start == pytest.approx(600.0)


async def test_text_tokens_in_flight_are_bounded_per_worker(demo_store):
    from tests.support.asgi import served_app
    from prediction_service.settings import Settings

    limits = LimitSettings(max_tokens_in_flight=64)
    async with served_app(Settings(model_store=demo_store, limits=limits)) as (app, http):
        budget = app.state.service.dataplane.models.tokens_in_flight
        text = {"text": ["Shares rally after strong earnings beat"]}
        assert (await http.post("/v1/models/sentiment-transformer/predict", json=text)).status_code == 200
        assert budget.tokens == 0  # released once answered
        budget.acquire(60)  # another request's tokens, still being served
        try:
            refused = await http.post("/v1/models/sentiment-transformer/predict", json=text)
            assert refused.status_code == 503, refused.text
            assert "tokens in flight" in refused.json()["error"]["message"]
            rows = await http.post("/v1/models/lstm-price/predict", json={"bars": [[[1.0, 1.0, 1.0, 1.0, 1.0]] * 60]})
            assert rows.status_code == 200, rows.text  # models without text are not charged
        finally:
            budget.release(60)
        assert (await http.post("/v1/models/sentiment-transformer/predict", json=text)).status_code == 200
