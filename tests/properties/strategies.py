"""Hypothesis strategies for requests to every front door: valid requests for the served registry, the
same with one or two things broken (a replaced, dropped, duplicated or wrapped field), free-form junk,
and the wire-level mistakes (bytes, headers, framing) applied after encoding.
"""

from __future__ import annotations

import copy
import gzip
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from hypothesis import strategies as st

from prediction_service.modelzoo.synthetic import synthetic_ohlcv

from .harness import MAX_REQUEST_BYTES

TINY = "tiny-regressor"
PRICE = "lstm-price"          # bars (a 60-bar window) -> price
DIRECTION = "cnn-lstm-direction"  # bars (>= 110 bars) -> down / flat / up
SENTIMENT = "sentiment-transformer"  # text -> negative / neutral / positive
ENSEMBLE = "price-sentiment"  # bars + text
MODELS = (TINY, PRICE, DIRECTION, SENTIMENT, ENSEMBLE)
BAD_NAMES = ("no-such-model", "UPPER", "a..b", "-lead", "x" * 200, "tiny-regressor.", "%E2%80%AE", "a%00b")
"""Names that reach the model routes but name no model (or no valid one)."""

ROW = [1.0, 2.0, 3.0, 4.0]
WINDOW = synthetic_ohlcv(60, seed=5).tolist()
LONG_WINDOW = synthetic_ohlcv(110, seed=6).tolist()
COLUMNS = dict(zip(("open", "high", "low", "close", "volume"), map(list, zip(*WINDOW))))
HEADLINE = "Shares rally after strong earnings beat"

# ---- JSON values --------------------------------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
numbers = st.one_of(finite, st.integers(-1000, 1000))
odd_scalars = st.sampled_from([None, True, False, "1.5", "", "NaN", "abc", {}, {"a": 1}, [], [[]], 2 ** 64,
                               -(2 ** 63) - 1, 2 ** 70, 1e308, -1e308, 5e-324, 0, -0.0])
texts = st.text(max_size=40)


def _nest(flat: list[Any], shape: list[int]) -> Any:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat[:shape[0]]
    step = math.prod(shape[1:])
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


@st.composite
def shaped(draw, element=numbers, max_rank: int = 4, max_dim: int = 6, max_size: int = 120) -> Any:
    """A rectangular nested list of a random shape (rank 0 is a bare scalar)."""
    rank = draw(st.integers(0, max_rank))
    shape = draw(st.lists(st.integers(0, max_dim), min_size=rank, max_size=rank)
                 .filter(lambda s: math.prod(s) <= max_size))
    size = math.prod(shape)
    if size == 0 and shape:
        return _empty(shape)
    return _nest(draw(st.lists(element, min_size=size, max_size=size)), shape)


def _empty(shape: list[int]) -> list[Any]:
    """Nested lists of a shape with a zero dimension: the nesting down to the first empty one."""
    return [] if shape[0] == 0 else [_empty(shape[1:]) for _ in range(shape[0])]


def deep(depth: int, leaf: Any = 1.0) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


tensor_values = st.one_of(
    shaped(),
    shaped(st.one_of(numbers, odd_scalars)),
    st.lists(st.lists(finite, max_size=6), min_size=2, max_size=5),  # ragged
    st.integers(15, 40).map(deep),
    odd_scalars,
    texts,
)
"""What a tensor might be sent as: numbers of any shape, mixed with junk, ragged, too deep, not a list."""

replacements = st.one_of(odd_scalars, numbers, texts, tensor_values, st.lists(texts, max_size=4),
                         st.dictionaries(texts, odd_scalars, max_size=3))


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths.extend(_paths(item, prefix + (key,)))
    elif isinstance(value, list):
        # long lists (bar windows): their first, last and one middle element are enough to break
        indexes = range(len(value)) if len(value) <= 6 else (0, 1, len(value) // 2, len(value) - 1)
        for index in indexes:
            paths.extend(_paths(value[index], prefix + (index,)))
    return paths


def _get(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


@st.composite
def broken(draw, base: Any, max_mutations: int = 2, replacements: st.SearchStrategy = replacements) -> Any:
    """``base`` with one or two of its nodes replaced (by a draw from ``replacements``), dropped,
    duplicated, wrapped in a list or cut."""
    value = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, max_mutations))):
        path = draw(st.sampled_from(_paths(value)))
        action = draw(st.sampled_from(("replace", "replace", "drop", "duplicate", "wrap", "cut", "add_key")))
        if not path:  # the whole document
            value = draw(replacements) if action == "replace" else [value] if action == "wrap" else value
            continue
        parent, key = _get(value, path[:-1]), path[-1]
        if action == "replace":
            parent[key] = draw(replacements)
        elif action == "drop":
            del parent[key]
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif action == "wrap":
            parent[key] = [parent[key]]
        elif action == "cut" and isinstance(parent[key], list):
            parent[key] = parent[key][:draw(st.integers(0, max(0, len(parent[key]) - 1)))]
        elif action == "add_key" and isinstance(parent[key], dict):
            parent[key][draw(st.sampled_from(("surprise", "inputs", "text", "bars", "version", "")))] = \
                draw(replacements)
    return value


