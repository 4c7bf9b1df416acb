"""JSON bodies over LIMIT_JSON_OFFLOAD_BYTES are parsed in a worker thread, small ones inline; the size and
depth limits hold either way (413 before the body is read when its declared length is too large, 400 when
it is nested too deeply)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from starlette.requests import Request

from prediction_service.api.body import read_json
from prediction_service.errors import BadRequest, PayloadTooLarge
from prediction_service.settings import LimitSettings, Settings
from tests.support.asgi import served_app

ROW = [1.0, 2.0, 3.0, 4.0]
PREDICT = "/v1/models/tiny-regressor/predict"
LIMITS = LimitSettings(json_offload_bytes=64 * 1024)


class RecordingExecutor(ThreadPoolExecutor):
    """The loop's default executor (what asyncio.to_thread runs on), remembering which thread ran each job."""

    def __init__(self):
        super().__init__(max_workers=2)
        self.threads: list[int] = []

    def submit(self, fn: Callable, /, *args, **kwargs):
        def run():
            self.threads.append(threading.get_ident())
            return fn(*args, **kwargs)
        return super().submit(run)


@pytest.fixture
async def executor():
    recording = RecordingExecutor()
    asyncio.get_running_loop().set_default_executor(recording)
    yield recording


def json_request(body: bytes, *, declared: bool = True, chunk: int = 16 * 1024) -> Request:
    """A request whose body arrives in ``chunk``-byte messages, with or without its Content-Length."""
    headers = [(b"content-type", b"application/json")]
    if declared:
        headers.append((b"content-length", str(len(body)).encode()))
    messages = [{"type": "http.request", "body": body[i:i + chunk], "more_body": i + chunk < len(body)}
                for i in range(0, len(body), chunk)] or [{"type": "http.request", "body": b""}]

    async def receive():
        return messages.pop(0)

    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)


def unread_request(declared_length: int) -> Request:
    async def receive():
        raise AssertionError("the body was read")

    headers = [(b"content-type", b"application/json"), (b"content-length", str(declared_length).encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


async def test_a_large_body_is_parsed_in_a_worker_thread(executor):
    document = {"instances": [ROW] * 20_000}
    body = orjson.dumps(document)
    assert len(body) > LIMITS.json_offload_bytes
    assert await read_json(json_request(body), LIMITS) == document
    assert len(executor.threads) == 1
    assert executor.threads[0] != threading.get_ident()


async def test_a_small_body_is_parsed_inline(executor):
    document = {"instance": ROW}
    assert await read_json(json_request(orjson.dumps(document)), LIMITS) == document
    assert executor.threads == []


async def test_a_too_deep_large_body_is_refused_from_the_worker_thread(executor):
    body = orjson.dumps({"instances": [ROW] * 20_000 + [nested(LIMITS.max_json_depth + 5)]})
    assert len(body) > LIMITS.json_offload_bytes
    with pytest.raises(BadRequest, match="nested deeper"):
        await read_json(json_request(body), LIMITS)
    assert len(executor.threads) == 1


async def test_a_declared_length_over_the_limit_is_refused_before_reading(executor):
    with pytest.raises(PayloadTooLarge):
        await read_json(unread_request(LIMITS.max_request_bytes + 1), LIMITS)
    assert executor.threads == []


async def test_an_undeclared_body_over_the_limit_is_refused_while_reading(executor):
    limits = LimitSettings(max_request_bytes=256 * 1024, json_offload_bytes=1024)
    body = orjson.dumps({"instances": [ROW] * 20_000})
    assert len(body) > limits.max_request_bytes
    with pytest.raises(PayloadTooLarge):
        await read_json(json_request(body, declared=False), limits)
    assert executor.threads == []  # refused before any parse


async def test_predict_route_with_offloaded_bodies(tiny_store):
    settings = Settings(model_store=tiny_store,
                        limits=LimitSettings(max_request_bytes=512 * 1024, json_offload_bytes=512))
    async with served_app(settings) as (_, http):
        rows = [ROW] * 60  # over the offload threshold, within the model's batch limit
        assert len(orjson.dumps({"instances": rows})) > 512
        response = await http.post(PREDICT, json={"instances": rows})
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 60

        deep = {"instances": [ROW] * 60 + [nested(40)]}
        response = await http.post(PREDICT, json=deep)
        assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request", response.text

        response = await http.post(PREDICT, json={"instances": [ROW] * 30_000})
        assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"

        assert (await http.post(PREDICT, json={"instance": ROW})).status_code == 200
