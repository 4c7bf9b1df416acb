"""An ONNX file's structure read from its protobuf wire format, with seeks past the weights.

``onnx.load`` reads the whole file and parses it, weights included: two copies of a model's size in
memory, to learn a few tensor names and shapes. ``graph_interface`` reads only the graph's inputs,
outputs and initializer names; ``write_external_weights_model`` writes a small copy of a model whose
large initializers refer to the original file (ONNX external data, by offset), so ONNX Runtime opens it
without holding the weights twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import InvalidInput

# Field numbers of onnx.proto (ModelProto, GraphProto, TensorProto, SparseTensorProto).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_SPARSE_INITIALIZER = 5, 11, 12, 15
_TENSOR_NAME, _TENSOR_RAW_DATA, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 9, 13, 14
_SPARSE_VALUES = 1
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

EXTERNAL_MIN_BYTES = 64 * 1024
"""Initializers at least this large are referenced in place; smaller ones stay in the small copy."""


@dataclass
class GraphInterface:
    inputs: list = field(default_factory=list)
    """onnx.ValueInfoProto of each graph input."""
    outputs: list = field(default_factory=list)
    initializer_names: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Field:
    number: int
    wire_type: int
    start: int
    """Offset of the field's tag."""
    value_start: int
    """Offset of its payload (length-delimited: the bytes after the length)."""
    end: int


class _Reader:
    def __init__(self, fh: BinaryIO, name: str):
        self.fh, self.name = fh, name

    def _bad(self, why: str) -> InvalidInput:
        return InvalidInput(f"{self.name} is not a readable ONNX model: {why}")

    def varint(self) -> int:
        result = shift = 0
        while True:
            byte = self.fh.read(1)
            if not byte:
                raise self._bad("truncated")
            result |= (byte[0] & 0x7F) << shift
            if byte[0] < 0x80:
                return result
            shift += 7
            if shift > 63:
                raise self._bad("malformed varint")

    def fields(self, start: int, end: int):
        """The fields of the message stored in [start, end), in file order; the reader is left past each."""
        position = start
        while position < end:
            self.fh.seek(position)
            tag = self.varint()
            number, wire_type = tag >> 3, tag & 7
            if wire_type == _VARINT:
                self.varint()
                value_start = self.fh.tell()
                value_end = value_start
            elif wire_type == _LEN:
                length = self.varint()
                value_start = self.fh.tell()
                value_end = value_start + length
            elif wire_type in (_FIXED64, _FIXED32):
                value_start = self.fh.tell()
                value_end = value_start + (8 if wire_type == _FIXED64 else 4)
            else:
                raise self._bad(f"unsupported wire type {wire_type}")
            if value_end > end or number == 0:
                raise self._bad("truncated")
            yield _Field(number, wire_type, position, value_start, value_end)
            position = value_end

    def read(self, start: int, end: int) -> bytes:
        self.fh.seek(start)
        data = self.fh.read(end - start)
        if len(data) != end - start:
            raise self._bad("truncated")
        return data

    def varint_at(self, position: int) -> int:
        self.fh.seek(position)
        return self.varint()


class UnusualLayout(Exception):
    """A valid but unusual file (its graph in several pieces, which protobuf merges): read it whole instead."""


def _graph_field(reader: _Reader, size: int) -> _Field:
    graphs = [f for f in reader.fields(0, size) if f.number == _MODEL_GRAPH and f.wire_type == _LEN]
    if not graphs:
        raise reader._bad("it has no graph")
    if len(graphs) > 1:
        raise UnusualLayout(reader.name)
    return graphs[0]


def _tensor_name(reader: _Reader, tensor: _Field) -> str:
    names = [f for f in reader.fields(tensor.value_start, tensor.end) if f.number == _TENSOR_NAME]
    return reader.read(names[-1].value_start, names[-1].end).decode("utf-8", "replace") if names else ""


def graph_interface(path: Path) -> GraphInterface:
    """The inputs, outputs and initializer names of ``path``'s graph; memory: those entries, not the weights.
    InvalidInput when it is not an ONNX model; UnusualLayout when it must be parsed whole."""
    import onnx

    path = Path(path)
    found = GraphInterface()
    with open(path, "rb") as fh:
        reader = _Reader(fh, path.name)
        graph = _graph_field(reader, os.fstat(fh.fileno()).st_size)
        for item in reader.fields(graph.value_start, graph.end):
            if item.wire_type != _LEN:
                continue
            if item.number in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                value = onnx.ValueInfoProto()
                try:
                    value.ParseFromString(reader.read(item.value_start, item.end))
                except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
                    raise reader._bad(str(exc)) from exc
                (found.inputs if item.number == _GRAPH_INPUT else found.outputs).append(value)
            elif item.number == _GRAPH_INITIALIZER:
                found.initializer_names.add(_tensor_name(reader, item))
            elif item.number == _GRAPH_SPARSE_INITIALIZER:
                values = [f for f in reader.fields(item.value_start, item.end) if f.number == _SPARSE_VALUES]
                if values:
                    found.initializer_names.add(_tensor_name(reader, values[-1]))
    return found


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _external_tensor(reader: _Reader, tensor: _Field, data_name: str) -> bytes | None:
    """The tensor with its raw data referenced in ``data_name`` at its offset, or None to keep it as it is."""
    parts, raw = [], None
    for item in reader.fields(tensor.value_start, tensor.end):
        if item.number in (_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION):
            return None  # already external: not ours to move
        if item.number == _TENSOR_RAW_DATA and item.wire_type == _LEN:
            raw = item
        else:
            parts.append(reader.read(item.start, item.end))
    if raw is None or raw.end - raw.value_start < EXTERNAL_MIN_BYTES:
        return None
    for key, value in (("location", data_name), ("offset", str(raw.value_start)),
                       ("length", str(raw.end - raw.value_start))):
        parts.append(_len_field(_TENSOR_EXTERNAL_DATA, _len_field(1, key.encode()) + _len_field(2, value.encode())))
    parts.append(_encode_varint(_TENSOR_DATA_LOCATION << 3 | _VARINT) + _encode_varint(_EXTERNAL))
    return b"".join(parts)


def write_external_weights_model(path: Path, target: Path, data_name: str) -> bool:
    """Write to ``target`` a copy of ``path`` whose large initializers are read from ``data_name`` (a file
    beside ``target`` holding ``path``'s bytes, e.g. a hard link) at their offsets. False, and nothing
    written, when no initializer is large enough to be worth it. Raises as ``graph_interface``."""
    path = Path(path)
    with open(path, "rb") as fh:
        reader = _Reader(fh, path.name)
        size = os.fstat(fh.fileno()).st_size
        graph = _graph_field(reader, size)
        graph_parts, moved = [], 0
        for item in reader.fields(graph.value_start, graph.end):
            replaced = None
            if item.number == _GRAPH_INITIALIZER and item.wire_type == _LEN:
                replaced = _external_tensor(reader, item, data_name)
            if replaced is None:
                graph_parts.append(reader.read(item.start, item.end))
            else:
                graph_parts.append(_len_field(_GRAPH_INITIALIZER, replaced))
                moved += 1
        if not moved:
            return False
        model_parts = [reader.read(f.start, f.end) for f in reader.fields(0, size) if f.start != graph.start]
    with open(target, "wb") as out:
        for part in model_parts:
            out.write(part)
        out.write(_len_field(_MODEL_GRAPH, b"".join(graph_parts)))
    return True
