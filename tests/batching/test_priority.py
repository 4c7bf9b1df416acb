"""Priority lanes in the dynamic batcher, with a gated model: every run waits on an event the test sets, so
which requests share a run and in what order is decided by the batcher alone, never by timing."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from prediction_service.errors import Overloaded
from prediction_service.execution.batching import DynamicBatcher

LONG_WINDOW_MS = 60_000.0


class GatedModel:
    """y = x; each run records the first value of each row and waits until the test lets it finish."""

    def __init__(self):
        self.runs: list[list[float]] = []
        self.leads: list[int] = []
        """The priority the batcher said leads each run (what picks its thread pool)."""
        self.gates: list[asyncio.Event] = []

    async def __call__(self, inputs, priority: int):
        self.runs.append([float(v) for v in inputs["x"][:, 0]])
        self.leads.append(priority)
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return {"y": inputs["x"].copy()}

    def release(self, run: int) -> None:
        self.gates[run].set()


def rows(value: float, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 3), value, dtype=np.float32)}


async def until(condition) -> None:
    async with asyncio.timeout(10):  # a guard against hanging, not a timing assertion
        while not condition():
            await asyncio.sleep(0)


async def settled(count: int = 20) -> None:
    """Let the batcher's loop run as often as it wants (it decides on events, never on time)."""
    for _ in range(count):
        await asyncio.sleep(0)


def batcher(model: GatedModel, **options) -> DynamicBatcher:
    defaults = dict(max_batch_size=2, max_queue_delay_ms=LONG_WINDOW_MS, max_concurrent_batches=1,
                    priority_levels=3, default_priority=2)
    return DynamicBatcher(model, **{**defaults, **options})


async def test_a_waiting_high_priority_request_runs_next_ahead_of_queued_low_ones():
    model = GatedModel()
    queue = batcher(model)
    running = asyncio.create_task(queue.submit(rows(0), priority=3))
    await until(lambda: len(model.runs) == 1)  # holds the only run slot
    low = [asyncio.create_task(queue.submit(rows(value), priority=3)) for value in (1, 2, 3)]
    await until(lambda: queue.queue_depth == 3)
    high = asyncio.create_task(queue.submit(rows(9), priority=1))
    await until(lambda: queue.queue_depth == 4)
    assert queue.stats.depth_by_priority == (1, 0, 3)

    model.release(0)
    await until(lambda: len(model.runs) == 2)
    assert model.runs[1] == [9.0, 1.0]  # the high one first, then the oldest low one that fits
    model.release(1)
    await until(lambda: len(model.runs) == 3)
    assert model.runs[2] == [2.0, 3.0]
    assert model.leads == [3, 1, 3]  # what picks each run's thread pool
    model.release(2)
    results = await asyncio.gather(running, *low, high)
    assert [float(r["y"][0, 0]) for r in results] == [0.0, 1.0, 2.0, 3.0, 9.0]
    await queue.close()


async def test_a_low_priority_batch_delays_a_high_one_by_one_run_at_most():
    """Two run slots, both busy with low-priority batches, and more low ones queued: the high request that
    arrives runs in the first slot that frees, before any of the queued low ones."""
    model = GatedModel()
    queue = batcher(model, max_batch_size=32, max_concurrent_batches=2)
    first = [asyncio.create_task(queue.submit(rows(value, 32), priority=3)) for value in (0, 1)]
    await until(lambda: len(model.runs) == 2)
    queued = [asyncio.create_task(queue.submit(rows(value, 32), priority=3)) for value in (2, 3, 4)]
    await until(lambda: queue.queue_depth == 3)
    high = asyncio.create_task(queue.submit(rows(9), priority=1))
    await until(lambda: queue.queue_depth == 4)

    model.release(1)  # one low batch ends: the next run is the high request's, alone (32 low rows do not fit)
    await until(lambda: len(model.runs) == 3)
    assert model.runs[2] == [9.0]
    model.release(2)
    assert float((await high)["y"][0, 0]) == 9.0
    assert not any(task.done() for task in queued)  # they still wait: the high one went first
    for run in range(6):
        await until(lambda: len(model.runs) > run)
        model.release(run)
    await asyncio.gather(*first, *queued)
    assert [run[0] for run in model.runs] == [0.0, 1.0, 9.0, 2.0, 3.0, 4.0]
    await queue.close()


