"""Prediction audit log: every prediction, by a batched background writer, into the state database
(prediction_service/state: an SQLite file in WAL mode by default, PostgreSQL with STATE_DATABASE_URL).

Each record carries the request's W3C trace id when tracing is on (monitoring/tracing.py), so a prediction
found here leads to its spans. The request path only calls ``observe(record)``, which appends the record to a bounded deque (no
hashing, no I/O: those happen in the writer thread). Past ``max_backlog`` waiting records new ones are
dropped and counted. The writer wakes every ``flush_interval_ms`` (or when a batch is full) and writes
up to ``batch_size`` records per transaction. When the disk fails or the database goes away, the batch
is kept and retried with backoff (a transaction that failed wrote nothing) while the service keeps
serving; backlog, drops and the last error show in metrics and in the readiness detail. ``close()`` flushes what is left (bounded by a timeout). With ``retention_days`` set,
the same thread deletes records past the retention in small chunks, between batches.

Every worker process has its own writer; they share the database (SQLite: WAL, busy timeout).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from ..settings import AuditSettings, Settings, StateSettings
from ..state import SchemaOutdated, StateDatabase, StateUnavailable, open_area
from ..state.driver_sql import insert_rows
from ..state.tables import AUDIT
from ..state.tables import audit_predictions as table
from ..types import SHADOW_ARM

if TYPE_CHECKING:
    from ..types import PredictionRecord

log = logging.getLogger(__name__)

MAX_RETRY_BACKOFF_S = 5.0
PRUNE_CHUNK_ROWS = 5000  # rows per DELETE: keeps the write lock short for the other workers' writers
COLUMNS = ("ts", "ts_epoch", "request_id", "model", "version", "stage", "arm", "experiment_id", "latency_ms",
           "status", "error_code", "backend", "api_key_id", "inputs", "outputs", "trace_id")


# What a failed write raises: the database (either backend, wrapped or not) or the file system under SQLite.
WRITE_ERRORS = (SQLAlchemyError, StateUnavailable, SchemaOutdated, OSError)


def audit_db_path(settings: Settings) -> Path:
    return settings.audit.db_path or settings.state_dir / "audit.sqlite3"


def _payload(arrays: dict[str, np.ndarray] | None, mode: str) -> str | None:
    if arrays is None or mode == "none":
        return None
    if mode == "full":
        return orjson.dumps(arrays, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_SORT_KEYS).decode()
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _row(record: PredictionRecord, mode: str) -> tuple:
    """The values of COLUMNS, in order."""
    context = record.context
    at = context.received_at
    ts = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return (ts, at, context.request_id, record.model, record.version, record.stage, record.arm,
            record.experiment_id, round(record.latency_ms, 3), record.status, record.error_code, record.backend,
            context.api_key_id, _payload(record.inputs, mode), _payload(record.outputs, mode),
            context.trace.trace_id if context.trace is not None else None)


@dataclass(frozen=True)
class AuditStats:
    backlog: int
    written: int
    dropped: int
    write_errors: int
    last_error: str | None
    failing: bool
    """The last write attempt failed (records wait in memory until the disk works again)."""
    pruned: int = 0
    """Records this worker deleted because they were past AUDIT_RETENTION_DAYS."""


class AuditLog:
    """Bounded in-memory queue + one writer thread. ``observe`` is a ``DataPlane`` observer."""

    def __init__(self, settings: AuditSettings, path: Path, state: StateSettings | None = None):
        """``path``: the SQLite file when no STATE_DATABASE_URL is set; ``state``: None reads STATE_* from
        the environment. Nothing is opened here: the writer thread opens (and reopens) the database."""
        self.settings = settings
        self.path = path
        self.state = state if state is not None else StateSettings()
        self._queue: deque[PredictionRecord] = deque()
        self._pending: list[PredictionRecord] = []  # the batch being written (kept across failed attempts)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written = self._dropped = self._write_errors = self._pruned = 0
        self._last_error: str | None = None
        self._failing = False
        self._flush_timeout_s = 5.0
        self.prune_chunk_rows = PRUNE_CHUNK_ROWS

    # ---- request path -----------------------------------------------------------------------------

    def observe(self, record: PredictionRecord) -> None:
        if record.shed:
            return
        if len(self._queue) + len(self._pending) >= self.settings.max_backlog:
            self._dropped += 1
            return
        self._queue.append(record)
        if len(self._queue) >= self.settings.batch_size:
            self._wake.set()

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        where = "the state database (STATE_DATABASE_URL)" if self.state.database_url else self.path
        log.info("audit log: %s (payloads: %s)", where, self.settings.record_payloads)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (giving up after ``timeout_s`` if the disk keeps failing)."""
        if self._thread is None:
            return
        self._flush_timeout_s = timeout_s
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s + 1.0)
        self._thread = None
        left = len(self._queue) + len(self._pending)
        if left:
            self._dropped += left
            log.error("audit log closed with %d records unwritten: %s", left, self._last_error)
        else:
            log.info("audit log flushed: %d records written", self._written)

    def stats(self) -> AuditStats:
        return AuditStats(len(self._queue) + len(self._pending), self._written, self._dropped,
                          self._write_errors, self._last_error, self._failing, self._pruned)

    def problems(self) -> list[str]:
        stats = self.stats()
        if not stats.failing:
            return []
        return [f"audit log failing ({stats.last_error}); {stats.backlog} records waiting, {stats.dropped} dropped"]

    # ---- writer thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        db: StateDatabase | None = None
        interval = self.settings.flush_interval_ms / 1000.0
        failures = 0
        give_up_at: float | None = None
        next_prune = time.monotonic()
        while True:
            if self._stop.is_set() and give_up_at is None:
                give_up_at = time.monotonic() + self._flush_timeout_s
            if not self._pending:
                take = min(self.settings.batch_size, len(self._queue))
                self._pending = [self._queue.popleft() for _ in range(take)]
            if self._pending:
                try:
                    db = db or self._open()
                    self._write(db, self._pending)
                except WRITE_ERRORS as exc:
                    failures += 1
                    self._write_errors += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    self._failing = True
                    if failures == 1 or failures % 20 == 0:
                        log.error("audit write failed (%d in a row): %s", failures, self._last_error)
                    if give_up_at is not None and time.monotonic() >= give_up_at:
                        break
                    backoff = min(MAX_RETRY_BACKOFF_S, interval * 2 ** min(failures, 10))
                    if self._stop.is_set():
                        time.sleep(min(backoff, 0.1))  # flushing on close: retry until give_up_at
                    else:
                        self._stop.wait(backoff)
                    continue
                self._written += len(self._pending)
                self._pending = []
                failures, self._failing = 0, False
                if len(self._queue) >= self.settings.batch_size:
                    continue
            elif self._stop.is_set():
                break
            if self.settings.retention_days is not None and not self._stop.is_set() \
                    and time.monotonic() >= next_prune:
                more = False
                try:
                    db = db or self._open()
                    more = self._prune_chunk(db)
                except WRITE_ERRORS as exc:  # the next interval tries again; writes matter more
                    log.warning("audit retention: prune failed: %s: %s", type(exc).__name__, exc)
                next_prune = time.monotonic() + (0.0 if more else self.settings.prune_interval_seconds)
                if more:
                    continue  # the next chunk after the next batch: pruning never starves writing
            if not self._stop.is_set():
                self._wake.wait(interval)
                self._wake.clear()

    def _open(self) -> StateDatabase:
        return open_area(AUDIT, self.path, self.state)

    def _prune_chunk(self, db: StateDatabase) -> bool:
        """Delete up to ``prune_chunk_rows`` records past the retention; True when more may be left."""
        assert self.settings.retention_days is not None
        cutoff = time.time() - self.settings.retention_days * 86400.0
        oldest = select(table.c.id).where(table.c.ts_epoch < cutoff).order_by(table.c.ts_epoch)
        with db.write() as conn:
            deleted = conn.execute(delete(table).where(
                table.c.id.in_(oldest.limit(self.prune_chunk_rows).scalar_subquery()))).rowcount
        if deleted:
            self._pruned += deleted
            log.info("audit retention: deleted %d records older than %s", deleted,
                     datetime.fromtimestamp(cutoff, UTC).isoformat(timespec="seconds"))
        return deleted == self.prune_chunk_rows

    def _write(self, db: StateDatabase, records: list[PredictionRecord]) -> None:
        """One transaction per batch: all of it is written, or (rolled back) none of it."""
        rows = [_row(record, self.settings.record_payloads) for record in records]
        with db.write() as conn:
            insert_rows(conn, table, COLUMNS, rows)


