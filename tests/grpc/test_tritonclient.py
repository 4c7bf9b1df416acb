"""Unchanged ``tritonclient.grpc`` code against the real server's gRPC door: health, metadata, config, infer
(raw tensors as tritonclient sends them, and typed ``contents`` through the generated stub), version and
stage selection, provenance, the standard health service; answers equal the /v1 REST API's."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from prediction_service import __version__
from prediction_service.registry.fsutil import sha256_file

ROWS = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)


def infer_input(name: str, array: np.ndarray, datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def rest_outputs(server, model: str, rows: np.ndarray, **selector) -> dict:
    response = httpx.post(f"{server.http_url}/v1/models/{model}/predict",
                          json={"inputs": {"x": rows.tolist()}, **selector}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def client(grpc_server):
    triton = grpc_server.client()
    yield triton
    triton.close()


@pytest.fixture
def stub(grpc_server):
    with grpc.insecure_channel(grpc_server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_server_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "prediction-service" and metadata["version"] == __version__
    assert "model_configuration" in metadata["extensions"]


def test_model_metadata_ready_and_config(client):
    assert client.is_model_ready("tiny-classifier")
    assert not client.is_model_ready("no-such-model")  # as Triton answers for a model it does not know
    metadata = client.get_model_metadata("tiny-regressor", as_json=True)
    assert metadata["name"] == "tiny-regressor" and metadata["versions"] == ["1.0.0", "2.0.0"]
    assert metadata["platform"] == "onnx"
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": ["-1", "1"]}]
    staging = client.get_model_metadata("tiny-regressor", model_version="2.0.0")
    assert staging.name == "tiny-regressor" and list(staging.inputs[0].shape) == [-1, 4]

    config = client.get_model_config("tiny-classifier").config
    assert (config.name, config.platform, config.max_batch_size) == ("tiny-classifier", "onnxruntime_onnx", 64)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("x", grpcclient.model_config_pb2.TYPE_FP32, [4])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("probabilities", [3])]  # no batch dim
    assert config.parameters["labels"].string_value == "down,flat,up"
    assert config.parameters["version"].string_value == "1.0.0"


def test_infer_equals_the_rest_answer(client, grpc_server):
    result = client.infer("tiny-classifier", [infer_input("x", ROWS)], request_id="client-7")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 3)
    expected = rest_outputs(grpc_server, "tiny-classifier", ROWS)["outputs"]["probabilities"]
    np.testing.assert_allclose(probabilities, np.array(expected, np.float32), rtol=1e-6)
    response = result.get_response()
    assert response.id == "client-7"  # echoed; the server's own id is in the parameters
    assert response.model_name == "tiny-classifier" and response.model_version == "1.0.0"


def test_typed_contents_through_the_generated_stub(stub, grpc_server):
    request = service_pb2.ModelInferRequest(model_name="tiny-regressor", id="typed")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(ROWS.shape))
    tensor.contents.fp32_contents.extend(ROWS.ravel().tolist())
    response = stub.ModelInfer(request)
    assert response.id == "typed" and [o.name for o in response.outputs] == ["y"]
    y = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(list(response.outputs[0].shape))
    expected = rest_outputs(grpc_server, "tiny-regressor", ROWS)["outputs"]["y"]
    np.testing.assert_allclose(y, np.array(expected, np.float32), rtol=1e-6)

    # FP64 is one of the safe casts into a float32 input, as on /v1
    request = service_pb2.ModelInferRequest(model_name="tiny-regressor")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend([1.0, 2.0, 3.0, 4.0])
    response = stub.ModelInfer(request)
    assert np.frombuffer(response.raw_output_contents[0], dtype=np.float32).tolist() == [31.0]


def test_version_and_stage_selection_with_provenance(client, grpc_server):
    row = infer_input("x", ROWS[:1])
    production = client.infer("tiny-regressor", [row])
    by_version = client.infer("tiny-regressor", [row], model_version="2.0.0")
    by_stage = client.infer("tiny-regressor", [row], parameters={"stage": "staging"})
    assert production.as_numpy("y").tolist() == [[31.0]]
    assert by_version.as_numpy("y").tolist() == by_stage.as_numpy("y").tolist() == [[62.0]]

    def parameters(result) -> dict:
        return {key: value.string_param for key, value in result.get_response().parameters.items()
                if value.WhichOneof("parameter_choice") == "string_param"}

    prod, staged = parameters(production), parameters(by_stage)
    assert (prod["model_version"], prod["stage"]) == ("1.0.0", "production")
    assert (staged["model_version"], staged["stage"]) == ("2.0.0", "staging")
    assert parameters(by_version)["stage"] == "staging"  # an explicit version still names the stage it holds
    assert by_stage.get_response().model_version == "2.0.0"
    assert prod["backend"] == "simple" and prod["precision"] == "fp32"
    store = grpc_server.process.store
    assert prod["sha256"] == sha256_file(store / "tiny-regressor" / "v1.0.0" / prod["artifact"])
    assert prod["request_id"] != parameters(client.infer("tiny-regressor", [row]))["request_id"]
    assert "arm" not in prod and "experiment_id" not in prod  # no experiment runs: left out, not empty


def test_requested_outputs(client):
    result = client.infer("tiny-classifier", [infer_input("x", ROWS)],
                          outputs=[grpcclient.InferRequestedOutput("probabilities")])
    assert result.as_numpy("probabilities").shape == (3, 3)
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        client.infer("tiny-classifier", [infer_input("x", ROWS)], outputs=[grpcclient.InferRequestedOutput("nope")])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "nope" in caught.value.message()


def test_standard_health_service(grpc_server):
    with grpc.insecure_channel(grpc_server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "tiny-regressor"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
                health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_unimplemented_rpcs_say_so(client):
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        client.get_inference_statistics()
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        client.get_cuda_shared_memory_status()  # system shared memory is served; CUDA's is not
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
    assert client.is_server_ready()
