"""Open Inference Protocol decoding is bounded by the declared shapes before any tensor data is read: a huge
claim, a shape numpy cannot build (rank over 32, zero or negative dimensions) or data that does not match
are 422 with OIP's error body, counted in the metrics, and cost no traceback in the log."""

from __future__ import annotations

import logging

import numpy as np
import orjson
import pytest
from fastapi import APIRouter, Request
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from prediction_service.api.direct_route import DirectRoute
from prediction_service.api.errors import install_error_handlers
from prediction_service.api.hot_path import ServingApp
from prediction_service.oip.rest_codec import HEADER_LENGTH, decode_infer_request
from prediction_service.errors import InvalidInput
from prediction_service.oip.datatypes import MAX_RANK, TensorBudget, from_raw, to_raw
from prediction_service.settings import LimitSettings, Settings
from tests.support.asgi import asgi_client, served_app

LIMITS = LimitSettings()
INFER = "/v2/models/tiny-regressor/infer"
MILLION = 1_000_000


def binary_request(name: str, datatype: str, shape: list[int], payload: bytes) -> tuple[bytes, str]:
    header = orjson.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                                       "parameters": {"binary_data_size": len(payload)}}]})
    return header + payload, str(len(header))


def json_request(shape: list[int], data: list) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": data}]})


def refusal(call) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        call()
    return caught.value


# ---- the codec on its own ----------------------------------------------------------------------------


def test_a_million_empty_strings_are_refused_by_their_shape():
    body, header = binary_request("text", "BYTES", [MILLION], b"\0\0\0\0" * MILLION)
    error = refusal(lambda: decode_infer_request(body, header, LIMITS))
    assert "batch of 1000000 rows exceeds the limit of 256" in error.message
    # the same claim over 256 rows: the element limit, whatever the rows
    body, header = binary_request("text", "BYTES", [250, 4000], b"\0\0\0\0" * MILLION)
    error = refusal(lambda: decode_infer_request(body, header, LIMITS))
    assert "declares 1000000 elements" in error.message and f"at most {LIMITS.max_tensor_elements}" in error.message


@pytest.mark.parametrize("datatype", ["BYTES", "FP32", "INT64"])
def test_a_huge_claim_with_a_short_body_is_refused_by_the_shape_alone(datatype):
    # ten billion elements declared over 4 bytes: a refusal that read the data would say the data is short
    body, header = binary_request("x", datatype, [1, 10**10], b"\0\0\0\0")
    error = refusal(lambda: decode_infer_request(body, header, LIMITS))
    assert "declares 10000000000 elements" in error.message
    assert error.details == {"input": "x", "elements": 10**10, "max_elements": LIMITS.max_tensor_elements}


def test_a_bytes_tensor_holds_at_most_one_string_per_row():
    body, header = binary_request("text", "BYTES", [2, 200], b"\0\0\0\0" * 400)
    error = refusal(lambda: decode_infer_request(body, header, LIMITS))
    assert "declares 400 strings" in error.message and error.details["max_strings"] == LIMITS.max_batch_rows
    body, header = binary_request("text", "BYTES", [2, 128], b"\0\0\0\0" * 256)
    assert decode_infer_request(body, header, LIMITS).inputs["text"].shape == (2, 128)


def test_a_bytes_count_the_data_cannot_hold_is_refused_before_any_element():
    error = refusal(lambda: from_raw("t", "BYTES", [MILLION], b"\0\0\0\0" * 10))
    assert "1000000 BYTES elements need at least 4000000 bytes" in error.message
    assert "3 BYTES elements in the data, expected 4" in refusal(lambda: from_raw("t", "BYTES", [4], b"\1\0\0\0a" * 3
                                                                                 + b"\0\0\0")).message
    assert "bytes of BYTES data after the 2 elements" in refusal(
        lambda: from_raw("t", "BYTES", [2], to_raw(np.array([b"a", b"b", b"c"], dtype=object)))).message
    assert "element 1 runs past the data" in refusal(
        lambda: from_raw("t", "BYTES", [2], b"\1\0\0\0a" + b"\xff\0\0\0abc")).message


