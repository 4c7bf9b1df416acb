"""Group commit: callers that arrive while a write runs share the next one; each gets its own result or the
write's exception."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from prediction_service.execution.group_commit import GroupCommit


async def test_writes_arriving_during_a_commit_share_the_next_one():
    batches: list[list[int]] = []
    first_running, release = threading.Event(), threading.Event()

    def write(items: list[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            first_running.set()
            release.wait(10)
        return [item * 10 for item in items]

    commits = GroupCommit(write)
    first = asyncio.create_task(commits.submit(1))
    await asyncio.to_thread(first_running.wait, 10)  # the first commit holds the writer
    later = [asyncio.create_task(commits.submit(i)) for i in range(2, 7)]
    await asyncio.sleep(0.01)
    release.set()
    assert await first == 10 and await asyncio.gather(*later) == [20, 30, 40, 50, 60]
    assert batches == [[1], [2, 3, 4, 5, 6]]  # two commits for six records


async def test_every_caller_of_a_failed_commit_gets_its_exception_and_the_next_batch_still_runs():
    calls = 0

    def write(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if "bad" in items:
            raise OSError("disk full")
        return items

    commits = GroupCommit(write)
    failed = await asyncio.gather(commits.submit("bad"), commits.submit("ok"), return_exceptions=True)
    assert all(isinstance(result, OSError) for result in failed)
    assert await commits.submit("after") == "after" and calls == 2


async def test_a_write_that_answers_the_wrong_number_of_results_fails_its_callers():
    commits = GroupCommit(lambda items: [])
    with pytest.raises(ValueError):
        await commits.submit("x")


async def test_enqueued_items_are_written_behind_and_flush_waits_for_them():
    written: list[str] = []
    failures: list[tuple[str, int]] = []

    def write(items: list[str]) -> list[bool]:
        if "bad" in items:
            raise OSError("disk full")
        written.extend(items)
        return [True] * len(items)

    commits = GroupCommit(write, on_error=lambda exc, count: failures.append((str(exc), count)))
    commits.enqueue("a")
    commits.enqueue("b")
    assert written == []  # nothing waited for the write
    await commits.flush()
    assert written == ["a", "b"]
    commits.enqueue("bad")
    await commits.flush()
    assert failures == [("disk full", 1)]


async def test_write_behind_items_linger_for_company_and_a_waiting_caller_cuts_it_short():
    batches: list[list[int]] = []

    def write(items: list[int]) -> list[int]:
        batches.append(list(items))
        return items

    commits = GroupCommit(write, linger_s=30.0)  # far longer than the test: only a waiter can end it
    for i in range(5):
        commits.enqueue(i)
        await asyncio.sleep(0.01)  # the writer has started and lingers
    assert batches == []  # nobody waits: the five keep lingering together
    assert await asyncio.wait_for(commits.submit(5), 5) == 5  # an awaited item writes at once, with them
    assert batches == [[0, 1, 2, 3, 4, 5]]
    commits.enqueue(6)
    await asyncio.wait_for(commits.flush(), 5)  # so does a flush
    assert batches == [[0, 1, 2, 3, 4, 5], [6]]


async def test_a_flush_under_steady_load_waits_only_for_what_was_handed_over_before_it():
    written: list[int] = []

    def write(items: list[int]) -> list[int]:
        time.sleep(0.005)  # a commit takes longer than items take to arrive
        written.extend(items)
        return items

    commits = GroupCommit(write, linger_s=0.05)
    stop, sent = asyncio.Event(), []

    async def load() -> None:  # items never stop coming, so the writer never runs out of work
        while not stop.is_set():
            sent.append(len(sent))
            commits.enqueue(sent[-1])
            await asyncio.sleep(0.001)

    producer = asyncio.create_task(load())
    await asyncio.sleep(0.1)
    before = list(sent)
    await asyncio.wait_for(commits.flush(), 5)
    assert set(before) <= set(written)
    stop.set()
    await producer
    await commits.flush()