tenth = st.sampled_from(range(10))
"""0-9, uniformly (st.integers favours small values, which would make "rarely" rarer than asked)."""


def mostly(usual: Any, unusual: st.SearchStrategy, tenths: int = 8) -> st.SearchStrategy:
    """``usual`` in ``tenths`` of the examples, else a draw from ``unusual``: one broken thing at a time
    is likelier to get past the checks before it."""
    return tenth.flatmap(lambda n: st.just(usual) if n < tenths else unusual)


def either(valid: list[Any], free_form: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """A valid document, one with something broken, or (given) a free-form one."""
    choices = [st.sampled_from(valid), st.sampled_from(valid).flatmap(broken)]
    if free_form is not None:
        choices.append(free_form)
    return st.one_of(*choices)


# ---- selector and header values ------------------------------------------------------------------

versions = st.sampled_from([None, "1.0.0", "2.0.0", "9.9.9", "../../etc", "", "1.0.0\n", "v" * 200, 5,
                            ["1.0.0"], "1.0.0\x00"])
stages = st.sampled_from([None, "production", "staging", "canary", "", "production\n", "x" * 40, 7,
                          {"stage": "production"}])
routing_keys = st.sampled_from([None, "k", "\u202eevil", "x" * 300, 5, ["a"]])
deadlines = mostly(None, st.sampled_from(["1000", "5000", "soon", "", "0", "-1", "nan", "inf", "-inf",
                             "1e309", "600001", "0.000001", "1e-12", " 250 ", "0x10", "1,000", "99999999999"]))
"""X-Request-Deadline-Ms values: absent, fine, not a number, not positive, past the maximum, tiny."""


@st.composite
def selector_fields(draw, version_key: str = "version") -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, values in ((version_key, versions), ("stage", stages), ("routing_key", routing_keys)):
        value = draw(mostly(None, values, 6))
        if value is not None:
            fields[key] = value
    return fields


# ---- encoding and wire-level mistakes ------------------------------------------------------------


@dataclass(frozen=True)
class HttpCase:
    """One POST as sent: path, headers and the exact body bytes, for ``model`` (the name the server
    decodes from the path, which metrics and the audit log count it under)."""

    model: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # falsifying examples stay readable with big bodies
        shown = self.body if len(self.body) <= 600 else self.body[:300] + b"..." + self.body[-100:]
        return f"HttpCase(path={self.path!r}, headers={self.headers!r}, body[{len(self.body)}]={shown!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # what hypothesis prints
        printer.text(repr(self))


def model_path(model: str, template: str) -> tuple[str, str]:
    """(the decoded name, the path) for a name as it is written into ``template``'s ``{name}``."""
    return unquote(model), template.format(name=model)


def encode(value: Any) -> bytes:
    """JSON as the stdlib writes it (big integers and all), UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@st.composite
def wire_body(draw, body: bytes) -> bytes:
    """The encoded body, usually as is, else truncated, with invalid UTF-8, NaN, too deep, oversized, empty."""
    how = draw(mostly("as_is", st.sampled_from(("truncate", "invalid_utf8", "nan", "deep", "deep_objects",
                                                "oversized", "empty", "not_json", "bom", "trailing"))))
    if how == "truncate":
        return body[:draw(st.integers(0, max(0, len(body) - 1)))]
    if how == "invalid_utf8":
        at = draw(st.integers(0, len(body)))
        return body[:at] + draw(st.sampled_from((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc"))) + body[at:]
    if how == "nan":
        return body.replace(b"1.0", b"NaN", 1) if b"1.0" in body else b'{"instance":[NaN,1,2,3]}'
    if how == "deep":
        depth = draw(st.sampled_from((17, 64, 1100, 30000)))
        return b'{"instance":' + b"[" * depth + b"1" + b"]" * depth + b"}"
    if how == "deep_objects":
        depth = draw(st.sampled_from((17, 600, 5000)))
        return b'{"a":' * depth + b"1" + b"}" * depth
    if how == "oversized":
        return body + b" " * (MAX_REQUEST_BYTES + 1 - len(body)) if len(body) <= MAX_REQUEST_BYTES else body
    if how == "empty":
        return b""
    if how == "not_json":
        return draw(st.sampled_from((b"instance=1", b"\x00\x01\x02", b"{", b"]", b"null", b"[]", b'"x"', b"1e999")))
    if how == "bom":
        return b"\xef\xbb\xbf" + body
    if how == "trailing":
        return body + b"}garbage"
    return body


content_types = mostly("application/json", st.sampled_from((
    None, "", "text/plain", "APPLICATION/JSON", "application/json; charset=utf-8",
    "application/x-www-form-urlencoded", "application/octet-stream")), 9)
declared_lengths = mostly(None, st.sampled_from((str(MAX_REQUEST_BYTES + 1), str(2 ** 63), "1" + "0" * 30,
                                                 "abc", "-5")), 9)
"""A Content-Length header other than the body's own: a huge declared size over a small body, or junk."""


@st.composite
def json_headers(draw, json_type: bool = True) -> dict[str, str]:
    headers: dict[str, str] = {}
    content_type = draw(content_types) if json_type else None
    if content_type is not None:
        headers["content-type"] = content_type
    deadline = draw(deadlines)
    if deadline is not None:
        headers["x-request-deadline-ms"] = deadline
    declared = draw(declared_lengths)
    if declared is not None:
        headers["content-length"] = declared
    return headers


# ---- gzip ---------------------------------------------------------------------------------------------


@st.composite
def compressed(draw, body: bytes) -> tuple[bytes, str | None]:
    """``body`` under a Content-Encoding: gzip / deflate, a bomb, truncated, garbage, or a wrong name."""
    how = draw(st.sampled_from(("gzip", "gzip", "deflate", "none", "bomb", "truncated", "garbage", "trailing",
                                "wrong_name", "plain_claimed_gzip", "double")))
    if how == "gzip":
        return gzip.compress(body, mtime=0), draw(st.sampled_from(("gzip", "GZIP", "gzip")))
    if how == "deflate":
        return zlib.compress(body), "deflate"
    if how == "none":
        return body, draw(st.sampled_from((None, "identity")))
    if how == "bomb":  # small on the wire, far past the limit once inflated
        return gzip.compress(body + b" " * draw(st.sampled_from((MAX_REQUEST_BYTES, 50 * MAX_REQUEST_BYTES))),
                             mtime=0), "gzip"
    if how == "truncated":
        data = gzip.compress(body, mtime=0)
        return data[:draw(st.integers(0, len(data) - 1))], "gzip"
    if how == "garbage":
        return draw(st.binary(max_size=64)), draw(st.sampled_from(("gzip", "deflate")))
    if how == "trailing":
        return gzip.compress(body, mtime=0) + draw(st.binary(min_size=1, max_size=16)), "gzip"
    if how == "wrong_name":
        return gzip.compress(body, mtime=0), draw(st.sampled_from(("br", "zstd", "gzip, deflate", "x-gzip", "")))
    if how == "plain_claimed_gzip":
        return body, "gzip"
    return gzip.compress(gzip.compress(body, mtime=0), mtime=0), "gzip"


# ---- Open Inference Protocol tensors -------------------------------------------------------------

DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES")
datatypes = st.one_of(st.sampled_from(DATATYPES), st.sampled_from(("FP128", "fp32", "", "STRING", "TYPE_FP32")))
huge_dims = st.sampled_from((2 ** 31, 2 ** 32 + 1, 2 ** 40, 2 ** 62, 2 ** 63 - 1))
shapes = st.one_of(
    st.lists(st.integers(-3, 8), max_size=5),
    st.lists(st.one_of(huge_dims, st.integers(0, 3)), min_size=1, max_size=4),  # huge declared sizes
    st.integers(2, 70).map(lambda rank: [1] * rank),  # rank past numpy's 32 dimensions
    st.integers(2, 70).map(lambda rank: [0] + [2 ** 20] * (rank - 1)),  # empty, yet huge in every other dim
)
"""Shapes that fit an int64 (so gRPC can carry them): wrong, huge, negative, zero, rank > 32."""
json_shapes = st.one_of(shapes, shapes, st.lists(st.sampled_from((2 ** 64, 2 ** 70, -(2 ** 63) - 1, 1.5, "3", True,
                                                                  None)), min_size=1, max_size=3), odd_scalars)
element_of = {"BOOL": st.booleans(), "BYTES": texts, **{t: st.integers(0, 255) for t in DATATYPES if t[0] == "U"},
              **{t: st.integers(-100, 100) for t in DATATYPES if t.startswith("INT")}}


def _count(shape: Any) -> int | None:
    """Elements of a valid shape, when few enough to send; None otherwise."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        return None
    count = math.prod(shape)
    return count if count <= 200 else None


@st.composite
def oip_tensor(draw, names: st.SearchStrategy) -> dict[str, Any]:
    """An OIP JSON input: a name, a datatype and a shape, and mostly the right number of values for them
    (so what follows the element count is reached: the reshape, the signature), else any data."""
    datatype, shape = draw(datatypes), draw(json_shapes)
    count = _count(shape)
    if count is not None and draw(tenth) < 7:
        data = draw(st.lists(element_of.get(datatype, finite), min_size=count, max_size=count))
    else:
        data = draw(tensor_values)
    tensor: dict[str, Any] = {"name": draw(names), "datatype": datatype, "shape": shape, "data": data}
    if draw(tenth) == 0:
        tensor["parameters"] = draw(st.one_of(odd_scalars, st.fixed_dictionaries(
            {"binary_data_size": st.one_of(st.integers(-2, 64), odd_scalars)})))
    return tensor


oip_parameter_values = st.one_of(odd_scalars, st.sampled_from((0, 1, 10 ** 6, -1, 2 ** 70, 1.5, "10", True,
                                                               "production", "staging", "canary")))
oip_parameters = st.dictionaries(st.sampled_from(("timeout", "priority", "stage", "routing_key",
                                                  "binary_data_output", "sequence_id", "")),
                                 oip_parameter_values, max_size=3)
"""Request parameters with wrong types and values: timeout (microseconds), priority, stage, routing key."""
oip_outputs = mostly(None, odd_scalars, 8).flatmap(lambda junk: st.just(junk) if junk is not None else st.lists(
    st.fixed_dictionaries({"name": st.sampled_from(("nope", "y", "price", "probabilities", "", "x"))},
                          optional={"parameters": st.one_of(odd_scalars, st.dictionaries(
                              st.sampled_from(("binary_data", "classification", "shared_memory_region")),
                              odd_scalars, max_size=2))}), min_size=1, max_size=3))
"""Requested outputs: unknown names, bad parameters, not a list."""
oip_replacements = st.one_of(replacements, json_shapes, datatypes, oip_parameters, oip_outputs)


# ---- raw tensor bytes (the binary extension, gRPC raw_input_contents) -------------------------------


def bytes_elements(items: list[bytes]) -> bytes:
    """BYTES on the wire: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


@dataclass(frozen=True)
class RawInput:
    name: str
    datatype: Any
    shape: Any
    raw: bytes


non_utf8 = st.sampled_from((b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"caf\xe9", b"\x80"))


@st.composite
def broken_raw(draw, tensor: RawInput) -> RawInput:
    """The tensor, or one thing about it wrong: its bytes cut, extended or replaced, a BYTES element not
    UTF-8 or with a length past the data, another datatype or shape."""
    how = draw(mostly("as_is", st.sampled_from(("cut", "extend", "random", "non_utf8", "bad_length", "datatype",
                                               "shape")), 6))
    raw = tensor.raw
    if how == "cut":
        return RawInput(tensor.name, tensor.datatype, tensor.shape, raw[:draw(st.integers(0, max(0, len(raw) - 1)))])
    if how == "extend":
        return RawInput(tensor.name, tensor.datatype, tensor.shape, raw + draw(st.binary(min_size=1, max_size=9)))
    if how == "random":
        return RawInput(tensor.name, tensor.datatype, tensor.shape, draw(st.binary(max_size=64)))
    if how == "non_utf8":
        count = _count(tensor.shape) or 1
        items = [draw(non_utf8) for _ in range(count)]
        return RawInput(tensor.name, "BYTES", tensor.shape, bytes_elements(items))
    if how == "bad_length":
        length = draw(st.sampled_from((2 ** 31, 2 ** 32 - 1, len(raw) + 1)))
        return RawInput(tensor.name, "BYTES", tensor.shape, struct.pack("<I", length) + b"abc")
    if how == "datatype":
        return RawInput(tensor.name, draw(datatypes), tensor.shape, raw)
    if how == "shape":
        return RawInput(tensor.name, tensor.datatype, draw(shapes), raw)
    return tensor