def test_the_budget_counts_every_input_of_a_request():
    budget = TensorBudget(max_rows=256, max_elements=1000)
    assert budget.claim("a", [10, 50]) == 500
    assert budget.claim("b", [1, 500]) == 500
    assert "at most 1000 in all its inputs" in refusal(lambda: budget.claim("c", [1])).message
    two = [{"name": name, "datatype": "FP32", "shape": [200, 1024], "data": [0.0] * (200 * 1024)} for name in "ab"]
    error = refusal(lambda: decode_infer_request(orjson.dumps({"inputs": two}), None, LIMITS))
    assert "input 'b'" in error.message and "declares 204800 elements" in error.message


@pytest.mark.parametrize("shape, needle", [
    ([1] * (MAX_RANK + 1), "shape has 33 dimensions, at most 32"),
    ([1] * 100_000, "shape has 100000 dimensions"),
    ([0, 4], "zero or negative dimension"),
    ([1, -4], "zero or negative dimension"),
    ([-1, -1], "zero or negative dimension"),
], ids=["rank-33", "rank-100000", "zero", "negative", "both-negative"])
def test_shapes_numpy_cannot_build_are_invalid_input(shape, needle):
    assert needle in refusal(lambda: decode_infer_request(json_request(shape, [1.0]), None, LIMITS)).message
    body, header = binary_request("x", "FP32", shape, b"\0\0\0\0")
    assert needle in refusal(lambda: decode_infer_request(body, header, LIMITS)).message


def test_too_many_inputs_or_outputs_are_refused_before_any_is_read():
    inputs = [{"name": f"x{i}", "datatype": "FP32", "shape": [1], "data": [1.0]} for i in range(65)]
    assert "65 inputs exceed the limit of 64" in refusal(
        lambda: decode_infer_request(orjson.dumps({"inputs": inputs}), None, LIMITS)).message
    document = {"inputs": inputs[:1], "outputs": [{"name": f"y{i}"} for i in range(1000)]}
    assert "1000 requested outputs exceed the limit of 64" in refusal(
        lambda: decode_infer_request(orjson.dumps(document), None, LIMITS)).message


def test_json_data_longer_than_its_shape_is_refused():
    assert "5 values of data for shape [1, 4]" in refusal(
        lambda: decode_infer_request(json_request([1, 4], [1.0] * 5), None, LIMITS)).message
    text = {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1, 2], "data": [["a", "b", "c"]]}]}
    assert "more than 2 strings" in refusal(lambda: decode_infer_request(orjson.dumps(text), None, LIMITS)).message
    nested = {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2], "data": [[[[[]]]]] * 50 + ["a", "b"]}]}
    assert "not nested like its shape" in refusal(
        lambda: decode_infer_request(orjson.dumps(nested), None, LIMITS)).message


WORDS = [b"", b"rally", "caf\u00e9 \u2603 \u00fcber".encode(), b"\0\0nul\0", "\u6570\u636e".encode(), b"x" * 70_000, b""]


@pytest.mark.parametrize("words", [WORDS, [b""] * 1000, [b"same"] * 7, ["\u00e9".encode() * 3]],
                         ids=["mixed", "empty", "fixed-width", "non-ascii"])
def test_bytes_decoding_round_trips_exactly(words):
    array = np.empty(len(words), dtype=object)
    array[:] = words
    raw = to_raw(array)
    assert raw == serialize_byte_tensor(array).item()  # the wire form tritonclient writes
    decoded = from_raw("t", "BYTES", [len(words)], raw)
    assert decoded.dtype == object and decoded.tolist() == words
    assert all(type(item) is bytes for item in decoded)
    assert deserialize_bytes_tensor(raw).tolist() == decoded.tolist()  # and reads
    shaped = from_raw("t", "BYTES", [1, len(words)], memoryview(raw))
    assert shaped.shape == (1, len(words)) and shaped.reshape(-1).tolist() == words


def test_bytes_over_both_rest_framings_decode_alike():
    words = ["shares rally", "", "profit warning \u2639"]
    body, header = binary_request("t", "BYTES", [3], to_raw(np.array([w.encode() for w in words], dtype=object)))
    binary = decode_infer_request(body, header, LIMITS).inputs["t"]
    document = {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [3], "data": words}]}
    assert binary.tolist() == decode_infer_request(orjson.dumps(document), None, LIMITS).inputs["t"].tolist()


