"""Single flight: one task per key however many callers want it, awaited through a shield.

Loading a model, re-registering it in a backend that lost it, reloading it into Triton: the first caller
starts the work, later callers join it, and a caller whose deadline expires cancels only its own wait,
never the work everyone else needs. The model manager, the in-process adapter and the remote adapters
all load once through this.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Any

log = logging.getLogger(__name__)


class SingleFlight:
    def __init__(self, what: str, *, log_failures: bool = True) -> None:
        self._what = what
        """What the tasks do, for the log line of a failed one (e.g. "reload into Triton")."""
        self._log_failures = log_failures
        """False where the work logs its own failures."""
        self._tasks: dict[Hashable, asyncio.Task] = {}

    def in_flight(self, key: Hashable) -> bool:
        task = self._tasks.get(key)
        return task is not None and not task.done()

    def start(self, key: Hashable, work: Callable[[], Awaitable[Any]]) -> asyncio.Task:
        """The task running for ``key``, started with ``work()`` when none is; never waits."""
        task = self._tasks.get(key)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(work())
            task.add_done_callback(partial(self._finished, key))
            self._tasks[key] = task
        return task

    async def run(self, key: Hashable, work: Callable[[], Awaitable[Any]]) -> Any:
        """``work()``'s result, joining the flight for ``key`` when one is under way."""
        return await asyncio.shield(self.start(key, work))

    def cancel_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    def _finished(self, key: Hashable, task: asyncio.Task) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        # Retrieving the exception here also spares "exception never retrieved" noise when every waiter gave
        # up; logging it matters when nobody waited (a health check started the task in the background).
        if not task.cancelled() and task.exception() is not None and self._log_failures:
            log.warning("%s of %s failed: %s", self._what, key, task.exception())
