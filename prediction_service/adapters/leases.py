"""Which service processes hold a model in a shared backend (Triton, TorchServe), recorded on disk.

Every uvicorn worker (and every pod sharing the registry) loads a version under the same backend name,
so one worker's unload would pull the model from under the others. Each holder keeps a lease file
``<root>/<name>/<host>-<pid>-<token>``; the backend model is unloaded only by the last holder to let
go. Leases of dead processes on this host are ignored (a crashed worker does not pin a model forever).
Processes on other hosts cannot be checked from here, so their leases live by heartbeat: each holder
touches its lease files every third of ``BACKEND_LEASE_TTL_SECONDS``, and a lease from another host
that has not been touched for a whole TTL belongs to a pod that is gone.

Acquire/release and the backend call that goes with them run under a per-name file lock, so a load
can never slip in between "I was the last holder" and the unload that follows.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from ..settings import Settings

log = logging.getLogger(__name__)

LOCK_POLL_SECONDS = 0.01
HEARTBEATS_PER_TTL = 3


def lease_root(settings: Settings, backend: str, shared_dir: Path) -> Path:
    """Leases live in the service's state dir, one folder per backend store (``shared_dir``: the Triton
    repository / TorchServe model store that the workers share)."""
    digest = hashlib.sha256(str(shared_dir.resolve()).encode()).hexdigest()[:12]
    return settings.state_dir / "backend-leases" / f"{backend}-{digest}"


class BackendLeases:
    def __init__(self, root: Path, ttl_seconds: float = 600.0, host: str | None = None):
        self.root = root
        self.ttl_seconds = ttl_seconds
        self._host = host or socket.gethostname()
        # The token tells apart two adapters in one process (tests) and a recycled pid.
        self._holder = f"{self._host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._held: set[str] = set()
        self._heartbeat: asyncio.Task | None = None

    @asynccontextmanager
    async def locked(self, name: str) -> AsyncIterator[None]:
        """Exclusive per-name section across processes. Polls a non-blocking flock so that waiting never
        blocks the event loop (another coroutine of this process may hold the lock)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(LOCK_POLL_SECONDS)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def acquire(self, name: str) -> None:
        """Record that this process holds ``name`` (call inside ``locked(name)``)."""
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self._holder).touch()
        self._held.add(name)
        self._start_heartbeat()

    def release(self, name: str) -> bool:
        """Drop this process's lease; True when no live holder is left (call inside ``locked(name)``)."""
        folder = self.root / name
        (folder / self._holder).unlink(missing_ok=True)
        self._held.discard(name)
        return not self.holders(name)

    def refresh(self) -> None:
        """Touch every lease this holder keeps (recreating one that someone removed)."""
        for name in list(self._held):
            folder = self.root / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / self._holder).touch()

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    def _start_heartbeat(self) -> None:
        if self._heartbeat is not None and not self._heartbeat.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # synchronous use (scripts, tests): the caller refreshes
        self._heartbeat = loop.create_task(self._beat(), name="backend-lease-heartbeat")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_seconds / HEARTBEATS_PER_TTL)
            try:
                await asyncio.to_thread(self.refresh)  # a shared volume may be slow: off the loop
            except OSError as exc:
                log.warning("could not refresh backend leases in %s: %s", self.root, exc)

    def holders(self, name: str) -> list[str]:
        """Live leases on ``name``; stale ones (dead processes on this host) are removed on the way."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        live = []
        for lease in folder.iterdir():
            if self._alive(lease):
                live.append(lease.name)
            else:
                log.info("dropping stale backend lease %s/%s", name, lease.name)
                lease.unlink(missing_ok=True)
        return live

    def _alive(self, lease: Path) -> bool:
        parts = lease.name.rsplit("-", 2)  # host names may contain dashes; pid and token do not
        if len(parts) != 3 or not parts[1].isdigit():
            return True  # not ours to judge
        host, pid = parts[0], int(parts[1])
        if host != self._host:
            try:
                return time.time() - lease.stat().st_mtime < self.ttl_seconds
            except FileNotFoundError:
                return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by someone else
        return True
