"""API keys over gRPC come from the ``x-api-key`` call metadata, with the REST door's semantics: with
PREDICT_REQUIRES_KEY predictions and model metadata need any valid key, server metadata and health stay open; the
per-key rate limit answers RESOURCE_EXHAUSTED with a retry-after."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.grpc.conftest import serve_grpc

READER = {"x-api-key": "reader-secret"}
ROW = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)


def row():
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(ROW)
    return tensor


@pytest.fixture(scope="module")
def keyed_server(slow_store_template, tmp_path_factory):
    server = serve_grpc(slow_store_template, tmp_path_factory.mktemp("grpc-auth"), env={
        "API_KEYS": "admin-secret,reader-secret:read,burst-secret:read", "PREDICT_REQUIRES_KEY": "true",
        "RATE_LIMIT_PER_SECOND": "10"})
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture
def client(keyed_server):
    triton = keyed_server.client()
    yield triton
    triton.close()


def status_of(call) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status()


def test_infer_needs_a_valid_key(client):
    assert status_of(lambda: client.infer("tiny-regressor", [row()])) == "StatusCode.UNAUTHENTICATED"
    assert status_of(lambda: client.infer("tiny-regressor", [row()], headers={"x-api-key": "wrong"})) \
        == "StatusCode.UNAUTHENTICATED"
    result = client.infer("tiny-regressor", [row()], headers=READER)
    assert result.as_numpy("y").tolist() == [[31.0]]
    # the key's scope travels with the request: a read key may pick an explicit version (VERSION_SELECTION_SCOPE)
    result = client.infer("tiny-regressor", [row()], model_version="2.0.0", headers=READER)
    assert result.as_numpy("y").tolist() == [[62.0]]


def test_model_metadata_needs_a_key_and_health_stays_open(client, keyed_server):
    assert status_of(lambda: client.get_model_metadata("tiny-regressor")) == "StatusCode.UNAUTHENTICATED"
    assert status_of(lambda: client.get_model_config("tiny-regressor")) == "StatusCode.UNAUTHENTICATED"
    assert client.get_server_metadata().name == "prediction-service"
    assert client.get_model_metadata("tiny-regressor", headers=READER).name == "tiny-regressor"
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny-regressor")
    with grpc.insecure_channel(keyed_server.grpc_url) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_a_stream_without_a_key_is_refused(client):
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("tiny-regressor", [row()], request_id="no-key")
        result, error = answers.get(timeout=30)
    finally:
        client.stop_stream()
    assert result is None and error.status() == "StatusCode.UNAUTHENTICATED"

    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=READER)
    try:
        client.async_stream_infer("tiny-regressor", [row()], request_id="keyed")
        result, error = answers.get(timeout=30)
    finally:
        client.stop_stream()
    assert error is None and result.as_numpy("y").tolist() == [[31.0]]


def test_rate_limit_is_resource_exhausted_with_retry_after(keyed_server):
    refused: list[grpc.RpcError] = []
    with grpc.insecure_channel(keyed_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(60):  # a bucket holds 10 tokens: 60 calls cannot all fit
            try:
                stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="tiny-regressor"),
                                   metadata=(("x-api-key", "burst-secret"),))
            except grpc.RpcError as error:
                refused.append(error)
    assert refused and all(error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for error in refused)
    trailers = dict(refused[0].trailing_metadata())
    assert trailers["error-code"] == "rate_limited" and int(trailers["retry-after"]) >= 1
