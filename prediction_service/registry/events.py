"""Append-only registry event log in SQLite (WAL): who moved which version where, and when.

Shared by every process that touches the store (CLI, server workers), so each call opens its own
short-lived connection. ``production_at`` replays the production moves to answer
"what served production for X at time T".
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

EventKind = Literal[
    "registered", "stage_change", "forced_promotion", "deleted", "metrics_updated",
    "validation_updated", "reconciled", "loaded", "unloaded",
]
EVENTS_FILE = "registry_events.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_us INTEGER NOT NULL,
    model TEXT NOT NULL,
    version TEXT,
    event TEXT NOT NULL,
    from_stage TEXT,
    to_stage TEXT,
    actor TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_model_ts ON events (model, ts_us);
"""


class RegistryEvent(BaseModel):
    id: int
    time: datetime
    model: str
    version: str | None
    event: EventKind
    from_stage: str | None = None
    to_stage: str | None = None
    actor: str
    details: dict[str, Any] = Field(default_factory=dict)


def _to_us(moment: datetime) -> int:
    if moment.tzinfo is None:  # naive times are UTC by convention
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1_000_000)


def _from_us(ts_us: int) -> datetime:
    return datetime.fromtimestamp(ts_us / 1_000_000, tz=timezone.utc)


class EventLog:
    def __init__(self, path: Path, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._initialized = False

    def _connect(self) -> sqlite3.Connection:
        if not self._initialized:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        if not self._initialized:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            self._initialized = True
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def record(
        self,
        event: EventKind,
        model: str,
        version: str | None,
        *,
        actor: str,
        from_stage: str | None = None,
        to_stage: str | None = None,
        details: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> int:
        ts_us = _to_us(at or datetime.now(timezone.utc))
        with closing(self._connect()) as conn:
            cursor = conn.execute(
                "INSERT INTO events (ts_us, model, version, event, from_stage, to_stage, actor, details)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ts_us, model, version, event, from_stage, to_stage, actor,
                 json.dumps(details or {}, sort_keys=True, default=str)),
            )
            return int(cursor.lastrowid)

    def record_load(self, model: str, version: str, *, actor: str = "server",
                    details: dict[str, Any] | None = None) -> int:
        """For the server: a worker loaded a version (details: adapter, worker pid, stage, ...)."""
        return self.record("loaded", model, version, actor=actor, details=details)

    def record_unload(self, model: str, version: str, *, actor: str = "server",
                      details: dict[str, Any] | None = None) -> int:
        return self.record("unloaded", model, version, actor=actor, details=details)

    def events(
        self,
        model: str | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        kinds: list[str] | None = None,
        limit: int = 1000,
    ) -> list[RegistryEvent]:
        """Events in the order they were written (oldest first), the newest ``limit`` of them."""
        clauses, params = [], []
        if model is not None:
            clauses.append("model = ?")
            params.append(model)
        if since is not None:
            clauses.append("ts_us >= ?")
            params.append(_to_us(since))
        if until is not None:
            clauses.append("ts_us <= ?")
            params.append(_to_us(until))
        if kinds:
            clauses.append(f"event IN ({','.join('?' * len(kinds))})")
            params.extend(kinds)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with closing(self._connect()) as conn:
            rows = conn.execute(
                f"SELECT id, ts_us, model, version, event, from_stage, to_stage, actor, details FROM events"
                f" {where} ORDER BY id DESC LIMIT ?", (*params, limit),
            ).fetchall()
        return [_event(row) for row in reversed(rows)]

    def production_at(self, model: str, moment: datetime) -> str | None:
        """The version in production for ``model`` at ``moment``, replaying production moves up to then."""
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT version, from_stage, to_stage FROM events"
                " WHERE model = ? AND ts_us <= ? AND event IN ('stage_change', 'reconciled')"
                " AND (from_stage = 'production' OR to_stage = 'production') ORDER BY id",
                (model, _to_us(moment)),
            ).fetchall()
        current = None
        for version, from_stage, to_stage in rows:
            if to_stage == "production":
                current = version
            elif from_stage == "production" and version == current:
                current = None
        return current


def _event(row: tuple) -> RegistryEvent:
    id_, ts_us, model, version, event, from_stage, to_stage, actor, details = row
    return RegistryEvent(id=id_, time=_from_us(ts_us), model=model, version=version, event=event,
                         from_stage=from_stage, to_stage=to_stage, actor=actor, details=json.loads(details))
