"""Group commit: many callers' writes share one transaction.

Only one write runs at a time, in a thread, and everything submitted while it runs is the next batch. Under
load a batch holds every item that arrived during the previous commit, so the commits per second stay
bounded while the items per second follow the load. A caller either awaits its own result (``submit``:
what it wrote is durable before it goes on) or hands the item over and goes on (``enqueue``: write-behind;
a failed write is reported to ``on_error``); ``flush`` waits until everything handed over is written.

Write-behind items may wait ``linger_s`` for company before their batch is written (nobody waits on them):
a transaction costs far more than a row (at ~1,000 requests a second, one transaction per request took a
third of a core, in a thread that holds the GIL the event loop needs). An awaited item, or a flush, starts
the write at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    def __init__(self, write: Callable[[list[Item]], list[Result]],
                 on_error: Callable[[Exception, int], None] | None = None, linger_s: float = 0.0):
        self._write = write
        """Writes a batch (in a worker thread) and returns one result per item, in order."""
        self._on_error = on_error
        """Told of a failed write that held enqueued items (the exception, how many items)."""
        self._linger_s = linger_s
        """How long a batch of write-behind items only waits for more before it is written."""
        self._pending: list[tuple[Item, asyncio.Future[Result] | None]] = []
        self._writer: asyncio.Task | None = None
        self._hurry = asyncio.Event()
        """Set when someone waits (an awaited item, a flush): the batch is written without lingering."""
        self._handed = self._settled = 0
        """Items handed over, and items whose write is over (written or failed): what a flush compares."""
        self._progress = asyncio.Event()
        """Set whenever a batch's write is over."""

    async def submit(self, item: Item) -> Result:
        """``item``'s result once the batch holding it is written; the write's exception if it failed."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._handed += 1
        self._start()
        self.hasten()
        return await future

    def enqueue(self, item: Item) -> None:
        """Hand ``item`` over to be written with the next batch, without waiting for it."""
        self._pending.append((item, None))
        self._handed += 1
        self._start()

    async def flush(self) -> None:
        """Until every item handed over so far is written (or its write has failed); items handed over
        meanwhile are not waited for (under load they never stop coming)."""
        target = self._handed
        while self._settled < target and self._writer is not None and not self._writer.done():
            self.hasten()
            self._progress.clear()
            progress = asyncio.ensure_future(self._progress.wait())
            await asyncio.wait({progress, self._writer}, return_when=asyncio.FIRST_COMPLETED)  # or it died
            progress.cancel()

    def hasten(self) -> None:
        """Write what is pending now, without lingering (someone is waiting for it)."""
        self._hurry.set()

    def _start(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain(), name="group-commit")

    async def _linger(self) -> None:
        """Wait up to linger_s for more items, unless someone is waiting for the write."""
        if self._linger_s > 0 and not self._hurry.is_set():
            try:
                await asyncio.wait_for(self._hurry.wait(), self._linger_s)
            except TimeoutError:
                pass
        self._hurry.clear()

    async def _drain(self) -> None:
        while self._pending:
            if all(future is None for _, future in self._pending):
                await self._linger()
            batch, self._pending = self._pending, []
            try:
                results = await asyncio.to_thread(self._write, [item for item, _ in batch])
                answered = list(zip(batch, results, strict=True))
            except Exception as exc:  # noqa: BLE001 - every caller in the batch learns it
                self._settle(len(batch))
                for _, future in batch:
                    if future is not None and not future.done():
                        future.set_exception(exc)
                handed_over = sum(future is None for _, future in batch)
                if handed_over and self._on_error is not None:
                    self._on_error(exc, handed_over)
                continue
            self._settle(len(batch))
            for (_, future), result in answered:
                if future is not None and not future.done():  # None: enqueued; done: its caller was cancelled
                    future.set_result(result)

    def _settle(self, count: int) -> None:
        self._settled += count
        self._progress.set()
