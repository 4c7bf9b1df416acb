"""Open Inference Protocol (KServe v2 / Triton) REST codec: bytes <-> numpy tensors, no FastAPI.

A request body is a JSON header, optionally followed by raw tensor bytes (the binary tensor data
extension): the ``Inference-Header-Content-Length`` header says where the JSON ends, and every input
with ``parameters.binary_data_size`` takes that many of the following bytes, in input order. Responses
use the same framing for outputs asked in binary (``parameters.binary_data_output`` for all,
``outputs[i].parameters.binary_data`` per output). Structural mistakes in the framing are 400; tensors
that do not match what they claim (datatype, shape, element count) are 422, as on /v1.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import orjson

from ..errors import BadRequest, InvalidInput, PayloadTooLarge, PredictionServiceError
from ..types import InferenceResult, Selector
from .documents import provenance_parameters
from .datatypes import MAX_RANK, TensorBudget, from_raw, numpy_dtype, oip_datatype, to_raw
from ..settings import LimitSettings
from ..api.body import parse_json
from .parameters import n_steps, priority, selector, timeout_seconds
from .shared_memory import (BYTE_SIZE, OFFSET, REGION, SharedMemoryRegions, TensorLocation, check_output, location,
                            no_regions, read_input)

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data", "model_configuration", "model_repository", "parameters",
              "system_shared_memory")
"""Triton extension names this door implements (the rest: CUDA shared memory, sequences, ... are not)."""

_UNSUPPORTED_OUTPUT_PARAMETERS = ("classification",)
_INT_KINDS = "iu"


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    place: TensorLocation | None = None
    """Where in a registered shared-memory region the output goes; None: in the response."""


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    """The caller's request id, echoed as the response ``id`` (the audit id is the server's own)."""
    inputs: dict[str, np.ndarray]
    selector: Selector
    outputs: tuple[RequestedOutput, ...] | None
    """None: every output the model returns, binary when ``binary_output`` is set."""
    binary_output: bool
    timeout_s: float | None = None
    """Triton's ``timeout`` request parameter (microseconds on the wire): a tighter deadline, when set."""
    priority: int = 0
    """Triton's ``priority`` request parameter: 1 is the highest, 0 the default."""
    n_steps: int | None = None
    """The ``n_steps`` request parameter: the first steps of a forecaster's horizon; None: all of them."""


@dataclass(frozen=True)
class EncodedResponse:
    body: bytes
    media_type: str
    headers: dict[str, str]


# ---- requests --------------------------------------------------------------------------------------


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (tritonclient's request_compression_algorithm), never past ``limit`` bytes."""
    if not encoding or encoding.lower() == "identity":
        return body
    if encoding.lower() not in ("gzip", "deflate"):
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
    inflater = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib framing, detected from the header
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"request body is not valid {encoding}: {exc}") from exc
    if len(data) > limit:  # a small compressed body must not inflate into an unbounded one
        raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes", {"max_bytes": limit})
    if not inflater.eof:
        raise BadRequest(f"request body is truncated {encoding} data")
    return data


def decode_infer_request(body: bytes, header_length: str | None, limits: LimitSettings,
                         version: str | None = None, regions: SharedMemoryRegions | None = None) -> InferRequest:
    """Parse an infer request; ``version`` comes from the path and wins over ``parameters.stage``.

    Every shape is judged (rank, dimensions, rows, elements: LIMIT_MAX_TENSOR_ELEMENTS) before any tensor
    data is decoded, and whatever the client's data still makes numpy or the parsers raise is its mistake:
    a 4xx, counted and audited like any other. ``regions``: the registered shared-memory regions inputs
    may be read from and outputs written to (None: none are)."""
    try:
        return _decode_infer_request(body, header_length, limits, version, regions)
    except PredictionServiceError:
        raise
    except (ValueError, TypeError, OverflowError, UnicodeError, struct.error) as exc:
        log.debug("undecodable infer request", exc_info=True)
        raise InvalidInput(f"infer request could not be decoded: {str(exc)[:200]}") from None


