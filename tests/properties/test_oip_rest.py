"""Open Inference Protocol REST (POST /v2/models/{name}[/versions/{version}]/infer) with generated JSON
tensors, BYTES tensors, binary framing (Inference-Header-Content-Length) and gzip / deflate bodies, valid,
broken and junk: every answer is documented, the error body is ``{"error": "..."}``, the server stays
ready, and metrics and the audit log count each request once, as the client got it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st

from prediction_service.preprocessing.bars import preprocess_bars
from prediction_service.modelzoo.datasets import price_bars_step

from .harness import copy_store, run_rest_property, serve
from .strategies import (BAD_NAMES, DIRECTION, ENSEMBLE, HEADLINE, LONG_WINDOW, MODELS, PRICE, ROW, SENTIMENT, TINY,
                         WINDOW, HttpCase, RawInput, broken, broken_raw, bytes_elements, compressed, deadlines,
                         declared_lengths, encode, model_path, mostly, odd_scalars, oip_outputs, oip_parameters,
                         oip_replacements, oip_tensor, tenth, texts, wire_body)

INFER = "/v2/models/{name}/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"
FLAT_WINDOW = np.asarray(WINDOW).reshape(-1).tolist()
NORMALIZED = preprocess_bars(price_bars_step(), WINDOW)


def tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


TENSORS = [
    (TINY, {"inputs": [tensor("x", "FP32", [2, 4], ROW * 2)]}),
    (TINY, {"inputs": [tensor("x", "FP32", [1, 4], [ROW])], "outputs": [{"name": "y"}],
            "parameters": {"stage": "staging", "timeout": 5_000_000}}),
    (TINY, {"inputs": [tensor("x", "FP64", [1, 4], ROW)], "parameters": {"binary_data_output": True}}),
    (PRICE, {"inputs": [tensor("ohlcv", "FP32", [1, 60, 5], NORMALIZED.reshape(-1).tolist())]}),
    (PRICE, {"inputs": [tensor("bars", "FP64", [1, 60, 5], FLAT_WINDOW)], "id": "r-1"}),
    (DIRECTION, {"inputs": [tensor("bars", "FP64", [110, 5], np.asarray(LONG_WINDOW).reshape(-1).tolist())]}),
]
BYTES = [
    (SENTIMENT, {"inputs": [tensor("text", "BYTES", [2], [HEADLINE, "Company warns of losses"])]}),
    (SENTIMENT, {"inputs": [tensor("text", "BYTES", [1, 1], [[HEADLINE]])], "outputs": [{"name": "probabilities"}]}),
    (ENSEMBLE, {"inputs": [tensor("bars", "FP64", [1, 60, 5], FLAT_WINDOW), tensor("text", "BYTES", [1], [HEADLINE])]}),
]

input_names = st.sampled_from(("x", "ohlcv", "features", "bars", "text", "input_ids", "", "nope"))
FREE_JSON = st.one_of(
    st.fixed_dictionaries({"inputs": st.lists(oip_tensor(input_names), min_size=1, max_size=3)},
                          optional={"parameters": st.one_of(oip_parameters, odd_scalars), "outputs": oip_outputs,
                                    "id": st.one_of(texts, odd_scalars)}),
    st.fixed_dictionaries({"inputs": st.one_of(odd_scalars, st.lists(odd_scalars, max_size=2))}),
    odd_scalars)
FREE_BYTES = st.fixed_dictionaries({"inputs": st.lists(oip_tensor(st.just("text")), min_size=1, max_size=2)},
                                   optional={"outputs": oip_outputs})


@st.composite
def target(draw, model: str) -> tuple[str, str]:
    """(decoded name, path): the model's infer route, sometimes another model, a bad name or a version route."""
    model = draw(mostly(model, st.sampled_from(MODELS + BAD_NAMES)))
    template = draw(mostly(INFER, st.sampled_from(("/v2/models/{name}/versions/1.0.0/infer",
                                                   "/v2/models/{name}/versions/9.9.9/infer",
                                                   "/v2/models/{name}/versions/UP/infer"))))
    return model_path(model, template)


@st.composite
def oip_headers(draw, content_type: str | None = "application/json") -> dict[str, str]:
    headers: dict[str, str] = {}
    content_type = draw(mostly(content_type, st.sampled_from((None, "text/plain", "application/octet-stream",
                                                             "application/json")), 9))
    if content_type is not None:
        headers["content-type"] = content_type
    for name, values in (("x-request-deadline-ms", deadlines), ("content-length", declared_lengths)):
        value = draw(values)
        if value is not None:
            headers[name] = value
    return headers


