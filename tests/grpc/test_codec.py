"""The gRPC codec and status table on their own: protobuf in, numpy out, and back (no server)."""

from __future__ import annotations

from http import HTTPStatus

import grpc
import numpy as np
import pytest
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.grpc import model_config_pb2

from prediction_service import errors
from prediction_service.oip import grpc_codec as codec
from prediction_service.grpc.status import STATUS_CODES, status_code, trailing_metadata
from prediction_service.types import (InferenceResult, ModelMetadata, Provenance, Selector, TensorMetadata)
from prediction_service.oip.datatypes import to_raw

Tensor = service_pb2.ModelInferRequest.InferInputTensor

TYPED = [("BOOL", "bool_contents", [True, False], np.bool_), ("INT8", "int_contents", [-5, 7], np.int8),
         ("INT16", "int_contents", [-300, 300], np.int16), ("INT32", "int_contents", [-2**31, 2**31 - 1], np.int32),
         ("INT64", "int64_contents", [-2**63, 2**63 - 1], np.int64), ("UINT8", "uint_contents", [0, 255], np.uint8),
         ("UINT16", "uint_contents", [0, 65535], np.uint16), ("UINT32", "uint_contents", [0, 2**32 - 1], np.uint32),
         ("UINT64", "uint64_contents", [0, 2**64 - 1], np.uint64), ("FP32", "fp32_contents", [1.5, -2.25], np.float32),
         ("FP64", "fp64_contents", [1e300, -2.5], np.float64)]


def request(*tensors: Tensor, raw: list[bytes] | None = None, **parameters) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name="m", inputs=list(tensors), raw_input_contents=raw or [])
    for key, value in parameters.items():
        parameter = message.parameters[key]
        if isinstance(value, str):
            parameter.string_param = value
        else:
            parameter.int64_param = value
    return message


