"""Which service processes hold a model in a shared backend (Triton, TorchServe), recorded on disk.

Every uvicorn worker (and every pod sharing the registry) loads a version under the same backend name,
so one worker's unload would pull the model from under the others. Each holder keeps a lease file
``<root>/<name>/<host>-<pid>-<token>``; the backend model is unloaded only by the last holder to let
go. Leases of dead processes on this host are ignored (a crashed worker does not pin a model forever);
leases from other hosts count as live, since their processes cannot be checked from here.

Acquire/release and the backend call that goes with them run under a per-name file lock, so a load
can never slip in between "I was the last holder" and the unload that follows.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from ..settings import Settings

LOCK_POLL_SECONDS = 0.01


def lease_root(settings: Settings, backend: str, shared_dir: Path) -> Path:
    """Leases live in the service's state dir, one folder per backend store (``shared_dir``: the Triton
    repository / TorchServe model store that the workers share)."""
    digest = hashlib.sha256(str(shared_dir.resolve()).encode()).hexdigest()[:12]
    return settings.state_dir / "backend-leases" / f"{backend}-{digest}"


class BackendLeases:
    def __init__(self, root: Path):
        self.root = root
        self._host = socket.gethostname()
        # The token tells apart two adapters in one process (tests) and a recycled pid.
        self._holder = f"{self._host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

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

    def release(self, name: str) -> bool:
        """Drop this process's lease; True when no live holder is left (call inside ``locked(name)``)."""
        folder = self.root / name
        (folder / self._holder).unlink(missing_ok=True)
        return not self.holders(name)

    def holders(self, name: str) -> list[str]:
        """Live leases on ``name``; stale ones (dead processes on this host) are removed on the way."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        live = []
        for lease in folder.iterdir():
            if self._alive(lease.name):
                live.append(lease.name)
            else:
                lease.unlink(missing_ok=True)
        return live

    def _alive(self, holder: str) -> bool:
        parts = holder.rsplit("-", 2)  # host names may contain dashes; pid and token do not
        if len(parts) != 3 or not parts[1].isdigit():
            return True  # not ours to judge
        host, pid = parts[0], int(parts[1])
        if host != self._host:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by someone else
        return True