async def test_the_batch_is_formed_when_a_slot_frees_not_before():
    """Low requests that queued while the slot was busy do not hold their places in a batch: a high request
    arriving after them still runs in the next batch, and the low one that no longer fits waits."""
    model = GatedModel()
    queue = batcher(model, max_batch_size=3)
    running = asyncio.create_task(queue.submit(rows(0), priority=2))
    await until(lambda: len(model.runs) == 1)
    low = [asyncio.create_task(queue.submit(rows(value), priority=3)) for value in (1, 2, 3)]
    await until(lambda: queue.queue_depth == 3)
    await settled()
    high = asyncio.create_task(queue.submit(rows(9, 2), priority=1))
    await until(lambda: queue.queue_depth == 4)
    model.release(0)
    await until(lambda: len(model.runs) == 2)
    assert model.runs[1] == [9.0, 9.0, 1.0]
    model.release(1)
    await until(lambda: len(model.runs) == 3)
    assert model.runs[2] == [2.0, 3.0]
    model.release(2)
    await asyncio.gather(running, high, *low)
    await queue.close()


async def test_requests_without_a_priority_queue_at_the_default():
    model = GatedModel()
    queue = batcher(model, max_batch_size=1)
    running = asyncio.create_task(queue.submit(rows(0)))
    await until(lambda: len(model.runs) == 1)
    waiting = [asyncio.create_task(queue.submit(rows(1))),              # 0: the default, 2
               asyncio.create_task(queue.submit(rows(2), priority=7)),  # past the levels: the default too
               asyncio.create_task(queue.submit(rows(3), priority=3))]
    await until(lambda: queue.queue_depth == 3)
    assert queue.stats.depth_by_priority == (0, 2, 1)
    for run in range(4):
        await until(lambda: len(model.runs) > run)
        model.release(run)
    await asyncio.gather(running, *waiting)
    assert [run[0] for run in model.runs] == [0.0, 1.0, 2.0, 3.0]
    await queue.close()


async def test_a_full_queue_sheds_the_lowest_priority_first():
    model = GatedModel()
    queue = batcher(model, max_batch_size=1, max_queue_size=3)
    running = asyncio.create_task(queue.submit(rows(0), priority=1))
    await until(lambda: len(model.runs) == 1)
    low_old = asyncio.create_task(queue.submit(rows(1), priority=3))
    low_new = asyncio.create_task(queue.submit(rows(2), priority=3))
    middle = asyncio.create_task(queue.submit(rows(3), priority=2))
    await until(lambda: queue.queue_depth == 3)
    assert not queue.refuses_every_priority  # lower ones wait: a higher request takes a place

    high = asyncio.create_task(queue.submit(rows(4), priority=1))  # displaces the newest of the lowest lane
    with pytest.raises(Overloaded, match="higher priority"):
        await low_new
    with pytest.raises(Overloaded, match="is full"):  # nothing below priority 3 waits: the newcomer is shed
        await queue.submit(rows(5), priority=3)
    second = asyncio.create_task(queue.submit(rows(6), priority=2))  # displaces the last priority-3 request
    with pytest.raises(Overloaded):
        await low_old
    with pytest.raises(Overloaded, match="is full"):  # two at 2, one at 1: nothing below 2 to displace
        await queue.submit(rows(7), priority=2)
    await until(lambda: queue.queue_depth == 3)
    assert queue.stats.depth_by_priority == (1, 2, 0)
    assert queue.stats.shed_by_priority == (0, 1, 3)
    assert queue.stats.shed == 4

    third = asyncio.create_task(queue.submit(rows(8), priority=1))  # displaces the newest priority-2 request
    with pytest.raises(Overloaded):
        await second
    await until(lambda: queue.queue_depth == 3)
    assert queue.stats.depth_by_priority == (2, 1, 0)
    with pytest.raises(Overloaded):
        await queue.submit(rows(9), priority=2)
    assert not queue.refuses_every_priority
    assert queue.stats.shed_by_priority == (0, 3, 3)

    for run in range(4):
        await until(lambda: len(model.runs) > run)
        model.release(run)
    await asyncio.gather(running, middle, high, third)
    assert [run[0] for run in model.runs] == [0.0, 4.0, 8.0, 3.0]
    await queue.close()


async def test_a_queue_full_of_the_highest_priority_refuses_everyone():
    model = GatedModel()
    queue = batcher(model, max_batch_size=1, max_queue_size=2)
    running = asyncio.create_task(queue.submit(rows(0), priority=1))
    await until(lambda: len(model.runs) == 1)
    waiting = [asyncio.create_task(queue.submit(rows(value), priority=1)) for value in (1, 2)]
    await until(lambda: queue.queue_depth == 2)
    assert queue.refuses_every_priority  # what admission asks before a body (and its priority) is read
    with pytest.raises(Overloaded):
        await queue.submit(rows(3), priority=1)
    assert queue.stats.shed_by_priority == (1, 0, 0)
    for run in range(3):
        await until(lambda: len(model.runs) > run)
        model.release(run)
    await asyncio.gather(running, *waiting)
    await queue.close()


