"""Statements on a writer thread's hot path as the driver's own SQL, straight to the DBAPI cursor.

Through SQLAlchemy each statement costs ~100-200 us of compiling, caching and result wrapping, and a batch
insert ~20 us more per row (bind processing per value): Python work the audit log's and the experiments'
writer threads would do while holding the GIL the event loop needs (a write of ~1,500 experiment records
stalled the loop for tens of ms)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from sqlalchemy import Connection, Table


def placeholders(conn: Connection, count: int) -> str:
    """``count`` parameter markers in the driver's style, comma-separated."""
    return ", ".join([_marker(conn.dialect.paramstyle)] * count)


def _marker(paramstyle: str) -> str:
    return "?" if paramstyle == "qmark" else "%s"  # sqlite3; psycopg


@lru_cache(maxsize=32)
def _insert_sql(table: str, columns: tuple[str, ...], paramstyle: str) -> str:
    markers = ", ".join([_marker(paramstyle)] * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({markers})"


def insert_rows(conn: Connection, table: Table, columns: tuple[str, ...], rows: Sequence[tuple]) -> None:
    """``rows`` (each the values of ``columns``, in order) into ``table`` with one executemany, within the
    caller's transaction."""
    if rows:
        conn.exec_driver_sql(_insert_sql(table.name, columns, conn.dialect.paramstyle), list(rows))