def _decode_infer_request(body: bytes, header_length: str | None, limits: LimitSettings,
                          version: str | None, regions: SharedMemoryRegions | None) -> InferRequest:
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[:0]
    else:
        size = _header_size(header_length, len(body))
        header, binary = view[:size], view[size:]
    document = parse_json(header, limits)
    if not isinstance(document, dict):
        raise InvalidInput("an infer request is a JSON object with an 'inputs' array")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = _object(document.get("parameters"), "parameters")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidInput("parameters.binary_data_output must be a boolean")
    timeout_s = timeout_seconds(parameters)
    asked = priority(parameters)  # a bad one is refused before any tensor is decoded
    steps = n_steps(parameters)
    outputs = _outputs(document.get("outputs"), binary_output, limits.max_request_tensors, regions)
    inputs = _inputs(document.get("inputs"), binary, limits, regions)
    return InferRequest(request_id, inputs, selector(parameters, version), outputs, binary_output, timeout_s,
                        asked, steps)


def _header_size(raw: str, body_size: int) -> int:
    try:
        size = int(raw)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be an integer, got {raw!r}") from None
    if not 0 < size <= body_size:
        raise BadRequest(f"{HEADER_LENGTH} is {size} but the body has {body_size} bytes",
                         {"header_length": size, "body_bytes": body_size})
    return size


def _inputs(raw: Any, binary: memoryview, limits: LimitSettings,
            regions: SharedMemoryRegions | None) -> dict[str, np.ndarray]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("'inputs' must be a non-empty array of tensors")
    if len(raw) > limits.max_request_tensors:
        raise InvalidInput(f"{len(raw)} inputs exceed the limit of {limits.max_request_tensors}",
                           {"inputs": len(raw), "max_inputs": limits.max_request_tensors})
    budget = TensorBudget.from_limits(limits)
    # every shape is judged before any data is: a huge claim costs nothing, whatever its position
    headers = [_tensor_header(item, budget) for item in raw]
    tensors: dict[str, np.ndarray | None] = {}  # None: binary, decoded once the framing is known good
    pending: list[tuple[str, str, list[int], int, memoryview | bytearray]] = []
    offset = 0
    for item, (name, datatype, shape, count) in zip(raw, headers):
        if name in tensors:
            raise InvalidInput(f"input {name!r} is given twice", {"input": name})
        parameters = _object(item.get("parameters"), f"input {name!r} parameters")
        size = parameters.get("binary_data_size")
        place = location(parameters, f"input {name!r}")
        if place is not None:
            if "data" in item or size is not None:
                raise BadRequest(f"input {name!r}: {REGION} excludes 'data' and binary_data_size", {"input": name})
            tensors[name] = None
            pending.append((name, datatype, shape, count, read_input(regions, name, datatype, count, place,
                                                                     limits.max_request_bytes)))
            continue
        if size is None:
            if "data" not in item:
                raise InvalidInput(f"input {name!r} has neither 'data' nor parameters.binary_data_size",
                                   {"input": name})
            tensors[name] = _from_json(name, datatype, shape, count, item["data"])
            continue
        if "data" in item:
            raise BadRequest(f"input {name!r} has both 'data' and parameters.binary_data_size", {"input": name})
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer", {"input": name})
        if offset + size > len(binary):
            raise BadRequest(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                             f"({len(binary) - offset} bytes left)", {"input": name})
        tensors[name] = None
        pending.append((name, datatype, shape, count, binary[offset:offset + size]))
        offset += size
    if offset != len(binary):  # framing first: a 400 names the real mistake before any tensor is judged
        raise BadRequest(f"{len(binary) - offset} bytes of binary data after the last input's binary_data_size",
                         {"unused_bytes": len(binary) - offset})
    for name, datatype, shape, count, raw_bytes in pending:
        array = from_raw(name, datatype, shape, raw_bytes, count)
        # a view into the body is read-only (torch.from_numpy warns) and sits at whatever offset the JSON
        # header ended (unaligned): one copy per tensor gives runtimes an ordinary array
        tensors[name] = array if array.flags.writeable and array.flags.aligned else array.copy()
    return tensors  # type: ignore[return-value]  # every None was filled above


