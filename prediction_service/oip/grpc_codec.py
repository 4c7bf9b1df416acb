"""Open Inference Protocol protobuf messages <-> the data plane's numpy tensors and results.

Inputs come either as typed ``contents`` or as ``raw_input_contents`` (what tritonclient sends); outputs
always go back as ``raw_output_contents``, as Triton answers, because tritonclient's ``as_numpy`` reads
typed contents only for BYTES. Validation against the model's signature is the data plane's job.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from . import documents
from ..errors import InvalidInput, PredictionServiceError
from ..types import InferenceResult, ModelMetadata, RegionStatus, RepositoryEntry, Selector
from .datatypes import TensorBudget, from_raw, numpy_dtype, oip_datatype, to_raw
from ..settings import LimitSettings
from .parameters import n_steps, priority, selector, timeout_seconds
from .shared_memory import (BYTE_SIZE, OFFSET, PARAMETERS as SHM_PARAMETERS, REGION,
                            SharedMemoryRegions, TensorLocation, check_output, location, no_regions, read_input)

log = logging.getLogger(__name__)

EXTENSIONS = ("model_configuration", "model_repository", "parameters", "system_shared_memory")

# Typed contents field of each datatype, and the dtype the field's values arrive in (FP16 has none).
_TYPED_FIELDS: dict[str, tuple[str, np.dtype]] = {
    "BOOL": ("bool_contents", np.dtype(bool)),
    "INT8": ("int_contents", np.dtype(np.int32)), "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)), "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)), "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)), "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)), "FP64": ("fp64_contents", np.dtype(np.float64)),
}

_PARAMETERS = ("timeout", "stage", "routing_key", "priority", "n_steps")
"""The request parameters this server reads; others are ignored without being looked at."""


@dataclass(frozen=True)
class DecodedRequest:
    inputs: dict[str, np.ndarray]
    selector: Selector
    outputs: tuple[str, ...]
    """Requested output names; empty = all outputs."""
    timeout_s: float | None
    """Triton's ``timeout`` request parameter (sent in microseconds), when the client set one."""
    priority: int = 0
    """Triton's ``priority`` request parameter (tritonclient sends a uint64_param): 1 is the highest, 0 the
    default."""
    n_steps: int | None = None
    """The ``n_steps`` request parameter: the first steps of a forecaster's horizon; None: all of them."""
    output_places: dict[str, TensorLocation] | None = None
    """Outputs asked in a shared-memory region, by name (None: none)."""


# ---- requests ----------------------------------------------------------------------------------------

def decode_request(request: service_pb2.ModelInferRequest, limits: LimitSettings | None = None,
                   regions: SharedMemoryRegions | None = None) -> DecodedRequest:
    """The request's tensors, selector, outputs and timeout. Every shape is judged (rank, dimensions, rows,
    elements) against ``limits`` (default: LimitSettings()) before any tensor data is decoded, and whatever
    the client's data still makes numpy raise is its mistake: INVALID_ARGUMENT, counted like any other.
    ``regions``: the registered shared-memory regions inputs may be read from and outputs written to."""
    try:
        return _decode_request(request, limits if limits is not None else LimitSettings(), regions)
    except PredictionServiceError:
        raise
    except (ValueError, TypeError, OverflowError, UnicodeError, struct.error) as exc:
        log.debug("undecodable infer request", exc_info=True)
        raise InvalidInput(f"infer request could not be decoded: {str(exc)[:200]}") from None


