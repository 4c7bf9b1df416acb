"""Admission before work (issue 13): a request refused for overload is answered from its path and headers,
before its body is read, on the REST doors; refusals are counted in metrics and summarised in the log."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from tests.ops.load import drive
from tests.support.server import start_server

ROW = [1.0, 2.0, 3.0, 4.0]
DECLARED = 50 * 1024 * 1024  # what the refused request claims to send; it sends 1 KiB of it


def _refused_without_body(port: int, path: str) -> int | None:
    """Send the headers and 1 KiB of a 50 MiB body, then wait for an answer without sending more.
    The status when the server answered before reading the body, else None."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                      f"content-length: {DECLARED}\r\n\r\n").encode() + b"[" * 1024)
        try:
            head = sock.recv(4096)
        except TimeoutError:  # the server is waiting for the rest of the body: it was admitted
            return None
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None


@pytest.mark.parametrize("path", ["/v1/models/slow-regressor/predict", "/v2/models/slow-regressor/infer"])
async def test_a_refused_request_is_answered_before_its_body_is_read(slow_store_template, tmp_path, path):
    server = start_server(slow_store_template, tmp_path, env={
        "LIMIT_MAX_IN_FLIGHT": "2", "BATCH_MAX_BATCH_SIZE": "1", "BATCH_CONCURRENT_BATCHES": "1",
        "LIMIT_MAX_REQUEST_BYTES": str(DECLARED * 2), "AUDIT_ENABLED": "false"})
    try:
        url = f"{server.url}/v1/models/slow-regressor/predict"
        load = asyncio.create_task(drive(url, {"instance": ROW}, concurrency=8, seconds=4.0))
        await asyncio.sleep(1.0)  # the slow model's queue and the in-flight slots are full by now
        statuses = [await asyncio.to_thread(_refused_without_body, server.port, path) for _ in range(5)]
        await load
        assert 503 in statuses or 429 in statuses, statuses
        assert set(statuses) <= {429, 503, None}, statuses
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            stats = (await http.get("/v1/stats")).json()["requests_by_status"]
            assert stats.get("503", 0) + stats.get("429", 0) >= statuses.count(503) + statuses.count(429)
            assert (await http.post(url, json={"instance": ROW})).status_code == 200
        server.terminate()
        busy_lines = [line for line in server.log().splitlines() if "server busy" in line]
        assert len(busy_lines) <= 2, busy_lines[:5]  # a summary, not a line per refusal
    finally:
        server.stop()
