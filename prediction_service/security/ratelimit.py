"""Per-caller rate limiting: one token bucket per API key id (or client address when no key).

A bucket holds up to ``rate`` tokens (one second of burst) and refills at ``rate`` per second; a
request takes one token or is refused with 429 and a Retry-After saying when the next token comes.
Buckets live in a bounded LRU (idle callers are forgotten), per worker process: with N uvicorn
workers a caller can reach N x ``RATE_LIMIT_PER_SECOND`` in the worst case.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache

from ..errors import Overloaded, RateLimited

MAX_TRACKED_CALLERS = 100_000


@dataclass
class TokenBucket:
    """Holds up to ``capacity`` tokens, refilled at ``rate`` per second (the caller passes the clock)."""

    tokens: float
    updated: float

    def take(self, amount: float, now: float, rate: float, capacity: float) -> bool:
        """Refill for the time since the last call, then take ``amount`` if it is there."""
        self.tokens = min(capacity, self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False


class RateLimiter:
    def __init__(self, rate_per_second: float, on_limited: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, burst: float | None = None):
        """``burst``: bucket size (default one second of the rate, at least 1)."""
        self.rate = rate_per_second
        self.capacity = burst if burst is not None else max(1.0, rate_per_second)
        self._buckets: LRUCache = LRUCache(MAX_TRACKED_CALLERS)
        self._on_limited = on_limited
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, caller: str, endpoint: str) -> None:
        """Take a token for ``caller`` or raise RateLimited."""
        if not self.enabled:
            return
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = TokenBucket(self.capacity, now)
        if bucket.take(1.0, now, self.rate, self.capacity):
            return
        if self._on_limited is not None:
            self._on_limited(endpoint)
        wait_s = (1.0 - bucket.tokens) / self.rate
        raise RateLimited(f"rate limit of {self.rate:g} requests/s exceeded",
                          {"limit_per_second": self.rate, "retry_after_s": round(wait_s, 3)},
                          retry_after_s=max(1.0, math.ceil(wait_s)))


class ParseBudget:
    """Bytes of large JSON bodies a worker parses per second, all callers together.

    A JSON parser holds the GIL for the whole document (orjson: about 8 ms per MB here), in a worker thread
    too, so two clients posting 4 MB bodies back to back took the event loop from everyone else. Bodies up
    to ``LIMIT_JSON_OFFLOAD_BYTES`` are never charged (they are the normal traffic); larger ones take their
    size from a bucket refilled at ``LIMIT_LARGE_JSON_BYTES_PER_SECOND`` and are refused with 429 when it
    is empty, before they are parsed."""

    def __init__(self, bytes_per_second: float, burst_bytes: float, clock: Callable[[], float] = time.monotonic):
        self.rate = bytes_per_second
        self.capacity = max(burst_bytes, 1.0)
        self._clock = clock
        self._bucket = TokenBucket(self.capacity, clock())

    def take(self, size: int) -> None:
        """Charge a ``size``-byte document, or raise Overloaded (429, Retry-After) when the budget is spent."""
        if self.rate <= 0:
            return
        bucket = self._bucket
        if bucket.take(size, self._clock(), self.rate, self.capacity):
            return
        wait_s = (min(size, self.capacity) - bucket.tokens) / self.rate
        raise Overloaded(f"this worker parses at most {self.rate / 2**20:g} MiB/s of large JSON bodies; retry "
                         "later, or send large tensors in the binary Open Inference Protocol framing",
                         {"large_json_bytes_per_second": self.rate, "retry_after_s": round(wait_s, 3)},
                         retry_after_s=max(1.0, math.ceil(wait_s)))
