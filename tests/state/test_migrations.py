"""Schema migrations (Alembic, per area) and ``state copy``: a store's SQLite state as written before the
state layer arrives in PostgreSQL row for row, and keeps working there."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from prediction_service.types import PredictionRecord, RequestContext
from prediction_service.monitoring.audit import AuditLog, AuditReader
from prediction_service.registry.events import EventLog
from prediction_service.settings import AuditSettings, StateSettings
from prediction_service.state import SchemaOutdated, open_area, postgresql_database
from prediction_service.state.migrate import head
from prediction_service.state.tables import AREAS, METADATA, audit_predictions, registry_events

REPO = Path(__file__).resolve().parents[2]

# The SQLite files as the releases before the state layer wrote them (schemas copied from those releases).
LEGACY_EXPERIMENTS = """
CREATE TABLE experiments (id TEXT PRIMARY KEY, model_name TEXT NOT NULL, status TEXT NOT NULL, spec TEXT NOT NULL,
    created_at REAL NOT NULL, ended_at REAL, end_reason TEXT);
CREATE UNIQUE INDEX one_running_experiment_per_model ON experiments(model_name) WHERE status = 'running';
CREATE TABLE predictions (request_id TEXT PRIMARY KEY, experiment_id TEXT NOT NULL REFERENCES experiments(id),
    arm TEXT NOT NULL CHECK (arm IN ('champion', 'challenger')), version TEXT NOT NULL, served_at REAL NOT NULL,
    latency_ms REAL NOT NULL, error INTEGER NOT NULL, predicted_class INTEGER, predicted_value REAL, unit TEXT,
    api_key_id TEXT);
CREATE INDEX predictions_by_experiment ON predictions(experiment_id, arm);
CREATE TABLE outcomes (request_id TEXT PRIMARY KEY REFERENCES predictions(request_id), actual REAL NOT NULL,
    correct INTEGER, abs_error REAL, pnl REAL, recorded_at REAL NOT NULL, worst_case INTEGER NOT NULL DEFAULT 0);
"""
LEGACY_AUDIT = """
CREATE TABLE predictions (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, ts_epoch REAL NOT NULL, request_id TEXT NOT NULL,
    model TEXT NOT NULL, version TEXT, stage TEXT, arm TEXT, experiment_id TEXT, latency_ms REAL NOT NULL,
    status INTEGER NOT NULL, error_code TEXT, backend TEXT, api_key_id TEXT, inputs TEXT, outputs TEXT);
CREATE INDEX predictions_model_time ON predictions (model, ts_epoch);
CREATE INDEX predictions_request ON predictions (request_id);
CREATE INDEX predictions_time ON predictions (ts_epoch);
"""
LEGACY_EVENTS = """
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_us INTEGER NOT NULL, model TEXT NOT NULL,
    version TEXT, event TEXT NOT NULL, from_stage TEXT, to_stage TEXT, actor TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}');
