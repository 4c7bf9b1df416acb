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

Priority lanes (as Triton's ``priority_levels``): one FIFO lane per priority, 1 the highest. A batch is formed
when a run slot is taken, not before: it starts with the oldest request of the highest non-empty lane and
takes the requests behind it in priority order (FIFO within a lane) while they fit and match, so a waiting
higher-priority request joins the next run ahead of every lower one, and a batch of lower ones already
running delays it by that one run at most. ``reserved_slots`` run slots beyond ``max_concurrent_batches`` are
kept for batches of priority-1 requests while lower priorities hold the regular ones, so a live request
need not wait for a flood's run at all; and a batch that outranks every run in progress starts without a
company window (the load is of lower priority: waiting would only delay it). When the queue is full a
newcomer takes the place of the newest request of a lower priority (shed instead, with Overloaded); with
none lower waiting the newcomer is shed.

Deadlines: the batcher knows every request's deadline, so it enforces them with one timer (set for the
earliest deadline it holds) instead of a timer per request (one per request cost /v1 ~5 % of its
throughput). A request whose deadline passes while it waits gets DeadlineExceeded and never runs; one whose
deadline passes while its batch runs gets DeadlineExceeded at once, and the run's answer is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DeadlineExceeded, Overloaded, PredictionServiceError, ServiceUnavailable

if TYPE_CHECKING:
    from ..types import Trace

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
BatchRunner = Callable[[Tensors, int], Awaitable[Tensors]]
"""Runs merged inputs; the second argument is the priority leading the batch (1 the highest)."""


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

@dataclass(slots=True, eq=False)
class _Pending:
    inputs: Tensors
    rows: int
    deadline: float | None
    future: asyncio.Future = field(repr=False)
    key: tuple = ()
    priority: int = 1
    trace: "Trace | None" = field(default=None, repr=False)
    queued_ns: int = 0
    """time.time_ns() at submit, for the queue-wait span (traced requests only)."""
    running: bool = False
    expired: bool = False
    """Its deadline passed and the batcher failed it (or, running alone, cancelled its caller)."""