def typed(name: str, datatype: str, shape: list[int], field: str, values: list) -> Tensor:
    tensor = Tensor(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return tensor


@pytest.mark.parametrize(("datatype", "field", "values", "dtype"), TYPED, ids=[t[0] for t in TYPED])
def test_typed_contents_of_every_datatype_decode_exactly(datatype, field, values, dtype):
    decoded = codec.decode_request(request(typed("t", datatype, [1, 2], field, values)))
    array = decoded.inputs["t"]
    assert array.dtype == dtype and array.shape == (1, 2)
    assert array.tolist() == [values]


@pytest.mark.parametrize(("datatype", "field", "values", "dtype"), TYPED, ids=[t[0] for t in TYPED])
def test_raw_contents_of_every_datatype_decode_exactly(datatype, field, values, dtype):
    expected = np.array([values], dtype=dtype)
    tensor = Tensor(name="t", datatype=datatype, shape=[1, 2])
    decoded = codec.decode_request(request(tensor, raw=[to_raw(expected)]))
    np.testing.assert_array_equal(decoded.inputs["t"], expected)
    assert decoded.inputs["t"].dtype == dtype
    assert decoded.inputs["t"].flags.writeable  # an ordinary array, not a view of the message


def test_bytes_tensors_typed_and_raw():
    words = [b"rally", "caf\u00e9".encode(), b""]
    from_typed = codec.decode_request(request(typed("text", "BYTES", [3], "bytes_contents", words))).inputs["text"]
    raw = to_raw(np.array(words, dtype=object))
    from_raw = codec.decode_request(request(Tensor(name="text", datatype="BYTES", shape=[3]), raw=[raw])).inputs["text"]
    for array in (from_typed, from_raw):
        assert array.dtype == object and array.tolist() == words


@pytest.mark.parametrize(("tensor", "raw", "message"), [
    (typed("x", "FP32", [2, 2], "fp32_contents", [1.0, 2.0, 3.0]), None, "3 values in contents, expected 4"),
    (Tensor(name="x", datatype="FP32", shape=[1, 4]), [b"\0" * 12], "12 bytes of data, expected 16"),
    (typed("x", "INT8", [1], "int_contents", [300]), None, "out of range for INT8"),
    (typed("x", "UINT8", [1], "uint_contents", [256]), None, "out of range for UINT8"),
    (Tensor(name="x", datatype="FP16", shape=[1]), None, "no typed contents field"),
    (typed("x", "FLOAT", [1], "fp32_contents", [1.0]), None, "unknown datatype"),
    (typed("x", "FP32", [-1, 2], "fp32_contents", [1.0, 2.0]), None, "negative dimension"),
    (typed("x", "BYTES", [2], "bytes_contents", [b"a"]), None, "1 values in contents, expected 2"),
    (Tensor(name="x", datatype="BYTES", shape=[2]), [b"\x05\0\0\0ab"], "runs past the data"),
], ids=["typed-count", "raw-length", "int8-range", "uint8-range", "fp16-typed", "unknown-datatype", "negative-dim",
        "bytes-count", "bytes-truncated"])
def test_malformed_tensors_are_invalid_input(tensor, raw, message):
    with pytest.raises(errors.InvalidInput, match=message):
        codec.decode_request(request(tensor, raw=raw))


def test_raw_contents_must_cover_every_input_and_exclude_typed_contents():
    x = Tensor(name="x", datatype="FP32", shape=[1])
    y = Tensor(name="y", datatype="FP32", shape=[1])
    one = np.ones(1, np.float32).tobytes()
    with pytest.raises(errors.InvalidInput, match="1 raw_input_contents for 2 inputs"):
        codec.decode_request(request(x, y, raw=[one]))
    with pytest.raises(errors.InvalidInput, match="contents must be empty"):
        codec.decode_request(request(typed("x", "FP32", [1], "fp32_contents", [1.0]), raw=[one]))
    with pytest.raises(errors.InvalidInput, match="appears twice"):
        codec.decode_request(request(x, x, raw=[one, one]))


def test_selector_and_timeout_come_from_the_request():
    message = request(typed("x", "FP32", [1], "fp32_contents", [1.0]), stage="staging", routing_key="acct-7",
                      timeout=250_000)
    message.model_version = "2.0.0"
    decoded = codec.decode_request(message)
    assert decoded.selector == Selector(version="2.0.0", stage="staging", routing_key="acct-7")
    assert decoded.timeout_s == pytest.approx(0.25)
    assert codec.decode_request(request()).selector == Selector()
    with pytest.raises(errors.InvalidInput, match="'stage' must be a string"):
        codec.decode_request(request(stage=3))


def _result(outputs: dict[str, np.ndarray], **fields) -> InferenceResult:
    defaults = dict(model="m", version="1.0.0", stage="production", arm=None, experiment_id=None, request_id="r1",
                    inference_time_ms=1.5, provenance=Provenance("simple", "model.onnx", "onnx", "fp32", "ab12"),
                    processing=None)
    return InferenceResult(outputs=outputs, **{**defaults, **fields})


def test_response_sends_raw_outputs_tritonclient_reads_with_provenance_and_the_echoed_id():
    outputs = {"y": np.array([[1.5], [2.5]], np.float32), "label": np.array([b"up", b"down"], dtype=object),
               "n": np.array([3, 4], np.int64)}
    response = codec.encode_response(_result(outputs, arm="challenger", experiment_id="exp-1"), "client-id")
    assert response.id == "client-id" and response.model_version == "1.0.0"
    assert len(response.raw_output_contents) == 3 and not any(o.HasField("contents") for o in response.outputs)
    result = InferResult(response)
    for name, array in outputs.items():
        got = result.as_numpy(name)
        np.testing.assert_array_equal(got, array)
        assert got.shape == array.shape
    parameters = {key: value.string_param for key, value in response.parameters.items() if key != "inference_time_ms"}
    assert parameters == {"model_version": "1.0.0", "stage": "production", "arm": "challenger",
                          "experiment_id": "exp-1", "request_id": "r1", "backend": "simple",
                          "artifact": "model.onnx", "format": "onnx", "precision": "fp32", "sha256": "ab12"}


def test_response_leaves_out_unset_provenance_and_keeps_only_requested_outputs():
    outputs = {"a": np.zeros(1, np.float32), "b": np.ones(1, np.float32)}
    response = codec.encode_response(_result(outputs, stage=None), "", ("b",))
    assert [o.name for o in response.outputs] == ["b"]
    assert "stage" not in response.parameters and "arm" not in response.parameters
    with pytest.raises(errors.InvalidInput, match="unknown requested output"):
        codec.encode_response(_result(outputs), "", ("c",))


def test_metadata_and_config_are_triton_like():
    metadata = ModelMetadata(
        name="sentiment", version="1.0.0", versions=("1.0.0",), stage="production", platform="onnx",
        backend="simple", inputs=(TensorMetadata("input_ids", "int64", (-1, 64)),),
        outputs=(TensorMetadata("probabilities", "float32", (-1, 3)), TensorMetadata("score", "float32", (-1,))),
        max_batch_size=32, task="classification", labels=("negative", "neutral", "positive"),
        text_input=TensorMetadata("text", "object", (-1,)), loaded=True)
    described = codec.model_metadata_response(metadata)
    assert [(t.name, t.datatype, list(t.shape)) for t in described.inputs] == [
        ("input_ids", "INT64", [-1, 64]), ("text", "BYTES", [-1])]
    config = codec.model_config_response(metadata).config
    assert (config.name, config.platform, config.backend, config.max_batch_size) == (
        "sentiment", "onnxruntime_onnx", "onnxruntime", 32)
    inputs = {t.name: t for t in config.input}
    assert inputs["input_ids"].data_type == model_config_pb2.TYPE_INT64 and list(inputs["input_ids"].dims) == [64]
    assert inputs["text"].data_type == model_config_pb2.TYPE_STRING and list(inputs["text"].dims) == [1]
    assert inputs["text"].HasField("reshape") and all(t.optional for t in config.input)  # text OR tensors
    assert [list(t.dims) for t in config.output] == [[3], [1]]
    assert config.parameters["labels"].string_value == "negative,neutral,positive"


@pytest.mark.parametrize(("error", "code"), [
    (errors.InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT), (errors.BadRequest("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidName("x"), grpc.StatusCode.INVALID_ARGUMENT), (errors.ModelNotFound("x"), grpc.StatusCode.NOT_FOUND),
    (errors.VersionNotFound("x"), grpc.StatusCode.NOT_FOUND), (errors.Unauthorized("x"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.Forbidden("x"), grpc.StatusCode.PERMISSION_DENIED), (errors.RateLimited("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Overloaded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.BackendUnavailable("x"), grpc.StatusCode.UNAVAILABLE), (errors.NotReady("x"), grpc.StatusCode.UNAVAILABLE),
    (errors.ModelLoadError("x"), grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.BackendTimeout("x"), grpc.StatusCode.DEADLINE_EXCEEDED), (errors.Conflict("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PredictionServiceError("x"), grpc.StatusCode.INTERNAL),
])
def test_every_domain_error_has_its_status_code(error, code):
    assert status_code(error) == code


def test_status_table_and_retry_after():
    assert set(STATUS_CODES) >= {HTTPStatus.BAD_REQUEST, HTTPStatus.UNPROCESSABLE_ENTITY, HTTPStatus.NOT_FOUND,
                                 HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE,
                                 HTTPStatus.GATEWAY_TIMEOUT, HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN,
                                 HTTPStatus.REQUEST_ENTITY_TOO_LARGE}
    assert dict(trailing_metadata(errors.RateLimited("slow down", retry_after_s=3.0))) == {
        "error-code": "rate_limited", "retry-after": "3"}
    assert dict(trailing_metadata(errors.InvalidInput("bad"))) == {"error-code": "invalid_input"}