class RecordingTrace:
    """The batcher's side of a request's trace (monitoring/tracing.py's RequestTrace), recorded."""

    runs: list[tuple[str, list["RecordingTrace"], int]] = []

    def __init__(self, name: str):
        self.name = name
        self.waits: list[tuple[int, int, int, object]] = []

    def queued(self, started_ns, ended_ns, priority, run) -> None:
        self.waits.append((started_ns, ended_ns, priority, run))

    def model_run(self, model, traces, rows):
        RecordingTrace.runs.append((model, list(traces), rows))
        return Run()

    def run_failed(self, run, error) -> None:
        run.failed = error


class Run:
    ended = 0
    failed = None

    def end(self) -> None:
        self.ended += 1


async def test_traced_requests_get_their_queue_wait_and_one_linked_run_per_batch():
    RecordingTrace.runs = []
    model = GatedModel()
    queue = batcher(model, max_batch_size=4, name="m:1")
    running = asyncio.create_task(queue.submit(rows(0)))  # untraced: costs the batcher nothing but None checks
    await until(lambda: len(model.runs) == 1)
    a, b = RecordingTrace("a"), RecordingTrace("b")
    waiting = [asyncio.create_task(queue.submit(rows(1), priority=3, trace=a)),
               asyncio.create_task(queue.submit(rows(2), priority=1, trace=b)),
               asyncio.create_task(queue.submit(rows(3)))]
    await until(lambda: queue.queue_depth == 3)
    model.release(0)
    await until(lambda: len(model.runs) == 2)
    assert RecordingTrace.runs[0][0] == "m:1" and RecordingTrace.runs[0][2] == 3  # rows of the whole batch
    assert [trace.name for trace in RecordingTrace.runs[0][1]] == ["b", "a"]  # in batch order
    (started, ended, priority, run), = a.waits
    assert priority == 3 and 0 < started <= ended and run.ended == 0
    model.release(1)
    await asyncio.gather(running, *waiting)
    assert run.ended == 1 and b.waits[0][3] is run  # one span for the batch, ended after its run
    await queue.close()


async def test_a_reserved_slot_starts_a_priority_1_batch_while_lower_ones_hold_the_others():
    model = GatedModel()
    queue = batcher(model, max_batch_size=32, reserved_slots=1)  # one regular slot, one reserved
    low = asyncio.create_task(queue.submit(rows(0, 32), priority=3))
    await until(lambda: len(model.runs) == 1)
    middle = asyncio.create_task(queue.submit(rows(1), priority=2))  # not priority 1: waits for the slot
    await until(lambda: queue.queue_depth == 1)
    await settled()
    assert len(model.runs) == 1
    high = asyncio.create_task(queue.submit(rows(9), priority=1))
    await until(lambda: len(model.runs) == 2)  # at once, beside the low run still in progress
    assert model.runs[1] == [9.0]
    second_high = asyncio.create_task(queue.submit(rows(8), priority=1))
    await until(lambda: queue.queue_depth == 2)
    await settled()
    assert len(model.runs) == 2  # both slots busy: it waits like anyone
    model.release(1)
    assert float((await high)["y"][0, 0]) == 9.0
    await until(lambda: len(model.runs) == 3)
    assert model.runs[2] == [8.0]  # the reserved slot again: the regular one is still the low batch's
    model.release(2)
    await second_high
    assert not low.done() and not middle.done()
    model.release(0)
    await until(lambda: len(model.runs) == 4)
    model.release(3)
    await asyncio.gather(low, middle)
    await queue.close()


async def test_traffic_of_one_priority_never_takes_the_reserved_slot():
    model = GatedModel()
    queue = batcher(model, max_batch_size=1, reserved_slots=1)
    first = asyncio.create_task(queue.submit(rows(0), priority=1))
    await until(lambda: len(model.runs) == 1)
    second = asyncio.create_task(queue.submit(rows(1), priority=1))
    await until(lambda: queue.queue_depth == 1)
    await settled()
    assert len(model.runs) == 1  # one regular slot, held by priority 1: as without lanes
    model.release(0)
    await until(lambda: len(model.runs) == 2)
    model.release(1)
    await asyncio.gather(first, second)
    await queue.close()


async def test_a_batch_that_outranks_every_run_skips_the_company_window():
    """Under load a forming batch waits for company while a slot is free, unless the load is of lower
    priority: then it would only wait."""
    model = GatedModel()
    queue = batcher(model, max_batch_size=8, max_concurrent_batches=2)  # the window is a minute long
    low = asyncio.create_task(queue.submit(rows(0), priority=3))
    await until(lambda: len(model.runs) == 1)
    high = asyncio.create_task(queue.submit(rows(9), priority=1))
    await until(lambda: len(model.runs) == 2)  # in the free slot, at once
    model.release(1)
    await high
    model.release(0)
    await low
    await queue.close()
    # (a request of the run's own priority waits for company instead: tests/batching/test_adaptive.py)
