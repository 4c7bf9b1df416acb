"""Registry routes with a body: the key is checked before a byte of the body is read, and each body is
held to its own limit while it streams (uploads into the registry's staging, with bounded memory)."""

from __future__ import annotations

import base64
import tracemalloc

import httpx
import pytest

from prediction_service.api.routes.registry import router, upload_body_limit
from prediction_service.settings import LimitSettings, SecuritySettings, Settings
from tests.support.asgi import asgi_client, router_app

ADMIN = {"X-API-Key": "admin-secret"}
READ = {"X-API-Key": "read-secret"}
CHUNK = 64 * 1024
HUGE = 300 * 1024 * 1024
UPLOAD_LIMIT = 16 * 1024 * 1024


class CountingBody:
    """An async request body of ``total`` bytes that counts what the server actually pulled."""

    def __init__(self, total: int, chunk: int = CHUNK):
        self.total, self.chunk, self.sent = total, chunk, 0
        self._block = b"A" * chunk

    async def __aiter__(self):
        while self.sent < self.total:
            size = min(self.chunk, self.total - self.sent)
            self.sent += size
            yield self._block[:size]


@pytest.fixture
def limits() -> LimitSettings:
    return LimitSettings(max_artifact_upload_bytes=UPLOAD_LIMIT, max_request_bytes=64 * 1024)


@pytest.fixture
async def client(tmp_path, limits):
    app = router_app(router, Settings(model_store=tmp_path / "store", limits=limits,
                                      security=SecuritySettings(api_keys="admin-secret,read-secret:read")))
    async with asgi_client(app, lifespan=False) as http:
        yield http


def _upload(path, version: str) -> dict:
    return {"version": version, "artifacts": [{"file_name": "model.onnx", "format": "onnx",
                                               "content_base64": base64.b64encode(path.read_bytes()).decode()}]}


@pytest.mark.parametrize("headers, status", [({}, 401), ({"X-API-Key": "wrong"}, 401), (READ, 403)])
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_key_is_checked_before_the_body_is_read(client, headers, status, declared):
    body = CountingBody(HUGE)
    extra = {"Content-Length": str(HUGE)} if declared else {}
    response = await client.post("/v1/registry/models/x/versions", content=body,
                                 headers={**headers, **extra, "Content-Type": "application/json"})
    assert response.status_code == status
    assert body.sent == 0


@pytest.mark.parametrize("method, url", [
    ("POST", "/v1/registry/models/x/versions/1.0.0/promote"),
    ("PATCH", "/v1/registry/models/x/versions/1.0.0/metrics"),
])
async def test_small_body_routes_check_the_key_first_and_hold_their_limit(client, method, url, limits):
    unread = CountingBody(HUGE)
    assert (await client.request(method, url, content=unread)).status_code == 401
    assert unread.sent == 0
    oversized = CountingBody(HUGE)
    refused = await client.request(method, url, content=oversized, headers=ADMIN)
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "payload_too_large"
    assert oversized.sent <= limits.max_request_bytes + CHUNK


async def test_declared_oversized_upload_is_refused_unread(client, limits):
    body = CountingBody(HUGE)
    response = await client.post("/v1/registry/models/x/versions", content=body,
                                 headers={**ADMIN, "Content-Length": str(HUGE)})
    assert response.status_code == 413 and response.json()["error"]["details"]["max_bytes"] == upload_body_limit(limits)
    assert body.sent == 0


async def test_streamed_oversized_upload_stops_at_the_limit_with_bounded_memory(client, limits, tmp_path):
    body = CountingBody(HUGE)
    tracemalloc.start()
    try:
        response = await client.post("/v1/registry/models/x/versions", content=body, headers=ADMIN)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 413
    limit = upload_body_limit(limits)
    assert limit < body.sent <= limit + CHUNK  # counted as it arrived, not after
    assert peak < 4 * 1024 * 1024, f"{peak} bytes held for a refused {limit}-byte upload"
    assert not list((tmp_path / "store" / ".state" / "uploads").iterdir())  # staging removed


