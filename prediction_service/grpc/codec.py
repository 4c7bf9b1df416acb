"""Open Inference Protocol protobuf messages <-> the data plane's numpy tensors and results.

Inputs come either as typed ``contents`` or as ``raw_input_contents`` (what tritonclient sends); outputs
always go back as ``raw_output_contents``, as Triton answers, because tritonclient's ``as_numpy`` reads
typed contents only for BYTES. Validation against the model's signature is the data plane's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from .. import oip_documents
from ..errors import InvalidInput
from ..inference import InferenceResult, ModelMetadata, Selector
from ..oip_datatypes import element_count, from_raw, numpy_dtype, oip_datatype, to_raw

EXTENSIONS = ("model_configuration", "parameters")

# Typed contents field of each datatype, and the dtype the field's values arrive in (FP16 has none).
_TYPED_FIELDS: dict[str, tuple[str, np.dtype]] = {
    "BOOL": ("bool_contents", np.dtype(bool)),
    "INT8": ("int_contents", np.dtype(np.int32)), "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)), "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)), "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)), "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)), "FP64": ("fp64_contents", np.dtype(np.float64)),
}



@dataclass(frozen=True)
class DecodedRequest:
    inputs: dict[str, np.ndarray]
    selector: Selector
    outputs: tuple[str, ...]
    """Requested output names; empty = all outputs."""
    timeout_s: float | None
    """Triton's ``timeout`` request parameter (sent in microseconds), when the client set one."""


# ---- requests ----------------------------------------------------------------------------------------

def decode_request(request: service_pb2.ModelInferRequest) -> DecodedRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send one per input",
                           {"raw_input_contents": len(raw), "inputs": len(request.inputs)})
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise InvalidInput(f"input {tensor.name!r} appears twice", {"input": tensor.name})
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {tensor.name!r}: contents must be empty when raw_input_contents "
                                   "is used", {"input": tensor.name})
            array = from_raw(tensor.name, tensor.datatype, shape, raw[index])
            # a read-only view of the message's bytes: runtimes (torch) expect ordinary arrays, as REST gives
            inputs[tensor.name] = array if array.flags.writeable and array.flags.aligned else array.copy()
        else:
            inputs[tensor.name] = _from_contents(tensor, shape)
    parameters = {key: _parameter(key, value) for key, value in request.parameters.items()}
    timeout_us = parameters.get("timeout")
    if timeout_us is not None and (not isinstance(timeout_us, int) or timeout_us < 0):
        raise InvalidInput("parameter 'timeout' must be a non-negative int64 (microseconds)")
    selector = Selector(version=request.model_version or None, stage=_string_parameter(parameters, "stage"),
                        routing_key=_string_parameter(parameters, "routing_key"))
    return DecodedRequest(inputs, selector, tuple(output.name for output in request.outputs),
                          timeout_us / 1e6 if timeout_us else None)


def _from_contents(tensor: service_pb2.ModelInferRequest.InferInputTensor, shape: list[int]) -> np.ndarray:
    count = element_count(shape)
    if tensor.datatype == "BYTES":
        values: Any = tensor.contents.bytes_contents
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
    else:
        dtype = numpy_dtype(tensor.datatype)  # unknown datatype -> InvalidInput
        if tensor.datatype not in _TYPED_FIELDS:
            raise InvalidInput(f"input {tensor.name!r}: {tensor.datatype} has no typed contents field; "
                               "send it in raw_input_contents", {"input": tensor.name})
        field, wire_dtype = _TYPED_FIELDS[tensor.datatype]
        wide = np.array(getattr(tensor.contents, field), dtype=wire_dtype)
        array = wide.astype(dtype)
        if dtype != wire_dtype and not np.array_equal(array, wide):  # e.g. 300 sent as INT8
            raise InvalidInput(f"input {tensor.name!r}: values out of range for {tensor.datatype}",
                               {"input": tensor.name})
    if array.size != count:
        raise InvalidInput(f"input {tensor.name!r}: {array.size} values in contents, expected {count} for "
                           f"{tensor.datatype} {shape}", {"input": tensor.name, "values": int(array.size),
                                                          "expected": count})
    return array.reshape(shape)


def _parameter(key: str, value: service_pb2.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _string_parameter(parameters: dict[str, Any], key: str) -> str | None:
    value = parameters.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"parameter {key!r} must be a string_param", {"parameter": key})
    return value


# ---- responses ---------------------------------------------------------------------------------------

def encode_response(result: InferenceResult, request_id: str,
                    requested: tuple[str, ...] = ()) -> service_pb2.ModelInferResponse:
    """``request_id``: the id the client sent, echoed as Triton does (ours goes in the parameters)."""
    unknown = [name for name in requested if name not in result.outputs]
    if unknown:
        raise InvalidInput(f"unknown requested output(s) {unknown}",
                           {"unknown": unknown, "outputs": sorted(result.outputs)})
    response = service_pb2.ModelInferResponse(model_name=result.model, model_version=result.version,
                                              id=request_id)
    for name in requested or tuple(result.outputs):
        array = result.outputs[name]
        response.outputs.add(name=name, datatype=oip_datatype(array.dtype), shape=array.shape)
        response.raw_output_contents.append(to_raw(array))
    for key, value in oip_documents.provenance_parameters(result).items():
        response.parameters[key].string_param = value
    response.parameters["inference_time_ms"].double_param = result.inference_time_ms
    return response


def server_metadata_response() -> service_pb2.ServerMetadataResponse:
    return json_format.ParseDict(oip_documents.server_metadata(EXTENSIONS), service_pb2.ServerMetadataResponse())


def model_metadata_response(metadata: ModelMetadata) -> service_pb2.ModelMetadataResponse:
    return json_format.ParseDict(oip_documents.model_metadata(metadata), service_pb2.ModelMetadataResponse())


def model_config_response(metadata: ModelMetadata) -> service_pb2.ModelConfigResponse:
    """The REST door's config document, as the ModelConfig proto it is the JSON mapping of."""
    config = json_format.ParseDict(oip_documents.model_config(metadata), model_config_pb2.ModelConfig())
    return service_pb2.ModelConfigResponse(config=config)
