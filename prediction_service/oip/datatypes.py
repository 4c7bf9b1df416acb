"""Open Inference Protocol datatypes <-> numpy, shared by the OIP REST and gRPC codecs.

BYTES tensors are numpy object arrays of ``bytes``; on the wire (binary extension, raw_*_contents)
each element is a 4-byte little-endian length followed by its bytes, as Triton sends them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInput
from ..settings import LimitSettings

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


MAX_RANK = 32
"""numpy's most dimensions: a deeper shape from the wire would fail inside reshape / empty."""

_LENGTH = struct.Struct("<I")


def element_count(name: str, shape: Sequence[int]) -> int:
    """Elements a wire shape declares; refuses what numpy cannot build (rank over 32) and zero or negative
    dimensions. Only the shape is read: call it before any tensor data is touched."""
    if len(shape) > MAX_RANK:  # before the shape is formatted into a message: it may be long
        raise InvalidInput(f"input {name!r}: shape has {len(shape)} dimensions, at most {MAX_RANK} are supported",
                           {"input": name, "rank": len(shape), "max_rank": MAX_RANK})
    count = 1
    for dim in shape:
        if dim <= 0:
            raise InvalidInput(f"input {name!r}: shape {list(shape)} has a zero or negative dimension",
                               {"input": name, "shape": list(shape)})
        count *= dim
    return count


class TensorBudget:
    """What the input tensors of one request may declare, judged from their shapes before any data is
    decoded: the first dimension is the batch (at most ``max_rows``), and all inputs together hold at most
    ``max_elements`` elements, so decoding costs at most that much whatever the request claims."""

    def __init__(self, max_rows: int, max_elements: int):
        self.max_rows = max_rows
        self.max_elements = max_elements
        self._left = max_elements

    @classmethod
    def from_limits(cls, limits: LimitSettings) -> TensorBudget:
        return cls(limits.max_batch_rows, limits.max_tensor_elements)

    def claim(self, name: str, shape: Sequence[int], datatype: str | None = None) -> int:
        """The element count of ``shape``, charged to the request; InvalidInput past either limit. A BYTES
        tensor carries one string per row (a text), so it may hold at most ``max_rows`` strings: its elements
        are decoded one by one, and this keeps that walk as short as the batch."""
        count = element_count(name, shape)
        if shape and shape[0] > self.max_rows:
            raise InvalidInput(f"input {name!r}: batch of {shape[0]} rows exceeds the limit of {self.max_rows}",
                               {"input": name, "rows": shape[0], "max_rows": self.max_rows})
        if count > self._left:
            raise InvalidInput(f"input {name!r}: shape {list(shape)} declares {count} elements; a request may carry "
                               f"at most {self.max_elements} in all its inputs",
                               {"input": name, "elements": count, "max_elements": self.max_elements})
        if datatype == "BYTES" and count > self.max_rows:
            raise InvalidInput(f"input {name!r}: BYTES shape {list(shape)} declares {count} strings; a request "
                               f"may carry at most {self.max_rows} (one per row)",
                               {"input": name, "elements": count, "max_strings": self.max_rows})
        self._left -= count
        return count


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview,
             count: int | None = None) -> np.ndarray:
    """A tensor from its raw little-endian bytes (binary extension / raw_input_contents). ``count``: the
    element count a TensorBudget already granted ``shape``."""
    if count is None:
        count = element_count(name, shape)
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
    """``count`` length-prefixed elements, exactly filling ``raw``. The prefixes chain (each says where the
    next one is), so the walk is one step per element: at most ``count`` steps, and ``count`` was bounded
    from the shape before this is called; a short body is refused before the first step."""
    size = len(raw)
    if size < 4 * count:
        raise InvalidInput(f"input {name!r}: {count} BYTES elements need at least {4 * count} bytes of lengths; "
                           f"what the shape declares runs past the data ({size} bytes)",
                           {"input": name, "bytes": size, "elements": count})
    data = bytes(raw)  # one copy: slices of bytes are the element objects themselves
    unpack = _LENGTH.unpack_from
    items: list[bytes] = [b""] * count
    offset = 0
    for index in range(count):
        if offset + 4 > size:
            raise InvalidInput(f"input {name!r}: {index} BYTES elements in the data, expected {count}",
                               {"input": name, "elements": index, "expected": count})
        (length,) = unpack(data, offset)
        start = offset + 4
        offset = start + length
        if offset > size:
            raise InvalidInput(f"input {name!r}: BYTES element {index} runs past the data", {"input": name})
        items[index] = data[start:offset]
    if offset != size:
        raise InvalidInput(f"input {name!r}: {size - offset} bytes of BYTES data after the {count} elements the "
                           "shape declares", {"input": name, "unused_bytes": size - offset, "expected": count})
    array = np.empty(count, dtype=object)
    array[:] = items
    return array