async def test_decoded_artifacts_over_the_limit_are_refused(client, tmp_path):
    big = tmp_path / "big.onnx"
    big.write_bytes(b"\0" * (UPLOAD_LIMIT + 1))
    response = await client.post("/v1/registry/models/x/versions", json=_upload(big, "1.0.0"), headers=ADMIN)
    assert response.status_code == 413 and response.json()["error"]["details"] == {"limit": UPLOAD_LIMIT}


async def test_streamed_upload_within_the_limit_registers(client, onnx_models, tmp_path):
    payload = httpx.Request("POST", "http://test", json=_upload(onnx_models["a"], "1.0.0")).content

    async def chunks():
        for start in range(0, len(payload), 1000):
            yield payload[start:start + 1000]

    created = await client.post("/v1/registry/models/price/versions", content=chunks(), headers=ADMIN)
    assert created.status_code == 201, created.text
    assert created.json()["artifacts"][0]["file"] == "model.onnx"
    assert not list((tmp_path / "store" / ".state" / "uploads").iterdir())


@pytest.mark.parametrize("body, status, code", [
    (b"", 422, "invalid_request"),
    (b"{not json", 400, "bad_request"),
    (b'{"version": "1.0.0"}', 422, "invalid_request"),
])
async def test_malformed_upload_bodies(client, body, status, code):
    response = await client.post("/v1/registry/models/x/versions", content=body,
                                 headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status_code == status and response.json()["error"]["code"] == code


async def test_padding_inside_the_base64_is_refused(client, onnx_models):
    upload = _upload(onnx_models["a"], "1.0.0")
    upload["artifacts"][0]["content_base64"] = "QQ==" * (2 << 20)  # valid per 4-char group, not as a whole
    response = await client.post("/v1/registry/models/x/versions", json=upload, headers=ADMIN)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_input"


# ---- on a real server process: the worker's memory, not just the answer ---------------------------------

@pytest.fixture(scope="module")
def server(tiny_store_template, tmp_path_factory):
    from tests.support.server import start_server

    server = start_server(tiny_store_template, tmp_path_factory.mktemp("upload-limits"), env={
        "API_KEYS": "admin-secret,read-secret:read", "LIMIT_MAX_ARTIFACT_UPLOAD_BYTES": str(UPLOAD_LIMIT)})
    try:
        yield server
    finally:
        server.stop()


def _rss(server) -> int:
    import psutil

    process = psutil.Process(server.process.pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def _raw_post(port: int, headers: dict[str, str], total: int, chunked: bool) -> tuple[int, int]:
    """POST ``total`` body bytes from a thread while reading the answer; returns (status, bytes sent)."""
    import socket
    import threading

    sock = socket.create_connection(("127.0.0.1", port))
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(total)}
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "test", "Content-Type": "application/json",
                                                 **framing, **headers}.items())
    sock.sendall(f"POST /v1/registry/models/x/versions HTTP/1.1\r\n{head}\r\n".encode())
    block = b"A" * (1 << 20)
    piece = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
    sent = 0

    def send() -> None:
        nonlocal sent
        try:
            while sent < total:
                sock.sendall(piece)
                sent += len(block)
        except OSError:  # the server answered and closed: it will not take the rest
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sock.settimeout(60)
    status_line = sock.makefile("rb").readline()
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    sender.join(10)
    return int(status_line.split()[1]), sent


@pytest.mark.parametrize("headers, chunked, status", [
    ({}, False, 401),                 # unauthenticated, declared 300 MB
    ({}, True, 401),                  # unauthenticated, chunked 300 MB
    (ADMIN, False, 413),              # authenticated, declared over the limit
    (ADMIN, True, 413),               # authenticated, chunked: counted as it arrives
], ids=["401-declared", "401-chunked", "413-declared", "413-chunked"])
def test_300_mb_upload_costs_the_worker_no_memory(server, headers, chunked, status):
    httpx.get(f"{server.url}/v1/registry/models", headers=READ)  # routes and imports warm
    before = _rss(server)
    answered, sent = _raw_post(server.port, headers, HUGE, chunked)
    assert answered == status
    assert sent < HUGE // 2, "the client could send most of the body: the server read it"
    growth = _rss(server) - before
    assert growth < 64 * 1024 * 1024, f"worker memory grew by {growth / 2**20:.0f} MiB for a refused upload"
    assert httpx.get(f"{server.url}/health/live").status_code == 200