# ---- reading -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServedVersion:
    version: str | None
    stage: str | None
    arm: str | None
    requests: int
    first: str
    last: str


@dataclass(frozen=True)
class AuditEntry:
    ts: str
    request_id: str
    version: str | None
    stage: str | None
    arm: str | None
    status: int


@dataclass(frozen=True)
class RequestEntry:
    ts: str
    request_id: str
    model: str
    version: str | None
    stage: str | None
    arm: str | None
    status: int
    error_code: str | None
    latency_ms: float
    backend: str | None
    trace_id: str | None = None
    """The W3C trace the prediction belonged to (tracing on), to find its spans."""


@dataclass(frozen=True)
class VersionLookup:
    model: str
    second: datetime
    served: list[ServedVersion]
    """Versions that answered requests that arrived within that second (UTC)."""
    before: AuditEntry | None
    """The last prediction before that second (what was serving, when nothing arrived in it)."""
    after: AuditEntry | None


class AuditReader:
    def __init__(self, path: Path, state: StateSettings | None = None):
        """The SQLite file ``path`` (FileNotFoundError when there is none), or the PostgreSQL of
        ``state`` (None: STATE_* from the environment)."""
        state = state if state is not None else StateSettings()
        if not state.database_url and not Path(path).is_file():
            raise FileNotFoundError(f"no audit log at {path}")
        self.path = path
        self.db = open_area(AUDIT, Path(path), state)

    def which_version(self, model: str, at: datetime) -> VersionLookup:
        """Which version(s) served ``model`` during the second containing ``at`` (naive = UTC)."""
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        second = at.replace(microsecond=0)
        start = second.timestamp()
        end = (second + timedelta(seconds=1)).timestamp()
        c = table.c
        # a shadow copy's record (arm=shadow) answered nobody: it never counts as what served
        ok = (c.model == model, c.status == 200, c.version.is_not(None), c.arm.is_distinct_from(SHADOW_ARM))
        entry = (c.ts, c.request_id, c.version, c.stage, c.arm, c.status)
        with self.db.read() as conn:
            served = [ServedVersion(*row) for row in conn.execute(
                select(c.version, c.stage, c.arm, func.count(), func.min(c.ts), func.max(c.ts))
                .where(*ok, c.ts_epoch >= start, c.ts_epoch < end)
                .group_by(c.version, c.stage, c.arm).order_by(func.min(c.ts_epoch)))]
            before = conn.execute(select(*entry).where(*ok, c.ts_epoch < start)
                                  .order_by(c.ts_epoch.desc()).limit(1)).first()
            after = conn.execute(select(*entry).where(*ok, c.ts_epoch >= end)
                                 .order_by(c.ts_epoch.asc()).limit(1)).first()
        return VersionLookup(model, second, served, AuditEntry(*before) if before else None,
                             AuditEntry(*after) if after else None)

    def request(self, request_id: str) -> RequestEntry | None:
        """One prediction by its request id (indexed)."""
        c = table.c
        with self.db.read() as conn:
            row = conn.execute(select(c.ts, c.request_id, c.model, c.version, c.stage, c.arm, c.status, c.error_code,
                                      c.latency_ms, c.backend, c.trace_id)
                               .where(c.request_id == request_id, c.arm.is_distinct_from(SHADOW_ARM))
                               .order_by(c.id).limit(1)).first()
        return RequestEntry(*row) if row else None

    def oldest(self) -> str | None:
        """Time of the oldest record kept (older ones may have been pruned by the retention)."""
        with self.db.read() as conn:
            return conn.execute(select(table.c.ts).order_by(table.c.ts_epoch).limit(1)).scalar()

    def request_ids(self) -> set[str]:
        with self.db.read() as conn:
            return set(conn.execute(select(table.c.request_id)).scalars())

    def count(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
