"""Every kind of bad input gets a clear 4xx with the error body, and the server keeps serving."""

from __future__ import annotations

import pytest

from prediction_service.settings import LimitSettings, Settings
from tests.support.asgi import served_app

ROW = [1.0, 2.0, 3.0, 4.0]
PREDICT = "/v1/models/tiny-regressor/predict"


async def _still_serving(client):
    response = await client.post(PREDICT, json={"instance": ROW})
    assert response.status_code == 200, response.text


def _error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"} and error["message"]
    if code:
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize("payload, status, code, needle", [
    ({"instance": [1.0, 2.0, 3.0]}, 422, "invalid_input", "shape"),
    ({"instance": [[1.0, 2.0, 3.0, 4.0]]}, 422, "invalid_input", "rank"),
    ({"inputs": {"x": [[1, 2, 3, 4], [1, 2, 3]]}}, 422, "invalid_input", "rectangular"),
    ({"instance": ["a", "b", "c", "d"]}, 422, "invalid_input", "numeric"),
    ({"instance": [True, False, True, False]}, 422, "invalid_input", "dtype"),
    ({"instance": [1.0, None, 3.0, 4.0]}, 422, "invalid_input", "numeric"),
    ({"inputs": {"x": []}}, 422, "invalid_input", "rank"),
    ({"instances": []}, 422, "invalid_input", "empty"),
    ({"inputs": {"wrong": [ROW]}}, 422, "invalid_input", "names"),
    ({}, 422, "invalid_input", "schema"),
    ({"instance": ROW, "text": "hello"}, 422, "invalid_input", "schema"),
    ({"instance": ROW, "surprise": 1}, 422, "invalid_input", "schema"),
    ({"text": ["not a text model"]}, 422, "invalid_input", "text"),
    ({"instances": [ROW] * 300}, 422, "invalid_input", "limit"),
])
async def test_bad_payloads(client, payload, status, code, needle):
    error = _error(await client.post(PREDICT, json=payload), status, code)
    assert needle in (error["message"] + str(error["details"])).lower()
    await _still_serving(client)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_nan_and_inf_refused(client, literal):
    body = '{"instance": [1.0, %s, 3.0, 4.0]}' % literal
    response = await client.post(PREDICT, content=body, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]["code"] in ("bad_request", "invalid_input")
    await _still_serving(client)


async def test_malformed_json(client):
    response = await client.post(PREDICT, content=b'{"instance": [1, 2', headers={"content-type": "application/json"})
    _error(response, 400, "bad_request")
    await _still_serving(client)


async def test_empty_body(client):
    _error(await client.post(PREDICT, content=b"", headers={"content-type": "application/json"}), 400)


async def test_wrong_content_type(client):
    response = await client.post(PREDICT, content=b"instance=1", headers={"content-type": "application/x-www-form-urlencoded"})
    _error(response, 415, "unsupported_media_type")
    await _still_serving(client)