def _decode_request(request: service_pb2.ModelInferRequest, limits: LimitSettings,
                    regions: SharedMemoryRegions | None) -> DecodedRequest:
    # the parameters first: a bad one is refused before any tensor is decoded
    parameters = {key: _parameter(request.parameters[key]) for key in _PARAMETERS if key in request.parameters}
    asked = priority(parameters)
    steps = n_steps(parameters)
    raw = request.raw_input_contents
    tensors, most = request.inputs, limits.max_request_tensors
    if len(tensors) > most or len(request.outputs) > most:
        raise InvalidInput(f"{len(tensors)} inputs and {len(request.outputs)} requested outputs: at most {most} "
                           "of each", {"inputs": len(tensors), "outputs": len(request.outputs), "max": most})
    # inputs in a shared-memory region have no raw_input_contents entry (as tritonclient sends them)
    in_regions = [location(_shm_parameters(tensor.parameters), f"input {tensor.name!r}") for tensor in tensors]
    direct = sum(place is None for place in in_regions)
    if raw and len(raw) != direct:
        raise InvalidInput(f"{len(raw)} raw_input_contents for {direct} inputs not in shared memory: send one "
                           "per input", {"raw_input_contents": len(raw), "inputs": direct})
    budget = TensorBudget.from_limits(limits)
    counts = [budget.claim(tensor.name, tensor.shape, tensor.datatype) for tensor in tensors]  # before any data
    places = {}
    for output in request.outputs:
        place = location(_shm_parameters(output.parameters), f"output {output.name!r}")
        if place is not None:
            check_output(regions, output.name, place)  # before inference: a bad span costs no prediction
            places[output.name] = place
    inputs: dict[str, np.ndarray] = {}
    next_raw = 0
    for tensor, count, place in zip(tensors, counts, in_regions):
        if tensor.name in inputs:
            raise InvalidInput(f"input {tensor.name!r} appears twice", {"input": tensor.name})
        shape = list(tensor.shape)
        if place is not None:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {tensor.name!r}: {REGION} excludes contents", {"input": tensor.name})
            data = read_input(regions, tensor.name, tensor.datatype, count, place, limits.max_request_bytes)
            array = from_raw(tensor.name, tensor.datatype, shape, data, count)
            inputs[tensor.name] = array if array.flags.writeable and array.flags.aligned else array.copy()
        elif raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {tensor.name!r}: contents must be empty when raw_input_contents "
                                   "is used", {"input": tensor.name})
            array = from_raw(tensor.name, tensor.datatype, shape, raw[next_raw], count)
            next_raw += 1
            # a read-only view of the message's bytes: runtimes (torch) expect ordinary arrays, as REST gives
            inputs[tensor.name] = array if array.flags.writeable and array.flags.aligned else array.copy()
        else:
            inputs[tensor.name] = _from_contents(tensor, shape, count)
    return DecodedRequest(inputs, selector(parameters, request.model_version or None),
                          tuple(output.name for output in request.outputs), timeout_seconds(parameters), asked,
                          steps, places or None)


def _shm_parameters(parameters: Any) -> dict[str, Any]:
    """A tensor's shared-memory parameters, unwrapped (only those: others are not looked at)."""
    return {key: _parameter(parameters[key]) for key in SHM_PARAMETERS if key in parameters}


def _from_contents(tensor: service_pb2.ModelInferRequest.InferInputTensor, shape: list[int],
                   count: int) -> np.ndarray:
    """``count``: the element count the shape was granted; contents of another length are refused before
    they are converted."""
    if tensor.datatype == "BYTES":
        values: Any = tensor.contents.bytes_contents
        if len(values) != count:
            _count_mismatch(tensor, shape, len(values), count)
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
    else:
        dtype = numpy_dtype(tensor.datatype)  # unknown datatype -> InvalidInput
        if tensor.datatype not in _TYPED_FIELDS:
            raise InvalidInput(f"input {tensor.name!r}: {tensor.datatype} has no typed contents field; "
                               "send it in raw_input_contents", {"input": tensor.name})
        field, wire_dtype = _TYPED_FIELDS[tensor.datatype]
        values = getattr(tensor.contents, field)
        if len(values) != count:
            _count_mismatch(tensor, shape, len(values), count)
        wide = np.array(values, dtype=wire_dtype)
        array = wide.astype(dtype)
        if dtype != wire_dtype and not np.array_equal(array, wide):  # e.g. 300 sent as INT8
            raise InvalidInput(f"input {tensor.name!r}: values out of range for {tensor.datatype}",
                               {"input": tensor.name})
    return array.reshape(shape)


