"""Bad requests over gRPC get the status code of the one status table (grpc/status.py) and a message that
says what is wrong; the server keeps serving after every one of them."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

ROW = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)


def infer_input(name: str, array: np.ndarray, datatype: str = "FP32", shape: list[int] | None = None):
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    if shape is not None:
        tensor.set_shape(shape)  # tritonclient does not re-check the data against a later shape
    return tensor


def refused(client, model: str, inputs, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, inputs, **kwargs)
    return caught.value


@pytest.fixture
def client(grpc_server):
    triton = grpc_server.client()
    yield triton
    assert triton.infer("tiny-regressor", [infer_input("x", ROW)]).as_numpy("y").tolist() == [[31.0]]  # still serving
    assert triton.is_server_ready()
    triton.close()


@pytest.mark.parametrize(("inputs", "message"), [
    ([infer_input("x", ROW.astype(np.int8), "INT8")], "dtype int8, expected float32"),
    ([infer_input("x", ROW.astype(np.bool_), "BOOL")], "dtype bool, expected float32"),
    ([infer_input("x", np.array([[b"a", b"b", b"c", b"d"]], dtype=object), "BYTES")], "must be numeric"),
    ([infer_input("x", ROW, shape=[2, 4])], "16 bytes of data, expected 32"),
    ([infer_input("z", ROW)], "input names do not match"),
    ([infer_input("x", ROW), infer_input("z", ROW)], "input names do not match"),
    ([infer_input("x", ROW[:, :3])], "has shape [1, 3], expected [-1, 4]"),
    ([infer_input("x", ROW[0])], "has rank 1, expected 2"),
    ([infer_input("x", np.array([[1.0, np.nan, 3.0, 4.0]], np.float32))], "NaN or Inf"),
], ids=["int8", "bool", "bytes", "data-length", "unknown-input", "extra-input", "shape", "rank", "nan"])
def test_invalid_tensors_are_invalid_argument(client, inputs, message):
    error = refused(client, "tiny-regressor", inputs)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in error.message()


def test_typed_contents_that_disagree_with_the_shape(grpc_server, client):
    with grpc.insecure_channel(grpc_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="tiny-regressor")
        request.inputs.add(name="x", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend([1.0] * 7)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "7 values in contents, expected 8" in caught.value.details()
    assert dict(caught.value.trailing_metadata())["error-code"] == "invalid_input"


def test_unknown_model_and_version_are_not_found(client):
    error = refused(client, "no-such-model", [infer_input("x", ROW)])
    assert error.status() == "StatusCode.NOT_FOUND"
    error = refused(client, "tiny-regressor", [infer_input("x", ROW)], model_version="9.9.9")
    assert error.status() == "StatusCode.NOT_FOUND" and "9.9.9" in error.message()
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("no-such-model")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    error = refused(client, "Bad/Name", [infer_input("x", ROW)])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"


def test_unknown_stage_and_bad_parameters(client):
    error = refused(client, "tiny-regressor", [infer_input("x", ROW)], parameters={"stage": "canary"})
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "unknown stage" in error.message()
    error = refused(client, "tiny-classifier", [infer_input("x", ROW)], parameters={"stage": "staging"})
    assert error.status() == "StatusCode.NOT_FOUND" and "no staging version" in error.message()
    error = refused(client, "tiny-regressor", [infer_input("x", ROW)], parameters={"stage": 3})
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "string_param" in error.message()


def test_message_over_the_request_limit_is_resource_exhausted(client):
    big = np.ones((20_000, 4), np.float32)  # 320 KB against LIMIT_MAX_REQUEST_BYTES=256 KiB (conftest)
    error = refused(client, "tiny-regressor", [infer_input("x", big)])
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_too_many_rows_is_invalid_argument(client):
    error = refused(client, "tiny-regressor", [infer_input("x", np.ones((300, 4), np.float32))])
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "exceeds the limit" in error.message()


def test_a_passed_deadline_is_deadline_exceeded(client):
    # Triton's ``timeout`` parameter (microseconds) is a server-side deadline: 1 us has passed before the
    # model could run, so the answer is the server's own.
    error = refused(client, "tiny-regressor", [infer_input("x", ROW)], timeout=1)
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED" and "deadline" in error.message()
    # the gRPC deadline: the slow model (~30 ms a row) cannot answer 4 rows in 10 ms
    error = refused(client, "slow-regressor", [infer_input("x", np.ones((4, 4), np.float32))], client_timeout=0.01)
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED"
