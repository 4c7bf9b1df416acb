"""Adaptive batching: a lone request never waits for company while a run slot is free; requests that arrive
while every slot is busy join one batch; a model may ask for the waiting window back."""

from __future__ import annotations

import asyncio

import numpy as np

from prediction_service.execution.batching import DynamicBatcher

from .test_batcher import RecordingModel, rows

LONG_WINDOW_MS = 60_000.0  # a window no test could wait out: a request that waited for company would hang


async def _until(condition) -> None:
    async with asyncio.timeout(10):  # a guard against hanging, not a timing assertion
        while not condition():
            await asyncio.sleep(0)


async def test_a_lone_request_runs_at_once_whatever_the_window():
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay_ms=LONG_WINDOW_MS)
    async with asyncio.timeout(10):
        out = await batcher.submit(rows(1.5))
    np.testing.assert_allclose(out["y"], 3.0)
    assert model.batches == [1]
    await batcher.close()


async def test_requests_that_arrive_while_every_slot_is_busy_run_as_one_batch():
    model = RecordingModel()
    model.gate = asyncio.Event()
    batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay_ms=LONG_WINDOW_MS, max_concurrent_batches=1)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await _until(lambda: model.batches == [1])  # it holds the only slot
    waiting = [asyncio.create_task(batcher.submit(rows(value))) for value in (2, 3, 4)]
    await _until(lambda: batcher.queue_depth == 3)
    model.gate.set()
    results = await asyncio.gather(first, *waiting)
    assert model.batches == [1, 3]  # the three that queued behind the busy slot ran together
    assert model.tasks[0] is first and model.tasks[1] not in (first, *waiting)  # the batch in the batcher's task
    assert [float(r["y"][0, 0]) for r in results] == [2.0, 4.0, 6.0, 8.0]
    await batcher.close()


async def test_a_full_batch_formed_while_busy_leaves_the_rest_for_the_next():
    model = RecordingModel()
    model.gate = asyncio.Event()
    batcher = DynamicBatcher(model, max_batch_size=2, max_concurrent_batches=1)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await _until(lambda: model.batches == [1])
    waiting = [asyncio.create_task(batcher.submit(rows(value))) for value in (2, 3, 4)]
    await _until(lambda: batcher.queue_depth == 3)
    model.gate.set()
    await asyncio.gather(first, *waiting)
    assert model.batches == [1, 2, 1]
    await batcher.close()


async def test_a_model_that_asks_for_the_window_waits_for_company_while_a_slot_is_free():
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay_ms=LONG_WINDOW_MS, wait_while_idle=True)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await _until(lambda: batcher.queue_depth == 1)
    for _ in range(20):  # the loop has had every chance to run it alone
        await asyncio.sleep(0)
    assert model.batches == []
    rest = [asyncio.create_task(batcher.submit(rows(value))) for value in range(2, 9)]  # fills the batch
    await asyncio.gather(first, *rest)
    assert model.batches == [8]
    await batcher.close()


async def test_under_load_a_batch_collects_company_even_with_a_slot_free():
    model = RecordingModel()
    model.gate = asyncio.Event()
    batcher = DynamicBatcher(model, max_batch_size=2, max_queue_delay_ms=LONG_WINDOW_MS, max_concurrent_batches=2)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await _until(lambda: model.batches == [1])  # a run in progress: the model is under load
    second = asyncio.create_task(batcher.submit(rows(2)))
    await _until(lambda: batcher.queue_depth == 1)
    for _ in range(20):  # a slot is free, yet the second waits for company instead of running alone
        await asyncio.sleep(0)
    assert model.batches == [1]
    third = asyncio.create_task(batcher.submit(rows(3)))  # fills the batch: it runs in the free slot
    await _until(lambda: model.batches == [1, 2])
    model.gate.set()
    await asyncio.gather(first, second, third)
    await batcher.close()


async def test_after_a_batch_of_several_the_next_arrival_waits_for_the_others_to_resend():
    model = RecordingModel()
    model.gate = asyncio.Event()
    batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay_ms=LONG_WINDOW_MS, max_concurrent_batches=1)
    first = asyncio.create_task(batcher.submit(rows(0)))
    await _until(lambda: model.batches == [1])
    burst = [asyncio.create_task(batcher.submit(rows(value))) for value in (1, 2, 3)]
    await _until(lambda: batcher.queue_depth == 3)
    model.gate.set()
    await asyncio.gather(first, *burst)  # the last batch carried three requests
    assert model.batches == [1, 3]
    again = [asyncio.create_task(batcher.submit(rows(1)))]  # the first of three clients resending
    for _ in range(20):
        await asyncio.sleep(0)
    assert model.batches == [1, 3]  # company is due: it waits instead of running alone
    again += [asyncio.create_task(batcher.submit(rows(value))) for value in (2, 3)]
    await asyncio.gather(*again)
    assert model.batches == [1, 3, 3]
    await batcher.close()
