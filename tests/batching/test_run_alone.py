"""A request that would lead the next batch and may start it at once runs from its caller's task (no turn of
the event loop spent handing it to the batcher and back), on the event loop itself when it is small enough;
runs led by lower priorities take threads of a lower OS scheduling priority."""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest

from prediction_service.adapters.simple import SimpleAdapter
from prediction_service.execution.batching import DynamicBatcher
from prediction_service.execution.run_pools import RunPools
from prediction_service.registry import RegistryReader
from prediction_service.settings import BatchingSettings, Settings

from .test_adaptive import LONG_WINDOW_MS, _until
from .test_batcher import RecordingModel, rows


async def test_a_lone_request_runs_in_its_callers_task():
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay_ms=LONG_WINDOW_MS)

    async def caller():
        return asyncio.current_task(), await batcher.submit(rows(1.5))

    task, out = await asyncio.create_task(caller())
    np.testing.assert_allclose(out["y"], 3.0)
    assert model.tasks == [task]
    await batcher.close()


async def test_a_live_request_runs_alone_past_queued_lower_priorities():
    """The regular slot holds a priority-3 run and more priority-3 requests wait: a priority-1 request takes the
    reserved slot from its own task, and the queued ones stay queued."""
    model = RecordingModel()
    model.gate = asyncio.Event()
    batcher = DynamicBatcher(model, max_batch_size=1, max_queue_delay_ms=LONG_WINDOW_MS, max_concurrent_batches=1,
                             priority_levels=3, reserved_slots=1)
    flood = [asyncio.create_task(batcher.submit(rows(float(i)), priority=3)) for i in range(3)]
    await _until(lambda: model.tasks and batcher.queue_depth == 2)
    live_gate, model.gate = model.gate, None  # the live run is not held
    live = asyncio.create_task(batcher.submit(rows(7.0), priority=1))
    out = await asyncio.wait_for(live, 10)
    np.testing.assert_allclose(out["y"], 14.0)
    assert model.tasks[-1] is live and model.leads == [3, 1]
    assert batcher.queue_depth == 2
    live_gate.set()
    await asyncio.gather(*flood)
    assert model.leads == [3, 1, 3, 3]
    await batcher.close()


async def test_a_small_request_that_overtakes_a_lower_priority_run_runs_on_the_event_loop():
    """Inline only while it overtakes lower-priority runs, and only up to ``inline_rows``: a lone request on
    an idle batcher takes the runner (a thread), so that whoever arrives meanwhile forms the next batch."""
    model = RecordingModel()
    inline_threads: list[int] = []

    def run_inline(inputs):
        inline_threads.append(threading.get_ident())
        return {"y": inputs["x"] * 2}

    batcher = DynamicBatcher(model, max_batch_size=8, max_concurrent_batches=2, priority_levels=3,
                             run_inline=run_inline, inline_rows=2)
    idle = await batcher.submit(rows(1.0), priority=1)
    assert not inline_threads and len(model.tasks) == 1
    held = model.gate = asyncio.Event()
    flood = asyncio.create_task(batcher.submit(rows(5.0, n=8), priority=3))
    await _until(lambda: len(model.tasks) == 2)  # a priority-3 run holds a slot
    model.gate = None
    small = await batcher.submit(rows(1.0, n=2), priority=1)
    assert inline_threads == [threading.get_ident()] and len(model.tasks) == 2
    large = await batcher.submit(rows(1.0, n=3), priority=1)
    assert len(inline_threads) == 1 and len(model.tasks) == 3 and model.leads == [1, 3, 1]
    for out in (idle, small, large):
        np.testing.assert_allclose(out["y"], 2.0)
    held.set()
    np.testing.assert_allclose((await flood)["y"], 10.0)
    await batcher.close()


def _nice_of_a_run(pool) -> int:
    return pool.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result(timeout=10)


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="per-thread priorities are a Linux feature")
def test_runs_led_by_lower_priorities_take_threads_of_a_lower_os_priority():
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    pools = RunPools("test", urgent_threads=2, background_threads=2, background_nice=5)
    try:
        assert _nice_of_a_run(pools.for_priority(1)) == base
        assert _nice_of_a_run(pools.for_priority(2)) == _nice_of_a_run(pools.for_priority(3)) == min(base + 5, 19)
    finally:
        pools.shutdown()
    same = RunPools("test", urgent_threads=2, background_threads=2, background_nice=0)
    try:
        assert same.for_priority(3) is same.for_priority(1)
    finally:
        same.shutdown()


@pytest.mark.parametrize("budget_us, fmt", [(200.0, "onnx"), (0.0, "onnx"), (200.0, "torchscript")])
async def test_a_loaded_model_says_how_many_rows_run_on_the_event_loop(tiny_store, budget_us, fmt):
    """None with the budget at 0, and none for TorchScript, whose runs take turns on a lock (on the event
    loop a run would wait there for another's, and the loop with it)."""
    settings = Settings(model_store=tiny_store, batching=BatchingSettings(inline_run_max_us=budget_us))
    adapter = SimpleAdapter(settings)
    adapter.formats = (fmt,)
    try:
        loaded = await adapter.load(RegistryReader(tiny_store).resolve("tiny-regressor"))
        batcher = adapter._models[loaded.key].batcher
        assert loaded.artifact.format == fmt
        if budget_us and fmt == "onnx":
            rows, one_row_us = loaded.details["inline_rows"], loaded.details["one_row_run_us"]  # rounded to 0.1
            assert one_row_us > 0 and batcher.inline_rows == rows
            assert rows * max(one_row_us - 0.05, 1.0) <= budget_us  # they fit the budget
            assert rows == loaded.version.signature.max_batch_size or \
                (rows + 1) * max(one_row_us + 0.05, 1.0) > budget_us  # and one more would not
        else:
            assert "inline_rows" not in loaded.details and batcher.inline_rows == 0
        out = await adapter.predict(loaded.key, {"x": np.ones((1, 4), dtype=np.float32)})
        assert next(iter(out.values())).shape[0] == 1
    finally:
        await adapter.close()
