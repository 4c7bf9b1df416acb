"""One background task per key, awaited through a shield: when a remote backend lost a model, the first
request starts the reload, later requests join it, and a caller whose deadline expires cancels only
its own wait, never the reload everyone else needs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable


class SharedTasks:
    def __init__(self) -> None:
        self._tasks: dict[Hashable, asyncio.Task] = {}

    def start(self, key: Hashable, start: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """The task running for ``key``, started with ``start()`` when none is; never waits."""
        task = self._tasks.get(key)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(start())
            task.add_done_callback(_retrieve)
            self._tasks[key] = task
        return task

    async def run(self, key: Hashable, start: Callable[[], Awaitable[None]]) -> None:
        await asyncio.shield(self.start(key, start))

    def cancel_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()


def _retrieve(task: asyncio.Task) -> None:
    # Mark the exception retrieved even when every waiter gave up (no "never retrieved" noise).
    if not task.cancelled():
        task.exception()
