"""Follow mode: a running server re-syncs from MLflow on ``MLFLOW_POLL_INTERVAL_SECONDS``.

One follower per server process (Service.start). It only writes to the filesystem registry through
MlflowSync (ModelRegistry's per-model lock, Conflict on a version another worker or pod mirrored first,
promotion a no-op when the stage is already there), so any number of workers and pods may follow at once;
each worker's model manager then notices the stage link moving and hot-reloads (load beside, swap, drain).

A sync never touches the request path or readiness: it runs in a daemon thread (the MLflow client blocks and
retries for minutes when the server is down, and shutdown must not wait for it), and a failure is logged once,
then retried on the next interval; the same failure is not logged again until it changes or clears.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from ..registry.store import ModelRegistry
from ..settings import MlflowSettings
from .sync import MlflowSync, SyncReport

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class FollowStatus:
    """What /health/ready shows under ``mlflow`` (details only: following never decides readiness)."""

    syncs: int = 0
    failed_syncs: int = 0
    last_sync_at: str | None = None
    last_error: str | None = None
    refused: int = 0
    """Versions refused or aliases not promoted in the last sync (the log says why, once)."""


class MlflowFollower:
    def __init__(self, registry: ModelRegistry, settings: MlflowSettings, *, actor: str | None = None):
        self.registry = registry
        self.settings = settings
        self.actor = actor or f"mlflow-follow:{socket.gethostname()}:{os.getpid()}"
        self.status = FollowStatus()
        self._sync: MlflowSync | None = None
        self._logged: set[str] = set()
        """Failure lines already logged: a version refused every interval is said once, not every 30 s."""

    def details(self) -> dict[str, Any]:
        return {"mlflow": {"models": self.settings.model_name_list, "interval_s": self.settings.poll_interval_seconds,
                           **vars(self.status)}}

    async def run(self) -> None:
        """Sync now, then every poll interval, until cancelled (Service.stop)."""
        while True:
            await self.sync_once()
            await asyncio.sleep(self.settings.poll_interval_seconds)

    async def sync_once(self) -> SyncReport | None:
        try:
            report = await _in_daemon_thread(self._run_sync)
        except Exception as exc:  # noqa: BLE001 - anything at all: the next interval retries
            self._failed(exc)
            return None
        self._done(report)
        return report

    def _run_sync(self) -> SyncReport:
        if self._sync is None:  # built lazily: importing the MLflow client is not free
            self._sync = MlflowSync(self.registry, self.settings, actor=self.actor)
        return self._sync.sync()

    def _failed(self, exc: Exception) -> None:
        self.status.failed_syncs += 1
        message = f"{type(exc).__name__}: {exc}"
        if message != self.status.last_error:
            log.warning("mlflow follow: sync failed (retrying every %.0f s, logged once): %s",
                        self.settings.poll_interval_seconds, message, exc_info=exc)
        self.status.last_error = message

    def _done(self, report: SyncReport) -> None:
        self.status.syncs += 1
        self.status.last_sync_at = datetime.now(timezone.utc).isoformat()
        if self.status.last_error is not None:
            log.info("mlflow follow: sync works again")
            self.status.last_error = None
        failures = report.failures
        self.status.refused = len(failures)
        current = {action.text() for action in failures}
        for line in sorted(current - self._logged):
            log.warning("mlflow follow: %s", line)
        self._logged = current  # a failure that clears and comes back is said again
        for action in report.of("mirrored") + report.of("promoted"):
            log.info("mlflow follow: %s", action.text())


async def _in_daemon_thread(call: Callable[[], T]) -> T:
    """``call()`` in a daemon thread; unlike asyncio.to_thread, neither a cancelled task nor the process exit
    waits for it (a sync blocked on an unreachable MLflow). Registry writes are atomic, so cutting one short
    at exit leaves nothing half written."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():  # the awaiting task may have been cancelled meanwhile
            setter(value)

    def target() -> None:
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome: tuple[Callable[[Any], None], Any] = (future.set_exception, exc)
        else:
            outcome = (future.set_result, result)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop closed while we worked (shutdown): nobody is waiting
            pass

    threading.Thread(target=target, name="mlflow-follow", daemon=True).start()
    return await future
