"""Open Inference Protocol datatypes <-> numpy, shared by the OIP REST and gRPC codecs.

BYTES tensors are numpy object arrays of ``bytes``; on the wire (binary extension, raw_*_contents)
each element is a 4-byte little-endian length followed by its bytes, as Triton sends them.
"""

from __future__ import annotations

import struct

import numpy as np

from .errors import InvalidInput

_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_FROM_NUMPY: dict[str, str] = {dtype.name: name for name, dtype in _TO_NUMPY.items() if name != "BYTES"}
_FROM_NUMPY["object"] = "BYTES"


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return _TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(f"unknown datatype {datatype!r}", {"supported": sorted(_TO_NUMPY)}) from None


def oip_datatype(dtype: np.dtype | str) -> str:
    """OIP datatype of a numpy dtype (or dtype name); str/bytes arrays are BYTES."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _FROM_NUMPY[dtype.name]
    except KeyError:
        raise InvalidInput(f"dtype {dtype.name} has no Open Inference Protocol datatype") from None


def element_count(shape: list[int] | tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidInput(f"shape {list(shape)} has a negative dimension")
        count *= dim
    return count


def from_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    """A tensor from its raw little-endian bytes (binary extension / raw_input_contents)."""
    count = element_count(shape)
    if datatype == "BYTES":
        return _deserialize_bytes(name, raw, count).reshape(shape)
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(f"input {name!r}: {len(raw)} bytes of data, expected {expected} for "
                           f"{datatype} {list(shape)}", {"input": name, "bytes": len(raw), "expected": expected})
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def to_raw(array: np.ndarray) -> bytes:
    """Raw little-endian bytes of a tensor (binary extension / raw_output_contents)."""
    if array.dtype.kind in "OSU":
        return _serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _deserialize_bytes(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    view = memoryview(raw)
    items, offset = [], 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInput(f"input {name!r}: truncated BYTES element length", {"input": name})
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"input {name!r}: BYTES element runs past the data", {"input": name})
        items.append(bytes(view[offset:offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInput(f"input {name!r}: {len(items)} BYTES elements, expected {count}",
                           {"input": name, "elements": len(items), "expected": count})
    array = np.empty(count, dtype=object)
    array[:] = items
    return array