CREATE INDEX events_model_ts ON events (model, ts_us);
"""
SPEC = ('{"model_name": "m%d", "champion_version": "1.0.0", "challenger_version": "1.1.0", "traffic_split": 0.5, '
        '"task": "classification"}')


def legacy_store(root: Path, experiments: int = 3, predictions: int = 400, audit: int = 2500,
                 events: int = 40) -> dict[str, int]:
    """Writes the three legacy files under ``root/.state``; returns the row count of each new table."""
    state = root / ".state"
    state.mkdir(parents=True)
    with sqlite3.connect(state / "experiments.sqlite3") as conn:
        conn.executescript(LEGACY_EXPERIMENTS)
        conn.executemany("INSERT INTO experiments VALUES (?, ?, 'running', ?, ?, NULL, NULL)",
                         [(f"e{i}", f"m{i}", SPEC % i, 1000.0 + i) for i in range(experiments)])
        conn.executemany("INSERT INTO predictions VALUES (?, ?, ?, '1.0.0', ?, 1.5, 0, ?, NULL, ?, NULL)",
                         [(f"r{i}", f"e{i % experiments}", ("champion", "challenger")[i % 2], 2000.0 + i, i % 2,
                           f"key:{i % 17}") for i in range(predictions)])
        conn.executemany("INSERT INTO outcomes VALUES (?, ?, 1, NULL, 0.5, ?, 0)",
                         [(f"r{i}", i % 2, 3000.0 + i) for i in range(0, predictions, 2)])
    with sqlite3.connect(state / "audit.sqlite3") as conn:
        conn.executescript(LEGACY_AUDIT)
        conn.executemany("INSERT INTO predictions (ts, ts_epoch, request_id, model, version, stage, latency_ms, status)"
                         " VALUES (?, ?, ?, 'm0', '1.0.0', 'production', 2.0, 200)",
                         [(f"2026-01-01T00:00:{i % 60:02d}.000Z", 1767225600.0 + i, f"a{i}") for i in range(audit)])
    with sqlite3.connect(state / "registry_events.sqlite3") as conn:
        conn.executescript(LEGACY_EVENTS)
        conn.executemany("INSERT INTO events (ts_us, model, version, event, to_stage, actor) "
                         "VALUES (?, 'm0', ?, 'stage_change', 'production', 'alice')",
                         [(1_700_000_000_000_000 + i, f"1.{i}.0") for i in range(events)])
    return {"experiments": experiments, "experiment_predictions": predictions,
            "experiment_outcomes": len(range(0, predictions, 2)), "experiment_shadow_predictions": 0,
            "audit_predictions": audit, "registry_events": events}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prediction_service", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def counts(db, tables) -> dict[str, int]:
    with db.read() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in tables}


def test_state_copy_moves_every_row_of_a_legacy_sqlite_state_into_postgresql(tmp_path, postgres_url):
    expected = legacy_store(tmp_path / "store")
    env = {"STATE_DATABASE_URL": "", "MODEL_STORE": str(tmp_path / "store")}
    out = cli("state", "copy", "--to", postgres_url, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    target = postgresql_database(postgres_url)
    tables = [t for area in AREAS for t in METADATA[area].sorted_tables]
    assert counts(target, tables) == expected
    # the rows themselves, not only how many: ids, keys and values
    with target.read() as conn:
        assert set(conn.execute(select(audit_predictions.c.request_id)).scalars()) == {f"a{i}" for i in range(2500)}
        assert conn.execute(select(func.sum(audit_predictions.c.id))).scalar_one() == sum(range(1, 2501))
        assert [r.version for r in conn.execute(select(registry_events).order_by(registry_events.c.id))] == \
            [f"1.{i}.0" for i in range(40)]
    # the migrated source was adopted in place (renamed tables, rows kept), and still reads as before
    assert AuditReader(tmp_path / "store" / ".state" / "audit.sqlite3", StateSettings(database_url=None)).count() \
        == 2500

    # PostgreSQL carries on after the copied ids: new rows get new ids, the log keeps its order
    pg = StateSettings(database_url=postgres_url)
    events = EventLog(tmp_path / "unused.sqlite3", state=pg)
    assert events.record("registered", "m0", "9.0.0", actor="bob") == 41
    assert events.production_at("m0", datetime.now(timezone.utc)) == "1.39.0"
    audit = AuditLog(AuditSettings(flush_interval_ms=10), tmp_path / "unused-audit.sqlite3", state=pg)
    audit.start()
    audit.observe(PredictionRecord(RequestContext(received_at=1767225600.0), "m0", "1.0.0", "production", None,
                                   None, 1.0, 200))
    audit.close()
    assert audit.stats().written == 1 and AuditReader(tmp_path, pg).count() == 2501

    again = cli("state", "copy", "--to", postgres_url, env=env)  # a second copy would duplicate: refused
    assert again.returncode == 2 and "already has rows" in again.stdout


def test_a_legacy_sqlite_file_is_upgraded_in_place_when_opened(tmp_path):
    expected = legacy_store(tmp_path / "store")
    state = StateSettings(database_url=None)
    for area, name in [("experiments", "experiments.sqlite3"), ("audit", "audit.sqlite3"),
                       ("events", "registry_events.sqlite3")]:
        db = open_area(area, tmp_path / "store" / ".state" / name, state)
        tables = METADATA[area].sorted_tables
        assert counts(db, tables) == {t.name: expected[t.name] for t in tables}
        names = set(inspect(db.engine).get_table_names())
        assert {"predictions", "outcomes", "events"}.isdisjoint(names)


def test_state_migrate_creates_then_reports_current(tmp_path, state_settings):
    env = {"STATE_DATABASE_URL": state_settings.database_url or "", "MODEL_STORE": str(tmp_path / "store")}
    first = cli("state", "migrate", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("(empty) ->") == 3
    second = cli("state", "migrate", env=env)
    assert second.returncode == 0 and second.stdout.count("(current)") == 3
    if state_settings.database_url is None:
        assert sorted(p.name for p in (tmp_path / "store" / ".state").glob("*.sqlite3")) == \
            ["audit.sqlite3", "experiments.sqlite3", "registry_events.sqlite3"]


def test_an_outdated_schema_is_refused_without_auto_migrate(tmp_path, state_settings):
    strict = state_settings.model_copy(update={"auto_migrate": False})
    with pytest.raises(SchemaOutdated, match="state migrate"):
        open_area("audit", tmp_path / "audit.sqlite3", strict)
    open_area("audit", tmp_path / "audit.sqlite3", state_settings)  # what `state migrate` does
    assert open_area("audit", tmp_path / "audit.sqlite3", strict) is not None


def _open_all(url: str, barrier, results) -> None:
    barrier.wait()
    try:
        for area in AREAS:
            open_area(area, Path("/nonexistent/unused.sqlite3"), StateSettings(database_url=url))
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        results.put(repr(exc))


def test_processes_racing_to_create_the_schema_migrate_once(postgres_url):
    ctx = mp.get_context("spawn")  # fresh interpreters: nothing shared but the database
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_open_all, args=(postgres_url, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [results.get(timeout=5) for _ in procs] == ["ok"] * 4
    with postgresql_database(postgres_url).read() as conn:
        for area in AREAS:
            assert conn.exec_driver_sql(f"SELECT version_num FROM alembic_version_{area}").scalars().all() == \
                [head(area)]