def _count_mismatch(tensor: service_pb2.ModelInferRequest.InferInputTensor, shape: list[int], values: int,
                    count: int) -> NoReturn:
    raise InvalidInput(f"input {tensor.name!r}: {values} values in contents, expected {count} for "
                       f"{tensor.datatype} {shape}", {"input": tensor.name, "values": values, "expected": count})


def _parameter(value: service_pb2.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


# ---- responses ---------------------------------------------------------------------------------------

def encode_response(result: InferenceResult, request_id: str, requested: tuple[str, ...] = (),
                    places: dict[str, TensorLocation] | None = None,
                    regions: SharedMemoryRegions | None = None) -> service_pb2.ModelInferResponse:
    """``request_id``: the id the client sent, echoed as Triton does (ours goes in the parameters).
    ``places``: outputs written into a shared-memory region instead: the response names the region and
    the bytes written, and keeps an empty raw_output_contents in its place so the others stay aligned."""
    unknown = [name for name in requested if name not in result.outputs]
    if unknown:
        raise InvalidInput(f"unknown requested output(s) {unknown}",
                           {"unknown": unknown, "outputs": sorted(result.outputs)})
    response = service_pb2.ModelInferResponse(model_name=result.model, model_version=result.version,
                                              id=request_id)
    for name in requested or tuple(result.outputs):
        array = result.outputs[name]
        tensor = response.outputs.add(name=name, datatype=oip_datatype(array.dtype), shape=array.shape)
        place = places.get(name) if places else None
        if place is None:
            response.raw_output_contents.append(to_raw(array))
            continue
        raw = to_raw(array)
        if regions is None:
            raise no_regions(place.region)
        regions.write(place.region, place.offset, place.byte_size, raw)
        tensor.parameters[REGION].string_param = place.region
        tensor.parameters[BYTE_SIZE].int64_param = len(raw)
        if place.offset:
            tensor.parameters[OFFSET].int64_param = place.offset
        response.raw_output_contents.append(b"")
    for key, value in documents.provenance_parameters(result).items():
        response.parameters[key].string_param = value
    response.parameters["inference_time_ms"].double_param = result.inference_time_ms
    return response


def server_metadata_response() -> service_pb2.ServerMetadataResponse:
    return json_format.ParseDict(documents.server_metadata(EXTENSIONS), service_pb2.ServerMetadataResponse())


def model_metadata_response(metadata: ModelMetadata) -> service_pb2.ModelMetadataResponse:
    return json_format.ParseDict(documents.model_metadata(metadata), service_pb2.ModelMetadataResponse())


def model_config_response(metadata: ModelMetadata) -> service_pb2.ModelConfigResponse:
    """The REST door's config document, as the ModelConfig proto it is the JSON mapping of."""
    config = json_format.ParseDict(documents.model_config(metadata), model_config_pb2.ModelConfig())
    return service_pb2.ModelConfigResponse(config=config)


def repository_index_response(entries: Sequence[RepositoryEntry]) -> service_pb2.RepositoryIndexResponse:
    return service_pb2.RepositoryIndexResponse(models=[
        service_pb2.RepositoryIndexResponse.ModelIndex(**entry) for entry in documents.repository_index(entries)])


def repository_model_request(request: Any) -> documents.RepositoryModelRequest:
    """A RepositoryModelLoad/UnloadRequest's parameters as the REST door reads them."""
    parameters = {name: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
                  for name, value in request.parameters.items()}
    return documents.RepositoryModelRequest(parameters=parameters)


def shared_memory_status_response(regions: Sequence[RegionStatus]) -> service_pb2.SystemSharedMemoryStatusResponse:
    response = service_pb2.SystemSharedMemoryStatusResponse()
    for region in regions:
        response.regions[region.name].CopyFrom(service_pb2.SystemSharedMemoryStatusResponse.RegionStatus(
            name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size))
    return response