def _tensor_header(item: Any, budget: TensorBudget) -> tuple[str, str, list[int], int]:
    """Name, datatype, shape and element count, the shape charged to ``budget``: no data is read here."""
    if not isinstance(item, dict):
        raise InvalidInput("each input is an object with name, datatype, shape and data")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not name:
        raise InvalidInput("every input needs a 'name'")
    if not isinstance(datatype, str):
        raise InvalidInput(f"input {name!r} needs a 'datatype' (FP32, INT64, BYTES, ...)", {"input": name})
    numpy_dtype(datatype)  # unknown datatypes fail here, naming the supported ones
    # a shape deeper than numpy allows is refused by its length alone (in claim), before its dimensions are read
    if not isinstance(shape, list) or (len(shape) <= MAX_RANK and not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise InvalidInput(f"input {name!r}: 'shape' must be an array of integers", {"input": name})
    return name, datatype, shape, budget.claim(name, shape, datatype)


def _from_json(name: str, datatype: str, shape: list[int], expected: int, data: Any) -> np.ndarray:
    """A tensor from JSON ``data``, flat (row-major) or nested; values must fit the datatype exactly.
    ``expected``: the element count the shape was granted."""
    if isinstance(data, list) and data and not isinstance(data[0], list) and len(data) != expected:
        _count_mismatch(name, shape, len(data), expected)  # a flat list: known wrong before it is read
    if datatype == "BYTES":
        items = _strings(name, data, expected, len(shape))
        array = np.empty(len(items), dtype=object)
        array[:] = items
    else:
        array = _numbers(name, datatype, data)
    if array.size != expected:
        _count_mismatch(name, shape, int(array.size), expected)
    return array.reshape(shape)


def _count_mismatch(name: str, shape: list[int], values: int, expected: int) -> NoReturn:
    raise InvalidInput(f"input {name!r}: {values} values of data for shape {shape} ({expected} expected)",
                       {"input": name, "values": values, "expected": expected})


def _numbers(name: str, datatype: str, data: Any) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    if not isinstance(data, list):
        data = [data]
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"input {name!r}: data is not a rectangular array of numbers", {"input": name}) from None
    if array.size == 0:
        return array.astype(dtype)
    # numpy would turn "1.5" into 1.5, 1.7 into 1 and 300 into 44 (uint8) without a word: refuse instead
    allowed = "b" if dtype.kind == "b" else (_INT_KINDS if dtype.kind in _INT_KINDS else "iuf")
    if array.dtype.kind not in allowed:
        raise InvalidInput(f"input {name!r}: data of kind {array.dtype.name} does not fit datatype {datatype}",
                           {"input": name, "datatype": datatype})
    if dtype.kind in _INT_KINDS:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(f"input {name!r}: values out of range for {datatype}", {"input": name})
    return array.astype(dtype, copy=False)


def _strings(name: str, data: Any, expected: int, rank: int) -> list[bytes]:
    """BYTES data as JSON strings (flat or nested), kept as utf-8 bytes like the binary form. The walk stops
    as soon as the data holds more than ``expected`` strings, or more lists than a nesting of ``rank`` levels
    could need, so its cost follows the checked shape, not the body."""
    out: list[bytes] = []
    lists_left = expected * max(rank, 1) + 1
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            lists_left -= 1
            if lists_left < 0:
                raise InvalidInput(f"input {name!r}: BYTES data is not nested like its shape", {"input": name})
            stack.extend(reversed(item))
        elif isinstance(item, str):
            if len(out) == expected:
                raise InvalidInput(f"input {name!r}: more than {expected} strings of data for its shape "
                                   f"({expected} expected)", {"input": name, "expected": expected})
            out.append(item.encode())
        else:
            raise InvalidInput(f"input {name!r}: BYTES data must be strings", {"input": name})
    return out