@st.composite
def json_cases(draw, valid: list[tuple[str, Any]], free_form: st.SearchStrategy) -> HttpCase:
    model, document = draw(st.sampled_from(valid))
    document = draw(tenth.flatmap(
        lambda n: st.just(document) if n < 3 else broken(document, replacements=oip_replacements)
        if n < 8 else free_form))
    if isinstance(document, dict):  # unknown output names, bad parameters (timeout, priority, stage ...)
        for key, values in (("outputs", oip_outputs), ("parameters", oip_parameters)):
            value = draw(mostly(None, values, 8))
            if value is not None:
                document = {**document, key: value}
    return HttpCase(*draw(target(model)), draw(wire_body(encode(document))), draw(oip_headers()))


# ---- binary framing --------------------------------------------------------------------------------

BINARY = [
    (TINY, [RawInput("x", "FP32", [2, 4], np.asarray([ROW, ROW], np.float32).tobytes())]),
    (PRICE, [RawInput("bars", "FP64", [1, 60, 5], np.asarray([WINDOW], np.float64).tobytes())]),
    (PRICE, [RawInput("ohlcv", "FP32", [1, 60, 5], NORMALIZED.astype(np.float32).tobytes())]),
    (SENTIMENT, [RawInput("text", "BYTES", [2], bytes_elements([HEADLINE.encode(), "Kurse fallen".encode()]))]),
    (ENSEMBLE, [RawInput("bars", "FP64", [1, 60, 5], np.asarray([WINDOW], np.float64).tobytes()),
                RawInput("text", "BYTES", [1], bytes_elements([HEADLINE.encode()]))]),
]
binary_sizes = st.sampled_from((-1, 0, 1, 2 ** 31, 2 ** 63, 2 ** 70, True, "8", 1.5, None))


@st.composite
def binary_cases(draw) -> HttpCase:
    """A JSON header of Inference-Header-Content-Length bytes, then each input's bytes, with the header
    length, the binary_data_size values, the bytes themselves or the tail wrong now and then."""
    model, inputs = draw(st.sampled_from(BINARY))
    inputs = [draw(broken_raw(raw)) for raw in inputs]
    described = []
    for raw in inputs:
        size = draw(mostly(len(raw.raw), st.one_of(binary_sizes, st.sampled_from((len(raw.raw) - 1,
                                                                                 len(raw.raw) + 1))), 8))
        item: dict[str, Any] = {"name": raw.name, "datatype": raw.datatype, "shape": raw.shape,
                                "parameters": {"binary_data_size": size}}
        if draw(tenth) == 0 and draw(st.booleans()):
            item["data"] = [1.0]  # both data and binary_data_size
        described.append(item)
    document: dict[str, Any] = {"inputs": described}
    for key, values in (("outputs", oip_outputs), ("parameters", oip_parameters)):
        value = draw(mostly(None, values, 7))
        if value is not None:
            document[key] = value
    header = encode(document)
    blob = b"".join(raw.raw for raw in inputs)
    blob = draw(mostly(blob, st.sampled_from((blob[:-1], blob[: len(blob) // 2], blob + b"\x00", b""))))
    length = draw(mostly(str(len(header)), st.sampled_from((
        str(len(header) + 1), str(len(header) - 1), "0", "-1", str(2 ** 63), "1" + "0" * 30, "abc", "", " 12",
        str(len(header) + len(blob) + 1), None)), 7))
    headers = draw(oip_headers("application/octet-stream"))
    if length is not None:
        headers[HEADER_LENGTH] = length
    return HttpCase(*draw(target(model)), header + blob, headers)


# ---- gzip / deflate --------------------------------------------------------------------------------


@st.composite
def compressed_cases(draw) -> HttpCase:
    """A JSON or binary request under a Content-Encoding: good, a bomb, truncated, garbage, a wrong name."""
    case = draw(st.one_of(json_cases(TENSORS + BYTES, FREE_JSON), binary_cases()))
    body, encoding = draw(compressed(case.body))
    headers = {k: v for k, v in case.headers.items() if k != "content-length"}  # of the plain body
    if encoding is not None:
        headers["content-encoding"] = encoding
    return HttpCase(case.model, case.path, body, headers)


@pytest.fixture(scope="module")
def served(property_store_template, tmp_path_factory):
    with serve(copy_store(property_store_template, tmp_path_factory.mktemp("oip-rest"))) as app:
        yield app


def _run(served, caplog, cases: st.SearchStrategy) -> None:
    run_rest_property(served, caplog, cases, oip=True)


def test_json_tensors(served, caplog):
    _run(served, caplog, json_cases(TENSORS, FREE_JSON))


def test_bytes_tensors(served, caplog):
    _run(served, caplog, json_cases(BYTES, FREE_BYTES))


def test_binary_framing(served, caplog):
    _run(served, caplog, binary_cases())


def test_gzip(served, caplog):
    _run(served, caplog, compressed_cases())