async def test_deeply_nested_json(client):
    body = '{"instance": ' + "[" * 5000 + "]" * 5000 + "}"
    response = await client.post(PREDICT, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    await _still_serving(client)


async def test_unknown_model_and_version(client):
    _error(await client.post("/v1/models/no-such-model/predict", json={"instance": ROW}), 404, "model_not_found")
    _error(await client.post(PREDICT, json={"instance": ROW, "version": "9.9.9"}), 404, "version_not_found")
    _error(await client.post(PREDICT, json={"instance": ROW, "stage": "canary"}), 400, "invalid_name")
    _error(await client.get("/v1/models/no-such-model"), 404, "model_not_found")


@pytest.mark.parametrize("name", ["..%2Fetc", "%2e%2e", "UPPER", "a%00b", "tab%09name", "%E2%80%AEevil"])
async def test_path_like_and_control_character_names(client, name):
    response = await client.post(f"/v1/models/{name}/predict", json={"instance": ROW})
    assert response.status_code in (400, 404), response.text
    assert "error" in response.json()
    await _still_serving(client)


async def test_path_like_version(client):
    _error(await client.post(PREDICT, json={"instance": ROW, "version": "../../etc"}), 400, "invalid_name")


async def test_body_over_the_limit_is_413(tiny_store):
    settings = Settings(model_store=tiny_store, limits=LimitSettings(max_request_bytes=2048))
    async with served_app(settings) as (_, http):
        big = {"instances": [ROW] * 400}
        _error(await http.post(PREDICT, json=big), 413, "payload_too_large")

        async def chunked():  # no content-length: the limit is enforced while reading
            yield b'{"instances": ['
            for _ in range(200):
                yield b"[1.0, 2.0, 3.0, 4.0],"
            yield b"[1.0, 2.0, 3.0, 4.0]]}"
        _error(await http.post(PREDICT, content=chunked(), headers={"content-type": "application/json"}), 413)
        assert (await http.post(PREDICT, json={"instance": ROW})).status_code == 200


async def test_bad_deadline_header(client):
    response = await client.post(PREDICT, json={"instance": ROW}, headers={"x-request-deadline-ms": "soon"})
    _error(response, 422, "invalid_input")


async def test_unknown_route_and_method(client):
    _error(await client.get("/v1/nothing-here"), 404, "not_found")
    _error(await client.get(PREDICT), 405, "method_not_allowed")


@pytest.mark.parametrize("payload", [
    {"instance": "1,2,3,4"},
    {"inputs": {"x": "abcd"}},
    {"instance": ["1", "2", "3", "4"]},
    {"inputs": {"x": [["1.0", "2.0", "3.0", "4.0"]]}},
    {"instance": [1.0, 2.0, "3", 4.0]},
    {"instance": [1.0, 2.0, 3.0, {"a": 1}]},
    {"instances": ["1234"]},
    {"instance": {"x": "1234"}},
    {"instance": [1e308, 1.0, 1.0, 1.0]},  # finite in JSON, inf as float32
])
async def test_strings_and_out_of_range_where_numbers_go(client, payload):
    error = _error(await client.post(PREDICT, json=payload), 422, "invalid_input")
    assert error["message"]
    await _still_serving(client)


@pytest.mark.parametrize("field, value", [
    ("version", "1.0.0\x00"), ("version", "1.0.0\n"), ("version", "1.0.0\u202e"), ("version", "\x1b[31m1.0.0"),
    ("stage", "production\n"), ("stage", "prod\u202euction"), ("stage", "production\x00"), ("stage", "\x7f"),
])
async def test_control_characters_in_version_and_stage(client, field, value):
    error = _error(await client.post(PREDICT, json={"instance": ROW, field: value}), 400, "invalid_name")
    assert value not in error["message"] or value.isprintable()  # echoed escaped, never raw
    await _still_serving(client)


@pytest.mark.parametrize("name", ["tiny-regressor%0A", "%1B%5B31m", "tiny%7Fregressor", "tiny%E2%80%8Bregressor",
                                  "%C2%85", "tiny-regressor%00"])
async def test_control_characters_in_model_names(client, name):
    response = await client.post(f"/v1/models/{name}/predict", json={"instance": ROW})
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["code"] in ("invalid_name", "model_not_found", "not_found")
    assert (await client.post(f"/v1/models/{name}/reload")).status_code in (400, 404)
    await _still_serving(client)


@pytest.mark.parametrize("routing_key", ["\x00", "\u202eevil", "\x1b[31mred", "a\nb", "\ud7ff\ufeff", "x" * 256])
async def test_control_characters_in_routing_keys_are_inert(client, routing_key):
    response = await client.post(PREDICT, json={"instance": ROW, "routing_key": routing_key})
    assert response.status_code == 200, response.text  # an opaque key: hashed for A/B routing, never parsed
    assert response.json()["version"] == "1.0.0"


@pytest.mark.parametrize("routing_key", ["x" * 257, 5, ["a"], {"k": 1}])
async def test_bad_routing_keys_are_refused(client, routing_key):
    _error(await client.post(PREDICT, json={"instance": ROW, "routing_key": routing_key}), 422, "invalid_input")
    await _still_serving(client)
