"""One state database: an SQLAlchemy engine for an SQLite file or a PostgreSQL URL, with transactions that
behave the same on both.

- ``write()``: one transaction; on SQLite ``BEGIN IMMEDIATE`` (the write lock up front, so a
  read-then-write never fails on a lock upgrade; other processes wait up to the busy timeout).
- ``read()``: a plain transaction (WAL readers never block writers).
- A database that cannot be reached, or that refuses the transaction, raises ``StateUnavailable``
  (503) after the transaction was rolled back: nothing of it is written.

Engines are cached per process (one pool per URL) and reset in a forked child, which must never use
its parent's connections.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..settings import StateSettings
from .errors import StateUnavailable

log = logging.getLogger(__name__)

# Errors that mean "the database is not there / not usable now", as opposed to a constraint violation.
UNAVAILABLE_ERRORS = (OperationalError, InterfaceError, PoolTimeout)


class StateDatabase:
    def __init__(self, engine: Engine, description: str):
        self.engine = engine
        self.description = description
        """The URL without its password, for logs and messages."""

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._translated():
            with self.engine.connect() as conn:
                conn.execution_options(state_write=True)
                with conn.begin():
                    yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._translated():
            with self.engine.connect() as conn:
                with conn.begin():
                    yield conn

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except UNAVAILABLE_ERRORS as exc:
            raise StateUnavailable(f"state database {self.description} unavailable: {_short(exc)}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StateUnavailable(f"state database {self.description} unavailable: {_short(exc)}") from exc
            raise

    def __repr__(self) -> str:
        return f"StateDatabase({self.description})"


def _short(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return " ".join(str(original).split())[:300]


# ---- engines -------------------------------------------------------------------------------------------

_engines: dict[tuple, StateDatabase] = {}
_engines_lock = threading.Lock()


def open_database(state: StateSettings, sqlite_path: Path, busy_timeout_s: float = 5.0) -> StateDatabase:
    """PostgreSQL when ``state.database_url`` is set, else the SQLite file ``sqlite_path``."""
    if state.database_url:
        return postgresql_database(state.database_url, state)
    return sqlite_database(sqlite_path, busy_timeout_s)


def sqlite_database(path: Path, busy_timeout_s: float = 5.0) -> StateDatabase:
    path = Path(path).expanduser().absolute()
    key = ("sqlite", str(path), busy_timeout_s)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = StateDatabase(_sqlite_engine(path, busy_timeout_s), str(path))
        return _engines[key]


def postgresql_database(url: str, state: StateSettings | None = None) -> StateDatabase:
    state = state or StateSettings()
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"STATE_DATABASE_URL must be a postgresql:// URL (unset for SQLite), got "
                         f"{parsed.get_backend_name()!r}")
    parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, whatever driver the URL named
    key = ("postgresql", parsed.render_as_string(hide_password=False), state.pool_size, state.connect_timeout_seconds)
    with _engines_lock:
        if key not in _engines:
            engine = create_engine(
                parsed, pool_size=state.pool_size, max_overflow=state.pool_size, pool_timeout=30,
                pool_pre_ping=True,  # a connection that died with a database restart is replaced, not used
                connect_args={"connect_timeout": max(1, math.ceil(state.connect_timeout_seconds)),
                              "application_name": "prediction-service"})
            _engines[key] = StateDatabase(engine, parsed.render_as_string(hide_password=True))
        return _engines[key]


def _sqlite_engine(path: Path, busy_timeout_s: float) -> Engine:
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": busy_timeout_s})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:
        # sqlite3's own transaction handling is off: "begin" below issues BEGIN / BEGIN IMMEDIATE itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")  # several worker processes read and write the file
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("state_write") else "BEGIN")

    return engine


def _reset_after_fork() -> None:
    for database in _engines.values():
        database.engine.dispose(close=False)  # the parent keeps using its connections; the child opens its own


os.register_at_fork(after_in_child=_reset_after_fork)


def dispose_all() -> None:
    """Close every pooled connection of this process (tests, before a database is stopped)."""
    with _engines_lock:
        for database in _engines.values():
            database.engine.dispose()
