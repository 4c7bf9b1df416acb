"""A bounded closed-loop load generator over loopback (aiohttp): N concurrent clients for a fixed time."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import aiohttp
import orjson


@dataclass
class LoadResult:
    label: str
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def line(self) -> str:
        errors = sum(n for s, n in self.statuses.items() if s != 200)
        return (f"{self.label:<28} {self.throughput:9.1f} req/s   p50 {self.percentile(50):7.2f} ms   "
                f"p99 {self.percentile(99):7.2f} ms   ok {self.ok}  errors {errors}")


@contextmanager
def client_gc_paused() -> Iterator[None]:
    """The client's cyclic garbage collector off while it measures. A collection among the objects an asyncio
    client allocates at a thousand requests a second stalls every request in flight for tens of ms, which the
    figures would take for server latency (an open loop at 1,300 req/s: p99 ~60 ms in one 5 s window of
    three, ~4.5 ms in every window with the collector paused)."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def run_load(url: str, payload: dict, *, concurrency: int = 32, seconds: float = 10.0,
                   warmup_seconds: float = 2.0, label: str = "", headers: dict | None = None,
                   max_requests: int = 2_000_000, think_ms: float = 0.0) -> LoadResult:
    """``concurrency`` closed loops; ``think_ms``: each loop waits this long after an answer before it sends
    again (a strategy acting on each answer, then waiting for its next tick), 0: at once."""
    body = orjson.dumps(payload)
    headers = {"content-type": "application/json", **(headers or {})}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> tuple[int, float]:
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status, (time.perf_counter() - started) * 1000.0

        warm_until = time.monotonic() + warmup_seconds
        async def warm():
            while time.monotonic() < warm_until:
                await one()
        await asyncio.gather(*(warm() for _ in range(concurrency)))

        result = LoadResult(label, seconds)
        stop_at = time.monotonic() + seconds
        async def worker():
            while time.monotonic() < stop_at and len(result.latencies_ms) < max_requests:
                try:
                    status, latency = await one()
                except aiohttp.ClientError:
                    status, latency = -1, 0.0
                result.statuses[status] += 1
                if status == 200:
                    result.latencies_ms.append(latency)
                if think_ms:
                    await asyncio.sleep(think_ms / 1000.0)
        with client_gc_paused():
            began = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            result.seconds = time.monotonic() - began
        return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
