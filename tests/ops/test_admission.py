"""Admission before work: a request refused for overload is answered from its path and headers,
before its body is read, on the REST doors; refusals are counted in metrics and summarised in the log."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket

import httpx
import pytest

from tests.support.models import register_slow
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


SLOWER = "slower-regressor"
HOLD = {"X-Request-Deadline-Ms": "120000"}  # the slot holders must not time out and free a slot


async def _until_full(http: httpx.AsyncClient, slots: int) -> None:
    """Until the server reports ``slots`` predictions in flight (read from /metrics, which takes no slot)."""
    for _ in range(1500):
        found = re.search(r"^prediction_in_flight (\S+)$", (await http.get("/metrics")).text, re.M)
        if found and float(found[1]) >= slots:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the server never filled up")


@pytest.mark.parametrize("path", [f"/v1/models/{SLOWER}/predict", f"/v2/models/{SLOWER}/infer"])
async def test_a_refused_request_is_answered_before_its_body_is_read(slow_store_template, tmp_path, path):
    template = tmp_path / "template"
    shutil.copytree(slow_store_template, template, symlinks=True)
    register_slow(template, tmp_path / "export", name=SLOWER, steps=12000)  # seconds per row
    server = start_server(template, tmp_path / "served", env={
        "LIMIT_MAX_IN_FLIGHT": "2", "LIMIT_CALLER_DEADLINE_CEILING_MS": "120000", "BATCH_MAX_BATCH_SIZE": "1", "BATCH_CONCURRENT_BATCHES": "1",
        "LIMIT_MAX_REQUEST_BYTES": str(DECLARED * 2), "AUDIT_ENABLED": "false", "WARMUP_ENABLED": "false"})
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            # one prediction runs for seconds, the next waits for it: both slots stay taken meanwhile
            holders = [asyncio.create_task(http.post(f"/v1/models/{SLOWER}/predict", json={"instance": ROW},
                                                     headers=HOLD)) for _ in range(2)]
            await _until_full(http, 2)
            statuses = [await asyncio.to_thread(_refused_without_body, server.port, path) for _ in range(5)]
            assert statuses == [503] * 5, statuses
            stats = (await http.get("/v1/stats")).json()["requests_by_status"]
            assert stats.get("503", 0) >= 5
            assert [(await holder).status_code for holder in holders] == [200, 200]
            assert (await http.post(f"/v1/models/{SLOWER}/predict", json={"instance": ROW},
                                    headers=HOLD)).status_code == 200
        server.terminate()
        busy_lines = [line for line in server.log().splitlines() if "server busy" in line]
        assert len(busy_lines) <= 2, busy_lines[:5]  # a summary, not a line per refusal
    finally:
        server.stop()
