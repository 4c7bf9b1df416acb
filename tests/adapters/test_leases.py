"""BackendLeases: the last worker holding a shared backend model is the one that unloads it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

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
    (folder / f"other-host.example-{dead_pid}-cafebabe").touch()  # fresh heartbeat: kept
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


def test_other_hosts_leases_live_by_heartbeat(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    fresh, silent = folder / "pod-a.example-12-aaaaaaaa", folder / "pod-b.example-34-bbbbbbbb"
    fresh.touch()
    silent.touch()
    an_hour_ago = time.time() - 3600
    os.utime(silent, (an_hour_ago, an_hour_ago))  # a pod that crashed an hour ago
    leases = BackendLeases(tmp_path, ttl_seconds=600)
    assert leases.holders("m") == [fresh.name] and not silent.exists()
    os.utime(fresh, (an_hour_ago, an_hour_ago))
    assert leases.holders("m") == []


async def test_a_holder_keeps_its_leases_fresh(tmp_path):
    holder = BackendLeases(tmp_path, ttl_seconds=1.0)  # heartbeat every third of a second
    elsewhere = BackendLeases(tmp_path, ttl_seconds=1.0, host="another-host")  # a pod on another node
    try:
        holder.acquire("m")
        for _ in range(10):  # 2.5 TTLs: only the heartbeat keeps the lease alive
            await asyncio.sleep(0.25)
            assert len(elsewhere.holders("m")) == 1
        holder.close()  # heartbeat stops, as when the pod dies
        await asyncio.sleep(1.3)
        assert elsewhere.holders("m") == []
    finally:
        holder.close()
