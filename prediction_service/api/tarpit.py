"""Holding back a connection that keeps sending refused requests: its error answers are delayed once it
has used its budget of errors, so a client that retries refusals in a tight loop waits instead of taking
the event loop from everyone else.

Every refusal is already cheap (bounded before work), but a closed-loop client that gets cheap refusals
just sends more of them: two such clients sending rank-33 shapes got ~2,200 refusals/s from one worker and
took 44 % of a normal client's throughput on two cores. A delayed answer costs a sleeping task, no CPU.
The budget is per connection (client address and port, as the server sees it): a well-behaved client on
its own connection is never delayed, and an occasional 4xx never is either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cachetools import LRUCache
from starlette.types import Scope

from ..security.ratelimit import TokenBucket

MAX_TRACKED_CONNECTIONS = 10_000


class ErrorTarpit:
    def __init__(self, errors_per_second: float, burst: float, delay_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = errors_per_second
        self.burst = max(burst, 1.0)
        self.delay_s = delay_s
        self._clock = clock
        self._buckets: LRUCache = LRUCache(MAX_TRACKED_CONNECTIONS)
        self.held = 0
        """Error answers held back so far (in this worker)."""

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.delay_s > 0

    def delay_for(self, scope: Scope) -> float:
        """Seconds to hold this error answer back: 0 while the connection is within its budget."""
        client = scope.get("client")
        if not self.enabled or client is None:
            return 0.0
        now = self._clock()
        key = (client[0], client[1])
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.burst, now)
        return 0.0 if bucket.take(1.0, now, self.rate, self.burst) else self.delay_s

    async def hold(self, scope: Scope, status: int) -> None:
        """Before an answer with ``status`` is sent: wait out the delay if it is an error past the budget."""
        if status >= 400:
            delay = self.delay_for(scope)
            if delay:
                self.held += 1
                await asyncio.sleep(delay)
