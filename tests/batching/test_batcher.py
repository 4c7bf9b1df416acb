"""DynamicBatcher internals, without a server."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from prediction_service.execution.batching import DynamicBatcher, merge, merge_signature, split
from prediction_service.errors import DeadlineExceeded, Overloaded, PredictionServiceError


class RecordingModel:
    """y = 2x, remembering the size of every batch it ran, the task it ran in and the priority said to lead it;
    optionally held by ``gate``, slow or failing."""

    def __init__(self, delay: float = 0.0, fail: bool = False, drop_row: bool = False):
        self.batches: list[int] = []
        self.tasks: list[asyncio.Task | None] = []
        self.leads: list[int] = []
        self.delay, self.fail, self.drop_row = delay, fail, drop_row
        self.gate: asyncio.Event | None = None

    async def __call__(self, inputs, priority: int = 1):
        self.batches.append(inputs["x"].shape[0])
        self.tasks.append(asyncio.current_task())
        self.leads.append(priority)
        if self.gate is not None:  # read at once: a test may swap it out for later runs
            await self.gate.wait()
        await asyncio.sleep(0)  # a run ends on a later turn of the loop, as one on a thread does
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise PredictionServiceError("model exploded")
        y = inputs["x"] * 2
        return {"y": y[:-1] if self.drop_row else y}


def rows(value: float, n: int = 1, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, dtype=np.float32)}


def test_merge_and_split_round_trip():
    parts = [rows(1, 2), rows(2, 1), rows(3, 3)]
    merged = merge(parts)
    assert merged["x"].shape == (6, 3)
    back = split(merged, [2, 1, 3])
    for original, piece in zip(parts, back):
        np.testing.assert_array_equal(original["x"], piece["x"])


def test_split_refuses_wrong_row_count():
    with pytest.raises(PredictionServiceError, match="rows"):
        split({"y": np.zeros((3, 1))}, [2, 2])


def test_merge_signature_separates_shapes():
    assert merge_signature(rows(1, width=3)) != merge_signature(rows(1, width=4))
    assert merge_signature(rows(1, 1)) == merge_signature(rows(5, 7))


async def test_concurrent_requests_merge_into_one_run_and_route_back():
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=64, max_queue_delay_ms=50)
    results = await asyncio.gather(*(batcher.submit(rows(float(i), n=1 + i % 3)) for i in range(20)))
    assert sum(model.batches) == sum(1 + i % 3 for i in range(20))
    assert len(model.batches) < 20  # merged
    assert max(model.batches) > 1
    for i, result in enumerate(results):  # each caller gets its own rows back
        assert result["y"].shape == (1 + i % 3, 3)
        np.testing.assert_array_equal(result["y"], np.full((1 + i % 3, 3), 2.0 * i, dtype=np.float32))
    await batcher.close()


async def test_batch_never_exceeds_max_batch_size():
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay_ms=20)
    await asyncio.gather(*(batcher.submit(rows(1.0, n=3)) for i in range(12)))
    assert max(model.batches) <= 8
    assert sum(model.batches) == 36
    await batcher.close()


async def test_different_shapes_are_not_merged():
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=64, max_queue_delay_ms=20)
    a, b = await asyncio.gather(batcher.submit(rows(1.0, width=3)), batcher.submit(rows(1.0, width=5)))
    assert a["y"].shape == (1, 3) and b["y"].shape == (1, 5)
    assert len(model.batches) == 2
    await batcher.close()


async def test_queue_bound_sheds_load():
    model = RecordingModel()
    model.gate = asyncio.Event()  # hold the first batch so the queue fills up
    batcher = DynamicBatcher(model, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=4)
    first = asyncio.ensure_future(batcher.submit(rows(0.0)))
    await asyncio.sleep(0.01)
    waiting = [asyncio.ensure_future(batcher.submit(rows(float(i)))) for i in range(4)]
    await asyncio.sleep(0.01)
    assert batcher.queue_depth == 4
    with pytest.raises(Overloaded):
        await batcher.submit(rows(9.0))
    assert batcher.stats.shed == 1
    model.gate.set()
    await asyncio.gather(first, *waiting)
    await batcher.close()


async def test_failed_batch_fails_every_waiter():
    batcher = DynamicBatcher(RecordingModel(fail=True), max_batch_size=16, max_queue_delay_ms=20)
    results = await asyncio.gather(*(batcher.submit(rows(1.0)) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, PredictionServiceError) and "exploded" in str(r) for r in results)
    # and it keeps working afterwards
    batcher._run_batch = RecordingModel()
    assert (await batcher.submit(rows(2.0)))["y"][0, 0] == 4.0
    await batcher.close()


async def test_output_row_mismatch_is_an_error_not_a_misroute():
    batcher = DynamicBatcher(RecordingModel(drop_row=True), max_batch_size=16, max_queue_delay_ms=20)
    results = await asyncio.gather(*(batcher.submit(rows(1.0)) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, PredictionServiceError) for r in results)
    await batcher.close()


async def test_expired_requests_are_dropped_before_the_model_runs():
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=16, max_queue_delay_ms=30)
    expired = batcher.submit(rows(1.0), deadline=time.monotonic() - 0.001)
    alive = batcher.submit(rows(2.0), deadline=time.monotonic() + 5)
    results = await asyncio.gather(expired, alive, return_exceptions=True)
    assert isinstance(results[0], DeadlineExceeded)
    assert results[1]["y"][0, 0] == 4.0
    assert model.batches == [1]
    assert batcher.stats.expired == 1
    await batcher.close()


async def test_the_batcher_fails_a_queued_request_at_its_deadline_and_counts_it_once():
    """No timer of the caller's: the batcher's own fails the request while an earlier run holds the only slot."""
    model = RecordingModel()
    model.gate = asyncio.Event()
    batcher = DynamicBatcher(model, max_batch_size=1, max_queue_delay_ms=0)
    holder = asyncio.ensure_future(batcher.submit(rows(1.0)))
    while not model.batches:
        await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="before the model ran"):
        await batcher.submit(rows(2.0), deadline=time.monotonic() + 0.05)
    assert time.monotonic() - started < 5  # answered at its deadline, not when the slot freed
    model.gate.set()
    assert (await holder)["y"][0, 0] == 2.0
    assert model.batches == [1] and batcher.stats.expired == 1  # it never ran, and counts once
    await batcher.close()


@pytest.mark.parametrize("alone", [True, False], ids=["running alone", "in a batch"])
async def test_a_request_whose_deadline_passes_while_its_run_is_held_fails_then_and_frees_its_caller(alone):
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=4, max_queue_delay_ms=0)
    held = model.gate = asyncio.Event()
    if not alone:  # queue it behind a run first, so the batcher's task runs it
        model.gate = first_gate = asyncio.Event()
        first = asyncio.ensure_future(batcher.submit(rows(1.0)))
        while not model.batches:
            await asyncio.sleep(0)
    late = asyncio.ensure_future(batcher.submit(rows(2.0), deadline=time.monotonic() + 0.05))
    if not alone:
        await asyncio.sleep(0)
        model.gate = held
        first_gate.set()
        assert (await first)["y"][0, 0] == 2.0
    with pytest.raises(DeadlineExceeded, match="while the model ran"):
        await late  # its run is still held by the gate
    assert model.batches[-1] == 1 and not held.is_set()
    held.set()
    assert (await batcher.submit(rows(3.0), deadline=time.monotonic() + 5))["y"][0, 0] == 6.0
    assert batcher.stats.expired == 0  # it ran: a late answer, not an expired request
    await batcher.close()


async def test_a_caller_cancelled_while_running_alone_is_cancelled_not_expired():
    model = RecordingModel()
    model.gate = asyncio.Event()
    batcher = DynamicBatcher(model, max_batch_size=4, max_queue_delay_ms=0)
    task = asyncio.ensure_future(batcher.submit(rows(1.0), deadline=time.monotonic() + 30))
    while not model.batches:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    model.gate.set()
    assert (await batcher.submit(rows(2.0), deadline=time.monotonic() + 5))["y"][0, 0] == 4.0
    await batcher.close()


async def test_close_drains_queued_work():
    model = RecordingModel(delay=0.02)
    batcher = DynamicBatcher(model, max_batch_size=2, max_queue_delay_ms=0)
    pending = [asyncio.ensure_future(batcher.submit(rows(float(i)))) for i in range(6)]
    await asyncio.sleep(0)
    await batcher.close(drain_timeout=5)
    results = await asyncio.gather(*pending)
    assert [float(r["y"][0, 0]) for r in results] == [2.0 * i for i in range(6)]


async def test_a_batch_that_holds_the_whole_queue_runs_without_waiting_for_more():
    """With the queue at its cap no request can join the forming batch (they are shed), so it runs at
    once instead of waiting out max_queue_delay (a minute here, which a model that asks for its window waits
    even while a slot is free)."""
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=32, max_queue_delay_ms=60_000, max_queue_size=3,
                             wait_while_idle=True)
    answers = await asyncio.wait_for(asyncio.gather(*(batcher.submit(rows(i)) for i in range(3))), timeout=30)
    assert [float(a["y"][0, 0]) for a in answers] == [0.0, 2.0, 4.0]
    assert model.batches == [3]
    await batcher.close()
