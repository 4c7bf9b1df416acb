"""The OIP REST codec on its own: requests built by tritonclient itself, responses read back by it."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from prediction_service.oip.rest_codec import HEADER_LENGTH, decode_infer_request, decompress, encode_infer_response
from prediction_service.oip.documents import model_config, model_metadata
from prediction_service.errors import BadRequest, InvalidInput, PayloadTooLarge
from prediction_service.types import InferenceResult, ModelMetadata, Provenance, TensorMetadata
from prediction_service.settings import LimitSettings

LIMITS = LimitSettings()
X = np.arange(8, dtype=np.float32).reshape(2, 4) / 3


def _body(inputs, outputs=None, request_id="", parameters=None) -> tuple[bytes, str | None]:
    body, json_size = triton.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id, parameters=parameters)
    return body, None if json_size is None else str(json_size)


def _input(name, array, datatype, binary):
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False])
def test_numeric_input_round_trips_exactly(binary):
    body, header = _body([_input("x", X, "FP32", binary)])
    request = decode_infer_request(body, header, LIMITS)
    assert (header is not None) == binary
    assert request.inputs["x"].dtype == np.float32 and request.inputs["x"].shape == (2, 4)
    np.testing.assert_array_equal(request.inputs["x"], X)


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_input_is_an_object_array_of_utf8_bytes(binary):
    text = np.array(["shares rally", "profit warning ☹"], dtype=object)
    body, header = _body([_input("text", text, "BYTES", binary)])
    decoded = decode_infer_request(body, header, LIMITS).inputs["text"]
    assert decoded.dtype == object and decoded.tolist() == [s.encode() for s in text]


def test_mixed_binary_and_json_inputs_take_their_own_bytes():
    ids = np.array([[3, 1, 4]], dtype=np.int64)
    body, header = _body([_input("x", X, "FP32", True), _input("ids", ids, "INT64", False),
                          _input("mask", np.ones((1, 3), np.int64), "INT64", True)])
    inputs = decode_infer_request(body, header, LIMITS).inputs
    np.testing.assert_array_equal(inputs["x"], X)
    np.testing.assert_array_equal(inputs["ids"], ids)
    assert inputs["mask"].dtype == np.int64 and inputs["mask"].tolist() == [[1, 1, 1]]


def test_selector_and_outputs_from_parameters():
    outputs = [triton.InferRequestedOutput("y", binary_data=False), triton.InferRequestedOutput("z")]
    body, header = _body([_input("x", X, "FP32", False)], outputs=outputs, request_id="abc",
                         parameters={"stage": "staging", "routing_key": "AAPL"})
    request = decode_infer_request(body, header, LIMITS)
    assert request.id == "abc"
    assert (request.selector.stage, request.selector.routing_key, request.selector.version) == ("staging", "AAPL", None)
    assert [(o.name, o.binary) for o in request.outputs] == [("y", False), ("z", True)]
    pinned = decode_infer_request(body, header, LIMITS, version="2.0.0")
    assert pinned.selector.version == "2.0.0"


def test_triton_timeout_parameter_is_read_in_microseconds():
    body, header = _body([_input("x", X, "FP32", False)])
    assert decode_infer_request(body, header, LIMITS).timeout_s is None
    timed = triton.InferenceServerClient.generate_request_body([_input("x", X, "FP32", False)], timeout=250_000)[0]
    assert decode_infer_request(timed, None, LIMITS).timeout_s == pytest.approx(0.25)


def test_no_outputs_asked_means_all_in_binary_as_tritonclient_requests():
    body, header = _body([_input("x", X, "FP32", False)])
    request = decode_infer_request(body, header, LIMITS)
    assert request.outputs is None and request.binary_output is True


def _json(document) -> bytes:
    return orjson.dumps(document)


X_JSON = {"name": "x", "datatype": "FP32", "shape": [1, 4]}


@pytest.mark.parametrize("document, error, needle", [
    ({"inputs": [{**X_JSON, "data": [1, 2, 3]}]}, InvalidInput, "3 values"),
    ({"inputs": [{**X_JSON, "data": ["1", "2", "3", "4"]}]}, InvalidInput, "does not fit"),
    ({"inputs": [{**X_JSON, "data": [True, False, True, False]}]}, InvalidInput, "does not fit"),
    ({"inputs": [{**X_JSON, "data": [1, None, 3, 4]}]}, InvalidInput, "does not fit"),
    ({"inputs": [{**X_JSON, "data": [[1, 2], [3]]}]}, InvalidInput, "rectangular"),
    ({"inputs": [{**X_JSON, "datatype": "FP31", "data": [1, 2, 3, 4]}]}, InvalidInput, "datatype"),
    ({"inputs": [{**X_JSON, "datatype": "INT32", "data": [1.5, 2, 3, 4]}]}, InvalidInput, "does not fit"),
    ({"inputs": [{**X_JSON, "datatype": "UINT8", "data": [1, 2, 3, 300]}]}, InvalidInput, "range"),
    ({"inputs": [{**X_JSON, "shape": [1, -4], "data": [1, 2, 3, 4]}]}, InvalidInput, "negative"),
    ({"inputs": [{**X_JSON, "shape": "1x4", "data": [1, 2, 3, 4]}]}, InvalidInput, "shape"),
    ({"inputs": [X_JSON]}, InvalidInput, "neither"),
    ({"inputs": [{**X_JSON, "data": [1, 2, 3, 4]}] * 2}, InvalidInput, "twice"),
    ({"inputs": []}, InvalidInput, "non-empty"),
    ({"input": [{**X_JSON, "data": [1, 2, 3, 4]}]}, InvalidInput, "inputs"),
    ([1, 2], InvalidInput, "object"),
    ({"inputs": [{**X_JSON, "data": [1, 2, 3, 4]}], "parameters": {"stage": 3}}, InvalidInput, "stage"),
    ({"inputs": [{**X_JSON, "data": [1, 2, 3, 4]}], "outputs": [{"name": "y", "parameters": {"classification": 2}}]},
     InvalidInput, "not supported"),
    ({"inputs": [{**X_JSON, "datatype": "BYTES", "data": [1, 2, 3, 4]}]}, InvalidInput, "strings"),
    ({"inputs": [{**X_JSON, "parameters": {"binary_data_size": 16}}]}, BadRequest, "runs past"),
])
def test_bad_json_requests(document, error, needle):
    with pytest.raises(error) as caught:
        decode_infer_request(_json(document), None, LIMITS)
    assert needle in caught.value.message


def test_malformed_json_is_a_bad_request():
    with pytest.raises(BadRequest):
        decode_infer_request(b'{"inputs": [', None, LIMITS)


def _binary_request(declared_size: int, payload: bytes, header_length: int | None = None) -> tuple[bytes, str]:
    header = _json({"inputs": [{**X_JSON, "parameters": {"binary_data_size": declared_size}}]})
    return header + payload, str(len(header) if header_length is None else header_length)


@pytest.mark.parametrize("declared, payload, header_delta, error, needle", [
    (16, b"\0" * 12, 0, BadRequest, "runs past"),           # binary_data_size larger than the data sent
    (12, b"\0" * 16, 0, BadRequest, "after the last"),      # leftover bytes nobody claimed
    (12, b"\0" * 12, 0, InvalidInput, "expected 16"),       # consistent framing, wrong size for FP32 [1, 4]
    (16, b"\0" * 16, 1000, BadRequest, HEADER_LENGTH),      # header length past the body
    (16, b"\0" * 16, -3, BadRequest, "not valid JSON"),     # header length cuts the JSON short
])
def test_binary_framing_errors(declared, payload, header_delta, error, needle):
    body, header = _binary_request(declared, payload)
    with pytest.raises(error) as caught:
        decode_infer_request(body, str(int(header) + header_delta), LIMITS)
    assert needle in caught.value.message


def test_header_length_must_be_a_number():
    body, _ = _binary_request(16, b"\0" * 16)
    with pytest.raises(BadRequest):
        decode_infer_request(body, "sixteen", LIMITS)


def _result(outputs: dict[str, np.ndarray], stage: str | None = "production") -> InferenceResult:
    return InferenceResult(model="m", version="1.0.0", stage=stage, arm=None, experiment_id=None, request_id="rid",
                           inference_time_ms=1.0, outputs=outputs,
                           provenance=Provenance("simple", "model.onnx", "onnx", "fp32", "ab" * 32), processing=None)


def _decode_response(encoded) -> triton.InferResult:
    header = encoded.headers.get(HEADER_LENGTH)
    return triton.InferenceServerClient.parse_response_body(encoded.body, header_length=header)


@pytest.mark.parametrize("binary", [True, False])
def test_response_read_back_by_tritonclient(binary):
    y = np.array([[0.25], [1e-8]], dtype=np.float32)
    labels = np.array([[b"up"], [b"down"]], dtype=object)
    body, header = _body([_input("x", X, "FP32", False)], request_id="req-1",
                         outputs=[triton.InferRequestedOutput("y", binary_data=binary),
                                  triton.InferRequestedOutput("label", binary_data=binary)])
    request = decode_infer_request(body, header, LIMITS)
    encoded = encode_infer_response(_result({"y": y, "label": labels, "unasked": y}), request)
    assert encoded.media_type == ("application/octet-stream" if binary else "application/json")
    result = _decode_response(encoded)
    np.testing.assert_array_equal(result.as_numpy("y"), y)
    assert result.as_numpy("label").tolist() == ([[b"up"], [b"down"]] if binary else [["up"], ["down"]])
    response = result.get_response()
    assert response["id"] == "req-1" and [o["name"] for o in response["outputs"]] == ["y", "label"]
    assert response["parameters"] == {"model_version": "1.0.0", "stage": "production", "request_id": "rid",
                                      "sha256": "ab" * 32, "backend": "simple", "precision": "fp32",
                                      "artifact": "model.onnx", "format": "onnx", "inference_time_ms": 1.0}


def test_unknown_requested_output_is_refused():
    body, header = _body([_input("x", X, "FP32", False)], outputs=[triton.InferRequestedOutput("nope")])
    with pytest.raises(InvalidInput, match="nope"):
        encode_infer_response(_result({"y": X}), decode_infer_request(body, header, LIMITS))


def test_none_provenance_values_are_left_out():
    body, header = _body([_input("x", X, "FP32", False)])
    encoded = encode_infer_response(_result({"y": X}, stage=None), decode_infer_request(body, header, LIMITS))
    response = _decode_response(encoded).get_response()
    assert "stage" not in response["parameters"] and "arm" not in response["parameters"] and "id" not in response


@pytest.mark.parametrize("encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_decompress_both_framings_and_bound_the_inflated_size(encoding, compress):
    data = b"x" * 5000
    assert decompress(compress(data), encoding, 5000) == data
    with pytest.raises(PayloadTooLarge):
        decompress(compress(data), encoding, 4999)
    with pytest.raises(BadRequest):
        decompress(b"not compressed", encoding, 5000)
    with pytest.raises(BadRequest):
        decompress(data, "br", 5000)
    with pytest.raises(BadRequest, match="truncated"):
        decompress(compress(data)[:-8], encoding, 5000)


def _meta(max_batch_size: int, text: bool = False) -> ModelMetadata:
    return ModelMetadata(
        name="m", version="1.0.0", versions=("1.0.0", "2.0.0"), stage="production", platform="onnx", backend="simple",
        inputs=(TensorMetadata("x", "float32", (-1, 60, 5)),), outputs=(TensorMetadata("y", "int64", (-1, 1)),),
        max_batch_size=max_batch_size, task="regression", labels=None,
        text_input=TensorMetadata("text", "object", (-1,)) if text else None, loaded=True)


def test_model_metadata_and_config():
    meta = model_metadata(_meta(64, text=True))
    assert meta["versions"] == ["1.0.0", "2.0.0"] and meta["platform"] == "onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 60, 5]},
                              {"name": "text", "datatype": "BYTES", "shape": [-1]}]
    config = model_config(_meta(64, text=True))
    assert (config["max_batch_size"], config["platform"], config["backend"]) == (64, "onnxruntime_onnx", "onnxruntime")
    assert config["input"][0] == {"name": "x", "data_type": "TYPE_FP32", "dims": [60, 5], "optional": True}
    assert config["input"][1] == {"name": "text", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []},
                                  "optional": True}
    assert config["output"] == [{"name": "y", "data_type": "TYPE_INT64", "dims": [1]}]
    assert config["parameters"]["version"] == {"string_value": "1.0.0"}
    unbatched = model_config(_meta(0))
    assert unbatched["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 60, 5]}]


def test_binary_inputs_are_ordinary_writable_aligned_arrays():
    # the JSON header ends at an arbitrary offset: the tensor behind it must not stay an unaligned read-only view
    body, header = _body([_input("x", X, "FP32", True)], request_id="odd")
    x = decode_infer_request(body, header, LIMITS).inputs["x"]
    assert x.flags.writeable and x.flags.aligned
