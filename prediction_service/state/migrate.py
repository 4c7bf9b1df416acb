"""Versioned schema migrations (Alembic), one history per area, shipped in ``migrations/<area>/``.

``ensure_schema`` runs when a store first opens its area in a process: one indexed read when the schema
is current; otherwise (STATE_AUTO_MIGRATE) the upgrade runs in one transaction behind a lock
(PostgreSQL: an advisory lock; SQLite: the file's write lock), so racing processes migrate once.
``python -m prediction_service state migrate`` does the same on purpose.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from .database import StateDatabase
from .errors import SchemaOutdated
from .tables import AREAS

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ADVISORY_LOCK_KEY = 0x5EED_0017  # any constant shared by every process of this service

_ready: set[tuple[int, str]] = set()
_ready_lock = threading.Lock()


def version_table(area: str) -> str:
    return f"alembic_version_{area}"


def _config(area: str) -> Config:
    if area not in AREAS:
        raise ValueError(f"unknown state area {area!r}; one of {', '.join(AREAS)}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS / area))
    return config


@lru_cache(maxsize=None)
def head(area: str) -> str:
    heads = ScriptDirectory.from_config(_config(area)).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"state area {area!r} has {len(heads)} migration heads; merge them")
    return heads[0]


def current(conn: Connection, area: str) -> str | None:
    return MigrationContext.configure(conn, opts={"version_table": version_table(area)}).get_current_revision()


def ensure_schema(db: StateDatabase, area: str, auto_migrate: bool = True) -> None:
    key = (id(db), area)
    if key in _ready:
        return
    with db.read() as conn:
        at = current(conn, area)
    if at != head(area):
        if not auto_migrate:
            raise SchemaOutdated(f"the {area} schema in {db.description} is at {at or 'nothing'}, this code needs "
                                 f"{head(area)}: run `python -m prediction_service state migrate` "
                                 "(or set STATE_AUTO_MIGRATE=true)")
        upgrade(db, area)
    with _ready_lock:
        _ready.add(key)


def upgrade(db: StateDatabase, area: str) -> tuple[str | None, str]:
    """Bring ``area`` to the newest revision; returns (revision before, revision now)."""
    with db.write() as conn:
        if not db.is_sqlite:  # SQLite: BEGIN IMMEDIATE already holds the file's write lock
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        before = current(conn, area)
        if before != head(area):
            config = _config(area)
            config.attributes["connection"] = conn  # env.py runs inside this transaction
            command.upgrade(config, "head")
            log.info("state: %s schema in %s upgraded %s -> %s", area, db.description, before or "(none)", head(area))
    return before, head(area)
