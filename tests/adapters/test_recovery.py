"""Recovery waits for a restarting backend: retried with backoff while the port refuses, until a deadline."""

from __future__ import annotations

import asyncio
import socket

import pytest

from prediction_service.adapters.recovery import while_restarting
from prediction_service.errors import BackendUnavailable, ModelLoadError


def bound_not_listening() -> socket.socket:
    """A port that refuses connections until ``listen()`` is called on it (no other process can take it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def connector(port: int, attempts: list[int]):
    async def connect() -> str:
        attempts.append(1)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError as exc:
            raise BackendUnavailable(f"cannot reach 127.0.0.1:{port}") from exc
        writer.close()
        return "connected"
    return connect


async def test_a_backend_that_starts_listening_later_is_reached():
    sock = bound_not_listening()
    try:
        attempts: list[int] = []
        asyncio.get_running_loop().call_later(0.3, sock.listen)  # the restarted backend opens its port
        assert await while_restarting(connector(sock.getsockname()[1], attempts), 10.0, "test") == "connected"
        assert len(attempts) > 1  # refused first, then retried
    finally:
        sock.close()


async def test_a_backend_that_stays_down_fails_at_the_deadline():
    sock = bound_not_listening()
    try:
        attempts: list[int] = []
        with pytest.raises(BackendUnavailable, match="cannot reach"):
            await while_restarting(connector(sock.getsockname()[1], attempts), 0.3, "test")
        assert len(attempts) > 1
    finally:
        sock.close()


async def test_other_failures_are_not_retried():
    attempts: list[int] = []

    async def bad_entry() -> None:
        attempts.append(1)
        raise ModelLoadError("the backend answered: the entry is bad")

    with pytest.raises(ModelLoadError):
        await while_restarting(bad_entry, 10.0, "test")
    assert attempts == [1]
