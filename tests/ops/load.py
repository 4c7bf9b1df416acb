"""A small aiohttp load generator for the ops tests: N concurrent loops for a fixed time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp


@dataclass
class Outcome:
    request_id: str | None
    """The server's id for the request (X-Request-Id response header); None without a response."""
    sent_at: float
    """time.monotonic() when the request was sent."""
    latency_s: float
    status: int | None
    """None: no HTTP response (connection refused / reset)."""
    error: str | None = None


async def _one(session: aiohttp.ClientSession, url: str, body: dict) -> Outcome:
    started = time.monotonic()
    try:
        async with session.post(url, json=body) as response:
            await response.read()
            return Outcome(response.headers.get("X-Request-Id"), started, time.monotonic() - started, response.status)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return Outcome(None, started, time.monotonic() - started, None, type(exc).__name__)


async def drive(url: str, body: dict, concurrency: int, seconds: float,
                stop_on_refused: bool = False) -> list[Outcome]:
    """Each of ``concurrency`` loops sends one request after another until ``seconds`` pass."""
    outcomes: list[Outcome] = []
    until = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2), timeout=timeout) as session:
        async def loop() -> None:
            while time.monotonic() < until:
                outcome = await _one(session, url, body)
                outcomes.append(outcome)
                if stop_on_refused and outcome.error == "ClientConnectorError":
                    return  # the listener is gone
        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return outcomes