@dataclass(frozen=True)
class BatchStats:
    batches: int
    requests: int
    rows: int
    shed: int
    expired: int
    depth_by_priority: tuple[int, ...] = ()
    """Requests waiting in each lane, priority 1 first."""
    shed_by_priority: tuple[int, ...] = ()
    """Requests shed from each lane (refused on arrival, or displaced by a higher priority), priority 1 first."""

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
        priority_levels: int = 1,
        default_priority: int = 1,
        reserved_slots: int = 0,
        run_inline: Callable[[Tensors], Tensors] | None = None,
        inline_rows: int = 0,
    ):
        if max_batch_size < 1 or max_queue_size < 1 or max_concurrent_batches < 1:
            raise ValueError("max_batch_size, max_queue_size and max_concurrent_batches must be >= 1")
        if priority_levels < 1 or not 1 <= default_priority <= priority_levels or reserved_slots < 0:
            raise ValueError("priority_levels must be >= 1, default_priority within 1..priority_levels and "
                             "reserved_slots >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.max_concurrent_batches = max_concurrent_batches
        self._on_batch = on_batch
        self.name = name
        self.wait_while_idle = wait_while_idle
        """Hold a forming batch up to ``max_queue_delay`` for company even while a run slot is free."""
        self.priority_levels = priority_levels
        self.default_priority = default_priority
        """The lane of a request that names no priority (0) or one past ``priority_levels``."""
        self.reserved_slots = reserved_slots if priority_levels > 1 else 0
        """Run slots beyond ``max_concurrent_batches`` only a batch of priority-1 requests may take, while lower
        priorities hold regular slots."""
        self._run_inline = run_inline
        self.inline_rows = inline_rows if run_inline is not None else 0
        """Most rows of a request that overtakes lower-priority runs and runs on the event loop itself
        (``run_inline``) instead of a thread: a run this small costs less than handing it to a thread and its
        answer back."""
        self._lanes: list[deque[_Pending]] = [deque() for _ in range(priority_levels)]
        """One FIFO per priority, priority 1 (the highest) first."""
        self._running_by_level = [0] * priority_levels
        """Batches running now by the priority of the request that leads them."""
        self._arrived: asyncio.Event | None = None
        self._freed: asyncio.Event | None = None
        """Set when a run slot is released (or a priority-1 request arrives while the regular slots are
        busy): a batch waiting for a slot may go."""
        self._worker: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._runs = 0
        """Batches holding a run slot now (counted down before the slot is released, unlike ``_running``)."""
        self._last_requests, self._last_ended = 0, 0.0
        """Requests in the last finished batch, and when it finished (monotonic)."""
        self._waiting = 0  # in a lane: submitted, not taken into a batch yet
        self._closed = False
        self._batches = self._requests = self._rows = self._expired = 0
        self._shed = [0] * priority_levels
        self._deadlines: dict[_Pending, asyncio.Task | None] = {}
        """Requests with a deadline, submitted and not answered yet; the caller's task for one that runs alone
        (its run is awaited in that task, so the deadline cancels it there)."""
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_timer_at = float("inf")
        """The time.monotonic() instant the deadline timer is set for."""

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def refuses_every_priority(self) -> bool:
        """Whether a request would be shed now whatever its priority: the queue is full and every waiting
        request has the highest priority, so none can be displaced. Admission asks this before a body (and
        the priority in it) is read."""
        return self._waiting >= self.max_queue_size and len(self._lanes[0]) == self._waiting

    @property
    def stats(self) -> BatchStats:
        return BatchStats(self._batches, self._requests, self._rows, sum(self._shed), self._expired,
                          tuple(len(lane) for lane in self._lanes), tuple(self._shed))

    def _start(self) -> None:
        self._arrived = asyncio.Event()
        self._freed = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher:{self.name}")

    async def submit(self, inputs: Tensors, deadline: float | None = None, priority: int = 0,
                     trace: "Trace | None" = None) -> Tensors:
        """Run ``inputs`` in the next batch its ``priority`` (1 the highest; 0: the default) lets it join.
        ``trace``: the request's trace, which records its queue wait and links it to its model run."""
        if self._closed:
            raise ServiceUnavailable(f"model {self.name} is unloading", {"model": self.name})
        if self._worker is None:
            self._start()
        level = priority if 1 <= priority <= self.priority_levels else self.default_priority
        future = asyncio.get_running_loop().create_future()
        item = _Pending(inputs, batch_rows(inputs), deadline, future, merge_signature(inputs), level, trace,
                        time.time_ns() if trace is not None else 0)
        if deadline is not None:
            self._watch_deadline(item)
        try:
            if self._may_run_alone(level):
                return await self._run_alone(item)
            if self._waiting >= self.max_queue_size:
                self._make_room(level)
            self._lanes[level - 1].append(item)
            self._waiting += 1
            assert self._arrived is not None and self._freed is not None
            self._arrived.set()
            if level == 1 and self.reserved_slots and self._runs >= self.max_concurrent_batches:
                self._freed.set()  # it may take a reserved slot: the loop looks again
            return await future
        finally:
            if deadline is not None:
                del self._deadlines[item]

    # ---- deadlines: one timer per batcher ------------------------------------------------------------

    def _watch_deadline(self, item: _Pending) -> None:
        assert item.deadline is not None
        self._deadlines[item] = None
        if item.deadline < self._deadline_timer_at:
            self._set_deadline_timer(item.deadline)

    def _set_deadline_timer(self, at: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        loop = asyncio.get_running_loop()
        self._deadline_timer = loop.call_at(loop.time() + max(0.0, at - time.monotonic()), self._expire_due)
        self._deadline_timer_at = at

    def _expire_due(self) -> None:
        """The timer: fail every request whose deadline has passed, then set it for the next one."""
        self._deadline_timer, self._deadline_timer_at = None, float("inf")
        now, earliest = time.monotonic(), float("inf")
        for item, caller in self._deadlines.items():
            assert item.deadline is not None
            if item.expired or item.future.done():
                continue
            if item.deadline > now:
                earliest = min(earliest, item.deadline)
                continue
            item.expired = True
            if caller is not None:  # runs alone, awaited in its caller's task: _run_alone turns this into DeadlineExceeded
                caller.cancel()
            elif item.running:
                item.future.set_exception(DeadlineExceeded("request deadline exceeded while the model ran"))
            else:
                self._expired += 1
                item.future.set_exception(DeadlineExceeded("request deadline passed before the model ran"))
        if earliest != float("inf"):
            self._set_deadline_timer(earliest)

    def _may_run_alone(self, level: int) -> bool:
        """Whether a request of priority ``level`` would lead the next batch and start it at once: nothing of
        its priority or higher is queued, a slot it may take is free, the runs in progress (if any) are all of
        lower priorities, and no company is due. The batcher's loop would start it one event-loop turn later
        (with what of the lower priorities fit beside it: they take the next slot instead)."""
        return (not any(self._lanes[:level]) and not self.wait_while_idle and self._may_start(level)
                and (not self._runs or self._outranks_runs(level)) and not self._company_due(1))

    async def _run_alone(self, item: _Pending) -> Tensors:
        """Run ``item`` as its own batch from the caller's task instead of the batcher's: it skips the turns of
        the event loop that hand it to the batcher and its answer back, each of which waits behind every
        other ready callback. A request that overtakes lower-priority runs in progress (a live request during
        a flood) and has at most ``inline_rows`` rows runs on the event loop itself: under a flood each turn
        waits behind the flood's decoding, and a thread costs two more of them than a run this small. Without
        a flood it takes a thread, which keeps the loop free for whoever arrives meanwhile and lets them form
        the next batch (run inline, a burst of lone requests would each run alone, one after another). A
        caller that gives up (its deadline) releases the slot at once while its thread finishes; the thread
        pool still bounds the runs in flight."""
        inline = self._runs > 0 and item.rows <= self.inline_rows
        self._runs += 1
        self._running_by_level[item.priority - 1] += 1
        caller = asyncio.current_task()
        assert caller is not None
        if item.deadline is not None:
            self._deadlines[item] = caller
        try:
            await self._execute([item], item.priority, self._run_on_loop if inline else self._run_batch)
        except asyncio.CancelledError:
            if item.expired and caller.uncancel() == 0:  # cancelled by the deadline timer, by nothing else
                raise DeadlineExceeded("request deadline exceeded while the model ran") from None
            raise
        return item.future.result()

    async def _run_on_loop(self, inputs: Tensors, _priority: int) -> Tensors:
        assert self._run_inline is not None
        return self._run_inline(inputs)

    def _make_room(self, level: int) -> None:
        """The queue is full: shed the newest request of the lowest priority below ``level``, or raise
        Overloaded for the newcomer when none waits below it."""
        for lower in range(self.priority_levels, level, -1):
            lane = self._lanes[lower - 1]
            if lane:
                victim = lane.pop()
                self._waiting -= 1
                self._shed[lower - 1] += 1
                if not victim.future.done():
                    victim.future.set_exception(Overloaded(
                        f"queue for {self.name} is full: shed for a request of a higher priority",
                        {"model": self.name, "queue_size": self.max_queue_size, "priority": lower}))
                return
        self._shed[level - 1] += 1
        raise Overloaded(f"queue for {self.name} is full ({self.max_queue_size} waiting requests)",
                         {"model": self.name, "queue_size": self.max_queue_size, "priority": level})

    async def _wait_for_item(self) -> None:
        # An Event, not Queue.get: nothing is taken out of a lane here.
        assert self._arrived is not None
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()

    async def _wait_for_arrival(self, timeout: float) -> bool:
        """Whether a request arrived within ``timeout``."""
        assert self._arrived is not None
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _company_due(self, forming: int) -> bool:
        """Whether more requests are about to arrive: the last batch carried more than this one holds and
        ended within the window (closed-loop clients resend as their answers land). A lone client's batch
        carried one request, so it never waits."""
        return forming < self._last_requests and time.monotonic() - self._last_ended < self.max_queue_delay

    def _may_start(self, level: int) -> bool:
        """Whether a batch led by a request of priority ``level`` may start now: a regular slot is free, or it
        is priority 1, fewer than ``max_concurrent_batches`` priority-1 batches run, and a reserved slot is free."""
        if self._runs < self.max_concurrent_batches:
            return True
        return (level == 1 and self._runs < self.max_concurrent_batches + self.reserved_slots
                and self._running_by_level[0] < self.max_concurrent_batches)

    async def _slot_freed(self, level: int) -> None:
        """Until a batch led by ``level`` may start, or a priority-1 request arrives that may (one wake per
        finished batch, not one per arriving request)."""
        assert self._freed is not None
        self._freed.clear()
        if not self._may_start(level):
            await self._freed.wait()

    def _plan(self, top_only: bool = False) -> tuple[list[int], int, bool, int]:
        """The batch a run started now would carry: how many requests it takes from each lane (priority 1
        first, FIFO within a lane), how many in all, whether it is complete (full, or the next request in
        line cannot join it: another shape, or too many rows), and the priority that leads it. Nothing is
        taken out. ``top_only``: priority-1 requests only (a batch for a reserved slot)."""
        counts = [0] * self.priority_levels
        key, rows, total, lead = None, 0, 0, self.priority_levels
        for index, lane in enumerate(self._lanes[:1] if top_only else self._lanes):
            for item in lane:
                if key is None:
                    key, lead = item.key, index + 1
                elif item.key != key or rows + item.rows > self.max_batch_size:
                    return counts, total, True, lead  # it starts the next batch; the order is kept
                counts[index] += 1
                total += 1
                rows += item.rows
                if rows >= self.max_batch_size:
                    return counts, total, True, lead
        return counts, total, False, lead

    def _take(self) -> tuple[list[_Pending], int]:
        # every regular slot busy: this batch takes a reserved one, which carries priority 1 only
        counts, total, _, lead = self._plan(top_only=self._runs >= self.max_concurrent_batches)
        batch = [lane.popleft() for lane, count in zip(self._lanes, counts) for _ in range(count)]
        self._waiting -= total
        return batch, lead

    def _outranks_runs(self, level: int) -> bool:
        """Whether every batch running now is led by a lower priority than ``level``."""
        return not any(self._running_by_level[:level])

    async def _loop(self) -> None:
        while True:
            await self._wait_for_item()
            collect_until = time.monotonic() + self.max_queue_delay
            # Decide when the next run starts; which requests it carries is decided only once it may start.
            while True:
                _, requests, complete, lead = self._plan()
                if not self._may_start(lead):  # every slot it may take is busy: who arrives meanwhile joins
                    await self._slot_freed(lead)
                    continue
                if complete or self._waiting >= self.max_queue_size:
                    break  # full, or nothing more can join (a new request is shed or displaces one)
                if (not self._runs or self._outranks_runs(lead)) and not self.wait_while_idle \
                        and not self._company_due(requests):
                    break  # idle (or busy only with lower priorities), nobody else queued or due: run now
                remaining = collect_until - time.monotonic()
                if remaining <= 0 or not await self._wait_for_arrival(remaining):
                    break
            batch, lead = self._take()  # formed now: a higher priority that arrived while it waited goes first
            if not batch:
                continue
            self._runs += 1
            self._running_by_level[lead - 1] += 1
            task = asyncio.get_running_loop().create_task(self._execute(batch, lead, self._run_batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[_Pending], lead: int, run_batch: BatchRunner) -> None:
        try:
            now = time.monotonic()
            live: list[_Pending] = []
            traced: list[_Pending] | None = None
            for item in batch:
                if item.future.done():  # the deadline timer failed it, or its caller went away
                    continue
                if item.deadline is not None and now >= item.deadline:
                    self._expired += 1
                    item.future.set_exception(DeadlineExceeded("request deadline passed before the model ran"))
                    continue
                item.running = True
                live.append(item)
                if item.trace is not None:
                    if traced is None:
                        traced = []
                    traced.append(item)
            if not live:
                return
            sizes = [item.rows for item in live]
            run = None if traced is None else self._trace_run(traced, sum(sizes))
            try:
                outputs = await run_batch(merge([item.inputs for item in live]), lead)
                parts = split(outputs, sizes)
            except Exception as exc:  # noqa: BLE001 - every waiter must learn about the failure
                if run is not None:
                    traced[0].trace.run_failed(run, exc)  # type: ignore[index, union-attr]
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            finally:
                if run is not None:
                    run.end()
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
            self._running_by_level[lead - 1] -= 1
            if self._freed is not None:
                self._freed.set()

    def _trace_run(self, traced: list[_Pending], rows: int):
        """The batch's model-run span (linked to every traced request in it), and each one's queue wait."""
        started = time.time_ns()
        first = traced[0].trace
        assert first is not None
        run = first.model_run(self.name, [item.trace for item in traced], rows)  # type: ignore[misc]
        for item in traced:
            item.trace.queued(item.queued_ns, started, item.priority, run)  # type: ignore[union-attr]
        return run

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
        leftovers = [item for lane in self._lanes for item in lane]
        for lane in self._lanes:
            lane.clear()
        self._waiting = 0
        for item in leftovers:
            if not item.future.done():
                item.future.set_exception(ServiceUnavailable(f"model {self.name} was unloaded"))
        if self._deadline_timer is not None and not self._deadlines:
            self._deadline_timer.cancel()
            self._deadline_timer, self._deadline_timer_at = None, float("inf")
