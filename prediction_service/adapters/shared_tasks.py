"""One background task per key, awaited through a shield: when a remote backend lost a model, the first
request (or health check) starts the reload, later requests join it, and a caller whose deadline expires
cancels only its own wait, never the reload everyone else needs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from functools import partial

log = logging.getLogger(__name__)


class SharedTasks:
    def __init__(self, what: str) -> None:
        self._what = what
        """What the tasks do, for the log line of a failed one (e.g. "reload into Triton")."""
        self._tasks: dict[Hashable, asyncio.Task] = {}

    def start(self, key: Hashable, start: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """The task running for ``key``, started with ``start()`` when none is; never waits."""
        task = self._tasks.get(key)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(start())
            task.add_done_callback(partial(_report, self._what, key))
            self._tasks[key] = task
        return task

    async def run(self, key: Hashable, start: Callable[[], Awaitable[None]]) -> None:
        await asyncio.shield(self.start(key, start))

    def cancel_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()


def _report(what: str, key: Hashable, task: asyncio.Task) -> None:
    # Retrieving the exception here also spares "exception never retrieved" noise when every waiter gave
    # up; logging it matters when nobody waited (a health check started the task in the background).
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s of %s failed: %s", what, key, task.exception())
