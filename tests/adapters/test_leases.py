"""BackendLeases: the last worker holding a shared backend model is the one that unloads it."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

from prediction_service.adapters.leases import BackendLeases


def test_only_the_last_holder_is_told_to_unload(tmp_path):
    worker_a, worker_b = BackendLeases(tmp_path), BackendLeases(tmp_path)
    worker_a.acquire("m")
    worker_b.acquire("m")
    assert len(worker_a.holders("m")) == 2
    assert worker_a.release("m") is False  # b still serves it
    assert worker_b.release("m") is True
    assert worker_b.holders("m") == []
    assert BackendLeases(tmp_path).release("never-held") is True


def test_leases_of_dead_processes_on_this_host_are_dropped(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / f"{socket.gethostname()}-{dead_pid}-deadbeef").touch()  # a crashed worker's lease
    (folder / f"other-host.example-{dead_pid}-cafebabe").touch()  # cannot be checked from here: kept
    leases = BackendLeases(tmp_path)
    leases.acquire("m")
    assert leases.release("m") is False  # the other host's lease keeps the model
    assert [p.name for p in folder.iterdir()] == [f"other-host.example-{dead_pid}-cafebabe"]


async def test_the_lock_excludes_other_holders_without_blocking_the_loop(tmp_path):
    first, second = BackendLeases(tmp_path), BackendLeases(tmp_path)
    order: list[str] = []

    trying = asyncio.Event()

    async def contender() -> None:
        trying.set()
        async with second.locked("m"):
            order.append("second in")

    async with first.locked("m"):
        order.append("first in")
        task = asyncio.create_task(contender())
        await trying.wait()
        await asyncio.sleep(0.1)  # the loop keeps running while the contender polls the lock
        order.append("first out")
    await task
    assert order == ["first in", "first out", "second in"]
