"""WebSocket predictions: one /v1 predict body per message, one answer per message, on the one pipeline;
the key (or bearer token) checked at connect."""

from __future__ import annotations

import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.support.server import start_server

ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5], [4.0, 3.0, 2.0, 1.0]]
KEY = {"X-API-Key": "reader-secret"}


@pytest.fixture(scope="module")
def server(tiny_store_template, tmp_path_factory):
    served = start_server(tiny_store_template, tmp_path_factory.mktemp("ws"), env={
        "API_KEYS": "admin-secret,reader-secret:read", "PREDICT_REQUIRES_KEY": "true",
        "LIMIT_MAX_REQUEST_BYTES": "4096"})
    try:
        yield served
    finally:
        served.stop()


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/v1/models/tiny-regressor/stream"


async def test_each_message_is_answered_like_the_rest_door(server):
    async with httpx.AsyncClient(base_url=server.url) as http:
        want = [(await http.post("/v1/models/tiny-regressor/predict", json={"instance": row}, headers=KEY)).json()
                for row in ROWS]
    async with websockets.connect(ws_url(server), additional_headers=KEY) as socket:
        for i, row in enumerate(ROWS):
            await socket.send(orjson.dumps({"id": i, "instance": row}))
        answers = {a["id"]: a for a in [orjson.loads(await socket.recv()) for _ in ROWS]}
    assert sorted(answers) == [0, 1, 2]
    request_ids = {a["request_id"] for a in answers.values()}
    assert len(request_ids) == 3  # a request of its own each
    for i, expected in enumerate(want):
        assert (answers[i]["model"], answers[i]["version"], answers[i]["stage"]) == ("tiny-regressor", "1.0.0",
                                                                                     "production")
        assert answers[i]["predictions"] == expected["predictions"]


async def test_bad_messages_get_error_answers_and_the_connection_stays(server):
    async with websockets.connect(ws_url(server), additional_headers=KEY) as socket:
        await socket.send("{not json")
        malformed = orjson.loads(await socket.recv())
        await socket.send(orjson.dumps({"id": "wrong", "instance": [1.0, 2.0]}))
        mismatch = orjson.loads(await socket.recv())
        await socket.send(orjson.dumps({"id": "big", "instance": [1.0] * 2000}))
        too_big = orjson.loads(await socket.recv())
        await socket.send(orjson.dumps({"id": "fine", "instance": ROWS[0]}))
        fine = orjson.loads(await socket.recv())
    assert malformed["status"] == 400 and malformed["error"]["code"] == "bad_request"
    assert mismatch["id"] == "wrong" and mismatch["status"] == 422
    assert too_big["status"] == 413
    assert fine["id"] == "fine" and fine["version"] == "1.0.0"
    async with httpx.AsyncClient(base_url=server.url) as http:
        stats = (await http.get("/v1/stats", headers=KEY)).json()["requests_by_status"]
    assert stats.get("422", 0) >= 1  # counted like any other request


async def test_a_caller_without_a_key_is_refused_at_connect(server):
    with pytest.raises(InvalidStatus) as missing:
        async with websockets.connect(ws_url(server)):
            pass
    assert missing.value.response.status_code == 401
    assert b"X-API-Key" in missing.value.response.body
    with pytest.raises(InvalidStatus) as invalid:
        async with websockets.connect(ws_url(server), additional_headers={"X-API-Key": "nope"}):
            pass
    assert invalid.value.response.status_code == 401 and b"invalid API key" in invalid.value.response.body


async def test_a_bearer_token_at_connect(tiny_store_template, tmp_path):
    import time

    import jwt

    secret = "a-long-test-secret-of-at-least-32-bytes!"
    served = start_server(tiny_store_template, tmp_path, env={"PREDICT_REQUIRES_KEY": "true", "JWT_SECRET": secret})
    try:
        signed = jwt.encode({"sub": "s", "exp": int(time.time()) + 60, "scope": "read"}, secret, algorithm="HS256")
        async with websockets.connect(ws_url(served), additional_headers={"Authorization": f"Bearer {signed}"}) as ws:
            await ws.send(orjson.dumps({"instance": ROWS[0]}))
            assert orjson.loads(await ws.recv())["version"] == "1.0.0"
    finally:
        served.stop()


def test_a_connection_holds_at_most_the_stream_bound_in_progress(slow_store_template, tmp_path, monkeypatch):
    """Past LIMIT_GRPC_STREAM_MAX_PENDING messages in progress the server stops reading the socket: with the
    model gated, 2 of 5 messages reach the data plane; released, all 5 are answered."""
    import shutil
    import time

    from starlette.testclient import TestClient

    from prediction_service.api.app import create_app
    from prediction_service.registry import ModelKey
    from prediction_service.settings import LimitSettings, Settings
    from tests.support.gated import gate_model_runs

    store = tmp_path / "store"
    shutil.copytree(slow_store_template, store, symlinks=True)
    app = create_app(Settings(model_store=store, limits=LimitSettings(grpc_stream_max_pending=2)))
    with TestClient(app) as client:
        gate = gate_model_runs(app.state.service.adapter._models[ModelKey("slow-regressor", "1.0.0")], monkeypatch)
        with client.websocket_connect("/v1/models/slow-regressor/stream") as socket:
            for i in range(5):
                socket.send_bytes(orjson.dumps({"id": i, "instance": ROWS[0]}))
            assert gate.started.wait(30)
            time.sleep(0.3)  # time for a server that did read on to admit more (it must not)
            assert app.state.service.dataplane.in_flight == 2
            gate.release()
            answers = [orjson.loads(socket.receive_bytes()) for _ in range(5)]
    assert sorted(a["id"] for a in answers) == [0, 1, 2, 3, 4]
