"""Moves an existing SQLite state into PostgreSQL: every row of every table, ids kept, one transaction per
area on the target (all of an area arrives, or none of it). The target tables must be empty: this is a
move to a new database, not a merge of several hosts' logs."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Integer, func, insert, select, text

from .database import StateDatabase
from .migrate import ensure_schema
from .tables import METADATA

CHUNK_ROWS = 5000


class TargetNotEmpty(RuntimeError):
    """A target table already has rows."""


@dataclass(frozen=True)
class CopiedTable:
    area: str
    table: str
    source_rows: int
    target_rows: int
    """Counted on the target after the copy: equal to source_rows, or the copy raised."""


def copy_area(source: StateDatabase, target: StateDatabase, area: str) -> list[CopiedTable]:
    ensure_schema(source, area)  # a file from before the state layer is adopted first
    ensure_schema(target, area)
    copied: list[CopiedTable] = []
    with source.read() as src, target.write() as dst:
        for table in METADATA[area].sorted_tables:  # parents before children (foreign keys)
            if dst.execute(select(func.count()).select_from(table)).scalar_one():
                raise TargetNotEmpty(f"{table.name} in {target.description} already has rows; copy into an "
                                     "empty database")
            source_rows = 0
            for chunk in src.execution_options(yield_per=CHUNK_ROWS).execute(select(table)).partitions():
                dst.execute(insert(table), [row._asdict() for row in chunk])
                source_rows += len(chunk)
            if not target.is_sqlite:
                _advance_sequences(dst, table)
            target_rows = dst.execute(select(func.count()).select_from(table)).scalar_one()
            if target_rows != source_rows:
                raise RuntimeError(f"{table.name}: {source_rows} rows read, {target_rows} in the target")
            copied.append(CopiedTable(area, table.name, source_rows, target_rows))
    return copied


def _advance_sequences(conn, table) -> None:
    # Rows arrived with their ids: the id sequence must continue after them, not collide with them.
    for column in table.primary_key.columns:
        if column.autoincrement is True and isinstance(column.type, Integer):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                              f"COALESCE(MAX({column.name}), 1), MAX({column.name}) IS NOT NULL) FROM {table.name}"))