def _outputs(raw: Any, binary_default: bool, max_outputs: int,
             regions: SharedMemoryRegions | None) -> tuple[RequestedOutput, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be an array of {name, parameters}")
    if len(raw) > max_outputs:
        raise InvalidInput(f"{len(raw)} requested outputs exceed the limit of {max_outputs}",
                           {"outputs": len(raw), "max_outputs": max_outputs})
    outputs: list[RequestedOutput] = []
    for item in raw:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidInput("every requested output needs a 'name'")
        parameters = _object(item.get("parameters"), f"output {name!r} parameters")
        for unsupported in _UNSUPPORTED_OUTPUT_PARAMETERS:
            if unsupported in parameters:
                raise InvalidInput(f"output {name!r}: parameter {unsupported!r} is not supported by this server",
                                   {"output": name})
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise InvalidInput(f"output {name!r}: parameters.binary_data must be a boolean", {"output": name})
        if any(o.name == name for o in outputs):
            raise InvalidInput(f"output {name!r} is requested twice", {"output": name})
        place = location(parameters, f"output {name!r}")
        if place is not None:
            check_output(regions, name, place)  # before inference: a bad span costs no prediction
        outputs.append(RequestedOutput(name, binary, place))
    return tuple(outputs)


def _object(raw: Any, what: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{what} must be an object")
    return raw


# ---- responses -------------------------------------------------------------------------------------


def encode_infer_response(result: InferenceResult, request: InferRequest,
                          regions: SharedMemoryRegions | None = None) -> EncodedResponse:
    """The response JSON, followed by the binary outputs when any were asked for in binary. Outputs asked
    in a shared-memory region are written there, and the response says where (no data), as Triton does."""
    if request.outputs is None:
        wanted = [RequestedOutput(name, request.binary_output) for name in result.outputs]
    else:
        wanted = list(request.outputs)
        unknown = [o.name for o in wanted if o.name not in result.outputs]
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown} for model {result.model!r}; it has "
                               f"{sorted(result.outputs)}", {"unknown": unknown, "outputs": sorted(result.outputs)})
    tensors, blobs = [], []
    for output in wanted:
        array = result.outputs[output.name]
        tensor: dict[str, Any] = {"name": output.name, "datatype": oip_datatype(array.dtype),
                                  "shape": list(array.shape)}
        if output.place is not None:
            raw = to_raw(array)
            if regions is None:
                raise no_regions(output.place.region)
            regions.write(output.place.region, output.place.offset, output.place.byte_size, raw)
            tensor["parameters"] = _shm_parameters(output.place, len(raw))
        elif output.binary:
            raw = to_raw(array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = _json_data(output.name, array)
        tensors.append(tensor)
    document: dict[str, Any] = {"model_name": result.model, "model_version": result.version}
    if request.id is not None:
        document["id"] = request.id
    document["parameters"] = {**provenance_parameters(result), "inference_time_ms": result.inference_time_ms}
    document["outputs"] = tensors
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return EncodedResponse(header, "application/json", {})
    return EncodedResponse(b"".join([header, *blobs]), "application/octet-stream",
                           {HEADER_LENGTH: str(len(header))})


def _shm_parameters(place: TensorLocation, written: int) -> dict[str, Any]:
    parameters: dict[str, Any] = {REGION: place.region, BYTE_SIZE: written}
    if place.offset:
        parameters[OFFSET] = place.offset
    return parameters


def _json_data(name: str, array: np.ndarray) -> Any:
    if array.dtype.kind in "OSU":
        try:
            return [item.decode() if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
        except UnicodeDecodeError:
            raise BadRequest(f"output {name!r} is not UTF-8 text; request it with binary_data") from None
    # orjson writes contiguous numpy arrays natively; the flat, row-major list is what OIP specifies
    return np.ascontiguousarray(array.reshape(-1))


# ---- metadata --------------------------------------------------------------------------------------
