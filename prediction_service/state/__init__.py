"""Shared state (experiments, outcomes, the audit log, the registry event log) in one state layer with two
backends: SQLite files under ``<MODEL_STORE>/.state/`` (the embedded default, one host) or PostgreSQL
(``STATE_DATABASE_URL``; several pods and nodes). SQLAlchemy Core tables (tables.py), Alembic
migrations (migrations/), and transactions that behave the same on both (database.py)."""

from __future__ import annotations

from pathlib import Path

from ..settings import StateSettings
from .database import StateDatabase, open_database, postgresql_database, sqlite_database
from .errors import SchemaOutdated, StateUnavailable
from .migrate import ensure_schema

__all__ = ["StateDatabase", "StateSettings", "StateUnavailable", "SchemaOutdated", "open_area", "open_database",
           "postgresql_database", "sqlite_database"]


def open_area(area: str, sqlite_path: Path, state: StateSettings | None = None,
              busy_timeout_s: float = 5.0) -> StateDatabase:
    """The database holding ``area`` (``state``: None reads STATE_* from the environment), its schema current."""
    state = state if state is not None else StateSettings()
    db = open_database(state, sqlite_path, busy_timeout_s)
    ensure_schema(db, area, state.auto_migrate)
    return db
