"""Append-only registry event log in the state database: who moved which version where, and when.

Shared by every process that touches the store (CLI, server workers): an SQLite file under the
registry's ``.state/`` by default, the PostgreSQL of STATE_DATABASE_URL when set (prediction_service/state).
The schema is set up on the first use, not on open, so opening a registry never needs the database.
``production_at`` replays the production moves to answer "what served production for X at time T".
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import insert, select

from ..settings import StateSettings
from ..state import StateDatabase, open_area
from ..state.tables import EVENTS
from ..state.tables import registry_events as events_table

_INSERT = insert(events_table).returning(events_table.c.id)  # built once: loads and unloads write one each

EventKind = Literal[
    "registered", "stage_change", "forced_promotion", "contract_change", "deleted", "metrics_updated",
    "validation_updated", "reconciled", "loaded", "unloaded",
]
"""contract_change: a promotion into production changed the serving contract by explicit override (details:
production_version, differences)."""
EVENTS_FILE = "registry_events.sqlite3"

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
    def __init__(self, path: Path, busy_timeout_s: float = 30.0, state: StateSettings | None = None):
        """``path``: the SQLite file when no STATE_DATABASE_URL is set; ``state``: None reads STATE_* from
        the environment."""
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._state = state
        self._db: StateDatabase | None = None
        self._open_lock = threading.Lock()

    @property
    def db(self) -> StateDatabase:
        if self._db is None:
            with self._open_lock:
                if self._db is None:
                    self._db = open_area(EVENTS, self.path, self._state, self._busy_timeout_s)
        return self._db

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
        with self.db.write() as conn:
            result = conn.execute(_INSERT, {
                "ts_us": ts_us, "model": model, "version": version, "event": event, "from_stage": from_stage,
                "to_stage": to_stage, "actor": actor,
                "details": json.dumps(details or {}, sort_keys=True, default=str)})
            return int(result.scalar_one())

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
        c = events_table.c
        query = select(c.id, c.ts_us, c.model, c.version, c.event, c.from_stage, c.to_stage, c.actor, c.details)
        if model is not None:
            query = query.where(c.model == model)
        if since is not None:
            query = query.where(c.ts_us >= _to_us(since))
        if until is not None:
            query = query.where(c.ts_us <= _to_us(until))
        if kinds:
            query = query.where(c.event.in_(kinds))
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(c.id.desc()).limit(limit)).all()
        return [_event(row) for row in reversed(rows)]

    def production_at(self, model: str, moment: datetime) -> str | None:
        """The version in production for ``model`` at ``moment``, replaying production moves up to then."""
        c = events_table.c
        with self.db.read() as conn:
            rows = conn.execute(
                select(c.version, c.from_stage, c.to_stage)
                .where(c.model == model, c.ts_us <= _to_us(moment), c.event.in_(("stage_change", "reconciled")),
                       (c.from_stage == "production") | (c.to_stage == "production"))
                .order_by(c.id)).all()
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