# ---- over the app ------------------------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and set(labels.items()) <= set(sample.labels.items()))


def bad_requests() -> list[tuple[bytes, dict[str, str], str]]:
    """(body, headers, message) of requests refused while decoding, over JSON and the binary framing."""
    million, million_header = binary_request("x", "BYTES", [MILLION], b"\0\0\0\0" * MILLION)
    rank_body, rank_header = binary_request("x", "FP32", [1] * 33, b"\0\0\0\0")
    zero_body, zero_header = binary_request("x", "FP32", [0, 4], b"")
    negative_body, negative_header = binary_request("x", "FP32", [-2, 4], b"\0" * 32)
    return [
        (million, {HEADER_LENGTH: million_header}, "batch of 1000000 rows exceeds the limit of 256"),
        (rank_body, {HEADER_LENGTH: rank_header}, "shape has 33 dimensions"),
        (zero_body, {HEADER_LENGTH: zero_header}, "zero or negative dimension"),
        (negative_body, {HEADER_LENGTH: negative_header}, "zero or negative dimension"),
        (json_request([1] * 33, [1.0]), {}, "shape has 33 dimensions"),
        (json_request([1, 0], []), {}, "zero or negative dimension"),
        (json_request([-1, 4], [1.0] * 4), {}, "zero or negative dimension"),
    ]


async def test_bad_shapes_are_422_counted_audited_and_never_logged(tiny_store, caplog):
    from prediction_service.monitoring.audit import AuditReader, audit_db_path

    settings = Settings(model_store=tiny_store)
    cases = bad_requests()
    rounds = 50 // len(cases) + 1
    caplog.set_level(logging.INFO)
    request_ids = []
    async with served_app(settings, metrics_registry=CollectorRegistry()) as (_, http):
        caplog.clear()  # what the requests log, not the startup
        for _ in range(rounds):
            for body, headers, needle in cases:
                response = await http.post(INFER, content=body, headers=headers)
                assert response.status_code == 422, response.text
                assert set(response.json()) == {"error"} and needle in response.json()["error"]
                request_ids.append(response.headers["X-Request-Id"])
        good = await http.post(INFER, json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                                        "data": [1.0, 2.0, 3.0, 4.0]}]})
        assert good.status_code == 200 and good.json()["outputs"][0]["data"] == [31.0]
        text = (await http.get("/metrics")).text
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert not any(r.exc_info for r in caplog.records)
    sent = rounds * len(cases)
    # refused before a version was resolved: counted, under the model label of unresolved requests
    assert metric(text, "prediction_requests_total", status="422") == sent
    assert metric(text, "prediction_errors_total", code="invalid_input") == sent
    assert metric(text, "prediction_requests_total", status="500") == 0
    reader = AuditReader(audit_db_path(settings))  # the lifespan's end flushed the writer
    for request_id in request_ids[:len(cases)]:
        entry = reader.request(request_id)
        assert (entry.model, entry.status) == ("tiny-regressor", 422)


class ExplodingRouteError(RuntimeError):
    """Raised by the test route below: an error no handler maps, as a bug would raise."""


async def test_an_unexpected_error_logs_one_line_and_one_traceback_per_interval(caplog):
    router = APIRouter(route_class=DirectRoute)

    @router.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> None:
        raise ExplodingRouteError(f"model {name} broke")

    app = ServingApp()
    install_error_handlers(app)
    app.include_router(router)
    caplog.set_level(logging.INFO)
    async with asgi_client(app, lifespan=False) as http:
        for _ in range(50):
            response = await http.post(INFER, content=b"{}")
            assert response.status_code == 500 and response.json() == {"error": "internal server error"}
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(logged) == 2, [r.getMessage() for r in logged]
    line, traceback = sorted(logged, key=lambda r: r.levelno)
    assert "ExplodingRouteError: model tiny-regressor broke" in line.getMessage() and not line.exc_info
    assert traceback.exc_info and traceback.exc_info[0] is ExplodingRouteError
