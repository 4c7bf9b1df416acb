"""Dynamic batching: concurrent requests for one model are merged into one model run.

Two halves, as in MLServer: pure merge/split functions, and a queue with one future per request.
The queue is bounded (past ``max_queue_size`` waiting requests new ones are shed with Overloaded),
expired requests are dropped before the model runs, a failed batch fails every request in it,
and asyncio objects are created lazily inside the running loop.

Adaptive: a request that finds the model idle (no run in progress) and nobody queued runs at once. Only
under load do batches form: while a run is in progress a forming batch collects company for up to
``max_queue_delay``, and while every run slot is busy it grows until one frees. A strategy waiting on one
answer never waits for company: a fixed 2 ms collection window was most of a lone request's latency on the
demo LSTM. ``wait_while_idle`` brings the window back for an idle model that prefers fuller batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import DeadlineExceeded, Overloaded, PredictionServiceError, ServiceUnavailable

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
BatchRunner = Callable[[Tensors], Awaitable[Tensors]]


# ---- pure functions -------------------------------------------------------------------------

def batch_rows(inputs: Tensors) -> int:
    return next(iter(inputs.values())).shape[0]


def merge_signature(inputs: Tensors) -> tuple:
    """Requests can share a run only when every non-batch dim and dtype agree."""
    return tuple((name, arr.dtype.str, arr.shape[1:]) for name, arr in sorted(inputs.items()))


def merge(requests: list[Tensors]) -> Tensors:
    if len(requests) == 1:
        return requests[0]
    return {name: np.concatenate([r[name] for r in requests], axis=0) for name in requests[0]}


def split(outputs: Tensors, sizes: list[int]) -> list[Tensors]:
    total = sum(sizes)
    for name, arr in outputs.items():
        if arr.shape[0] != total:
            raise PredictionServiceError(
                f"model returned {arr.shape[0]} rows for output {name!r}, expected {total}",
                {"output": name, "rows": int(arr.shape[0]), "expected": total},
            )
    if len(sizes) == 1:
        return [outputs]
    # Plain slices (views): np.split's Python-level bookkeeping cost ~4 % of the event loop at 32 per batch.
    parts, start = [], 0
    for size in sizes:
        stop = start + size
        parts.append({name: arr[start:stop] for name, arr in outputs.items()})
        start = stop
    return parts


# ---- the queue --------------------------------------------------------------------------------

@dataclass
class _Pending:
    inputs: Tensors
    rows: int
    deadline: float | None
    future: asyncio.Future = field(repr=False)
    key: tuple = ()


@dataclass(frozen=True)
class BatchStats:
    batches: int
    requests: int
    rows: int
    shed: int
    expired: int

    @property
    def mean_batch_rows(self) -> float:
        return self.rows / self.batches if self.batches else 0.0


class DynamicBatcher:
    def __init__(
        self,
        run_batch: BatchRunner,
        *,
        max_batch_size: int = 32,
        max_queue_delay_ms: float = 2.0,
        max_queue_size: int = 512,
        max_concurrent_batches: int = 1,
        on_batch: Callable[[int], None] | None = None,
        name: str = "",
        wait_while_idle: bool = False,
    ):
        if max_batch_size < 1 or max_queue_size < 1 or max_concurrent_batches < 1:
            raise ValueError("max_batch_size, max_queue_size and max_concurrent_batches must be >= 1")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.max_concurrent_batches = max_concurrent_batches
        self._on_batch = on_batch
        self.name = name
        self.wait_while_idle = wait_while_idle
        """Hold a forming batch up to ``max_queue_delay`` for company even while a run slot is free."""
        self._queue: deque[_Pending] = deque()
        self._arrived: asyncio.Event | None = None
        self._freed: asyncio.Event | None = None
        """Set when a run slot is released: a batch forming while every slot was busy may go."""
        self._worker: asyncio.Task | None = None
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()
        self._runs = 0
        self._last_requests, self._last_ended = 0, 0.0
        """Requests in the last finished batch, and when it finished (monotonic)."""
        """Batches holding a run slot now (counted down before the slot is released, unlike ``_running``)."""
        self._forming: list[_Pending] = []
        self._waiting = 0  # submitted, model run not started yet (queued or in a forming batch)
        self._closed = False
        self._batches = self._requests = self._rows = self._shed = self._expired = 0

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def stats(self) -> BatchStats:
        return BatchStats(self._batches, self._requests, self._rows, self._shed, self._expired)

    def _start(self) -> None:
        self._arrived = asyncio.Event()
        self._freed = asyncio.Event()
        self._slots = asyncio.Semaphore(self.max_concurrent_batches)
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher:{self.name}")

    async def submit(self, inputs: Tensors, deadline: float | None = None) -> Tensors:
        if self._closed:
            raise ServiceUnavailable(f"model {self.name} is unloading", {"model": self.name})
        if self._worker is None:
            self._start()
        if self.queue_depth >= self.max_queue_size:
            self._shed += 1
            raise Overloaded(
                f"queue for {self.name} is full ({self.max_queue_size} waiting requests)",
                {"model": self.name, "queue_size": self.max_queue_size},
            )
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, batch_rows(inputs), deadline, future, merge_signature(inputs)))
        self._waiting += 1
        self._arrived.set()
        return await future

    async def _wait_for_item(self, timeout: float | None) -> bool:
        # An Event, not Queue.get under wait_for: a timed-out wait can never swallow an item.
        assert self._arrived is not None
        if self._queue:
            return True
        self._arrived.clear()
        try:
            if timeout is None:
                await self._arrived.wait()
            else:
                await asyncio.wait_for(self._arrived.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return bool(self._queue)

    def _company_due(self, forming: int) -> bool:
        """Whether more requests are about to arrive: the last batch carried more than this one holds and
        ended within the window (closed-loop clients resend as their answers land). A lone client's batch
        carried one request, so it never waits."""
        return forming < self._last_requests and time.monotonic() - self._last_ended < self.max_queue_delay

    async def _slot_freed(self) -> None:
        """Until a run slot is free (one wake per finished batch, not one per arriving request)."""
        assert self._freed is not None and self._slots is not None
        self._freed.clear()
        if self._slots.locked():
            await self._freed.wait()

    async def _loop(self) -> None:
        assert self._slots is not None
        while True:
            await self._wait_for_item(None)
            if not self._queue:
                continue
            first = self._queue.popleft()
            batch, rows = [first], first.rows
            self._forming = batch
            collect_until = time.monotonic() + self.max_queue_delay
            while rows < self.max_batch_size:
                if not self._queue:
                    if self._waiting >= self.max_queue_size:
                        break  # nothing more can join (new requests are shed): waiting would only add delay
                    if self._slots.locked():  # every slot busy: who arrives meanwhile joins once one frees
                        await self._slot_freed()
                        continue
                    if not self._runs and not self.wait_while_idle and not self._company_due(len(batch)):
                        break  # the model is idle and nobody else is queued or due: run now
                    remaining = collect_until - time.monotonic()
                    if remaining <= 0 or not await self._wait_for_item(remaining):
                        break
                item = self._queue[0]
                if item.key != first.key or rows + item.rows > self.max_batch_size:
                    break  # it starts the next batch; FIFO order is kept
                batch.append(self._queue.popleft())
                rows += item.rows
            await self._slots.acquire()
            self._runs += 1
            self._forming = []
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[_Pending]) -> None:
        assert self._slots is not None
        self._waiting -= len(batch)
        try:
            now = time.monotonic()
            live = []
            for item in batch:
                if item.future.done():  # caller gave up: its deadline timer fired, or it went away
                    if item.deadline is not None and now >= item.deadline:
                        self._expired += 1
                    continue
                if item.deadline is not None and now >= item.deadline:
                    self._expired += 1
                    item.future.set_exception(DeadlineExceeded("request deadline passed before the model ran"))
                    continue
                live.append(item)
            if not live:
                return
            sizes = [item.rows for item in live]
            try:
                outputs = await self._run_batch(merge([item.inputs for item in live]))
                parts = split(outputs, sizes)
            except Exception as exc:  # noqa: BLE001 - every waiter must learn about the failure
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            self._batches += 1
            self._requests += len(live)
            self._last_requests, self._last_ended = len(live), time.monotonic()
            self._rows += sum(sizes)
            if self._on_batch is not None:
                self._on_batch(sum(sizes))
            for item, part in zip(live, parts):
                if not item.future.done():
                    item.future.set_result(part)
        finally:
            self._runs -= 1
            self._slots.release()
            if self._freed is not None:
                self._freed.set()

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting; let queued and running work finish (bounded), then fail what is left."""
        self._closed = True
        if self._worker is None:
            return
        deadline = time.monotonic() + drain_timeout
        while (self._waiting or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        leftovers = self._forming + list(self._queue)
        self._forming, self._waiting = [], 0
        self._queue.clear()
        for item in leftovers:
            if not item.future.done():
                item.future.set_exception(ServiceUnavailable(f"model {self.name} was unloaded"))
