"""Recovery from a backend that restarts: its ports open one after the other, so the first attempt to
register a model again may find the port it needs still closed. Retry with backoff until a deadline
instead of failing on the first refused connection."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from ..errors import BackendUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


async def while_restarting(work: Callable[[], Awaitable[T]], within_s: float, what: str) -> T:
    """``work()``'s result, run again with backoff (50 ms doubling to 1 s, jittered) while it raises
    BackendUnavailable, for at most ``within_s`` seconds; then the last BackendUnavailable."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(BackendUnavailable),
        stop=stop_after_delay(within_s),
        wait=wait_exponential_jitter(initial=0.05, max=1.0, jitter=0.05),
        before_sleep=lambda state: log.info("%s: backend not reachable yet (attempt %d): %s", what,
                                            state.attempt_number, state.outcome.exception()),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await work()
    raise AssertionError("unreachable: tenacity reraises the last failure")
