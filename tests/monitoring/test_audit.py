"""The prediction audit log: written off the request path, queryable by instant, survives a failing disk.
Runs against both state backends (SQLite file, PostgreSQL) except where the subject is the SQLite file."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from prediction_service.types import PredictionRecord, RequestContext
from prediction_service.monitoring.audit import AuditLog, AuditReader
from prediction_service.settings import AuditSettings, Settings
from prediction_service.state.tables import audit_predictions
from tests.support.asgi import served_app

ROW = [1.0, 2.0, 3.0, 4.0]
PREDICT = "/v1/models/tiny-regressor/predict"
REPO = Path(__file__).resolve().parents[2]


def record(at: float, version: str = "1.0.0", stage: str = "production", status: int = 200) -> PredictionRecord:
    context = RequestContext(received_at=at)
    return PredictionRecord(context, "m", version, stage, None, None, 1.5, status,
                            inputs={"x": np.arange(4, dtype=np.float32).reshape(1, 4)},
                            outputs={"y": np.array([[3.0]], dtype=np.float32)})


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def sqlite_only(test):
    """For tests about the SQLite file itself (its directory, its size)."""
    return pytest.mark.parametrize("state_backend", ["sqlite"], indirect=True)(test)


@pytest.fixture(autouse=True)
def _backend(state_backend):  # every test here: once per backend unless marked sqlite_only
    return state_backend


@pytest.mark.parametrize("mode", ["none", "hash", "full"])
def test_records_are_written_in_batches_with_payloads_per_mode(tmp_path, mode, state_backend):
    log = AuditLog(AuditSettings(record_payloads=mode, batch_size=7, flush_interval_ms=20), tmp_path / "a.db")
    log.start()
    for i in range(20):
        log.observe(record(1_700_000_000.0 + i))
    wait_for(lambda: log.stats().written == 20)
    log.close()
    if state_backend == "sqlite":
        import sqlite3
        with sqlite3.connect(tmp_path / "a.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    else:
        assert not (tmp_path / "a.db").exists()
    c = audit_predictions.c
    with AuditReader(tmp_path / "a.db").db.read() as conn:
        rows = [tuple(row) for row in conn.execute(
            select(c.ts, c.model, c.version, c.status, c.inputs, c.outputs).order_by(c.id))]
    assert len(rows) == 20 and rows[0][:4] == ("2023-11-14T22:13:20.000Z", "m", "1.0.0", 200)
    inputs = rows[0][4]
    if mode == "none":
        assert inputs is None
    elif mode == "hash":
        expected = hashlib.sha256(b"x|<f4|(1, 4)|" + np.arange(4, dtype=np.float32).tobytes()).hexdigest()
        assert inputs == expected
    else:
        assert json.loads(inputs) == {"x": [[0.0, 1.0, 2.0, 3.0]]} and json.loads(rows[0][5]) == {"y": [[3.0]]}


@sqlite_only
def test_backlog_is_bounded_and_drops_are_counted(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the audit directory should be")
    log = AuditLog(AuditSettings(max_backlog=5, flush_interval_ms=10), blocker / "audit.sqlite3")
    log.start()
    for i in range(12):
        log.observe(record(1_700_000_000.0 + i))
    wait_for(lambda: log.stats().write_errors > 0)
    stats = log.stats()
    assert stats.backlog == 5 and stats.dropped == 7 and stats.failing and stats.last_error
    log.close(timeout_s=0.2)
    assert log.stats().dropped == 12  # closed with the disk still broken: what was left is counted too


def test_which_version_and_cli(tmp_path, state_backend):
    db = tmp_path / "audit.sqlite3"
    log = AuditLog(AuditSettings(flush_interval_ms=10), db)
    log.start()
    base = datetime(2026, 11, 22, 14, 32, 5, tzinfo=UTC).timestamp()
    log.observe(record(base - 30.0, "1.0.0"))           # long before
    log.observe(record(base + 0.10, "1.0.0"))           # in the second: the old version
    log.observe(record(base + 0.20, "1.0.0", status=422))  # errors do not count as serving
    log.observe(record(base + 0.60, "2.0.0"))           # in the second: promoted mid-second
    log.observe(record(base + 0.70, "2.0.0"))
    log.observe(record(base + 40.0, "2.0.0"))
    log.close()
    lookup = AuditReader(db).which_version("m", datetime(2026, 11, 22, 14, 32, 5, 900000))
    assert [(s.version, s.requests) for s in lookup.served] == [("1.0.0", 1), ("2.0.0", 2)]
    assert lookup.before.version == "1.0.0" and lookup.after.version == "2.0.0"

    # the CLI reads the configured backend (STATE_DATABASE_URL is inherited); --db names an SQLite file
    where = ["--db", str(db)] if state_backend == "sqlite" else ["--store", str(tmp_path / "store")]

    def cli(at: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "prediction_service", "audit", "--model", "m", "--at", at,
                               *where], cwd=REPO, capture_output=True, text=True, timeout=60)

    out = cli("2026-11-22T14:32:05Z")
    assert out.returncode == 0, out.stderr
    assert "version 1.0.0" in out.stdout and "version 2.0.0" in out.stdout and "2 predictions" in out.stdout
    quiet = cli("2026-11-22T14:32:20Z")  # nothing in that second: says what served before and after
    assert "no predictions" in quiet.stdout and "last before: version 2.0.0" in quiet.stdout



def test_retention_deletes_old_records_in_chunks_and_keeps_recent_ones(tmp_path, state_backend):
    db = tmp_path / "audit.sqlite3"
    log = AuditLog(AuditSettings(retention_days=1, prune_interval_seconds=0.05, flush_interval_ms=10), db)
    log.prune_chunk_rows = 7  # several chunks, so the "more left" path runs
    now = time.time()
    log.start()
    for i in range(30):
        log.observe(record(now - 3 * 86400 + i))  # three days old
    recent = [now - 60 + i for i in range(5)]
    for at in recent:
        log.observe(record(at))
    wait_for(lambda: log.stats().pruned == 30)
    log.close()
    reader = AuditReader(db)
    assert reader.count() == 5 and log.stats().written == 35
    assert reader.oldest() == datetime.fromtimestamp(recent[0], UTC).isoformat(timespec="milliseconds")[:-6] + "Z"

    where = ["--db", str(db)] if state_backend == "sqlite" else []
    quiet = subprocess.run([sys.executable, "-m", "prediction_service", "audit", "--model", "m", *where,
                            "--at", datetime.fromtimestamp(now - 2 * 86400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "audit log starts at" in quiet.stdout and "AUDIT_RETENTION_DAYS" in quiet.stdout


def test_without_retention_nothing_is_deleted(tmp_path):
    log = AuditLog(AuditSettings(prune_interval_seconds=0.01, flush_interval_ms=10), tmp_path / "audit.sqlite3")
    log.start()
    for i in range(10):
        log.observe(record(1_000_000_000.0 + i))  # 2001
    wait_for(lambda: log.stats().written == 10)
    time.sleep(0.1)  # several prune intervals
    log.close()
    assert AuditReader(tmp_path / "audit.sqlite3").count() == 10 and log.stats().pruned == 0

async def test_every_prediction_is_audited_through_the_api(tiny_store):
    settings = Settings(model_store=tiny_store, audit=AuditSettings(flush_interval_ms=20))
    started = datetime.now(UTC)
    async with served_app(settings, metrics_registry=CollectorRegistry()) as (_, http):
        responses = await asyncio.gather(*(http.post(PREDICT, json={"instance": ROW}) for _ in range(15)))
        await http.post(PREDICT, json={"instance": ROW, "stage": "staging"})
    # lifespan exit flushed the writer
    ids = {r.json()["request_id"] for r in responses}
    reader = AuditReader(tiny_store / ".state" / "audit.sqlite3")
    assert ids <= reader.request_ids() and reader.count() == 16
    lookup = reader.which_version("tiny-regressor", started)
    first = lookup.served[0] if lookup.served else lookup.after  # the second may have ended before the first one
    assert (first.version, first.stage) == ("1.0.0", "production")
    at = started.strftime("%Y-%m-%dT%H:%M:%SZ")
    out = subprocess.run([sys.executable, "-m", "prediction_service", "audit", "--model", "tiny-regressor",
                          "--at", at, "--store", str(tiny_store)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "version 1.0.0 (stage production)" in out.stdout


async def test_a_failed_request_is_found_by_the_id_its_error_response_carried(tiny_store):
    settings = Settings(model_store=tiny_store, audit=AuditSettings(flush_interval_ms=20))
    async with served_app(settings, metrics_registry=CollectorRegistry()) as (_, http):
        failed = await http.post(PREDICT, json={"instance": [1.0, 2.0, 3.0]})  # wrong shape
        served = await http.post(PREDICT, json={"instance": ROW, "stage": "staging"})
    assert failed.status_code == 422 and served.status_code == 200
    failed_id = failed.headers["X-Request-Id"]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "prediction_service", "audit", *args, "--store", str(tiny_store)],
                              cwd=REPO, capture_output=True, text=True, timeout=60)

    out = cli("--request-id", failed_id)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "status     422" in out.stdout and "model      tiny-regressor" in out.stdout
    out = cli("--request-id", served.headers["X-Request-Id"])
    assert "version    2.0.0" in out.stdout and "stage      staging" in out.stdout and "status     200" in out.stdout
    missing = cli("--request-id", "no-such-request")
    assert missing.returncode == 1 and "not in the audit log" in missing.stdout
    assert cli("--at", "2026-11-22T14:32:05Z").returncode == 2  # --at needs --model


@sqlite_only
async def test_a_failing_audit_disk_never_stops_serving_and_recovers(tiny_store, tmp_path):
    blocker = tmp_path / "audit-dir"
    blocker.write_text("not a directory")
    settings = Settings(model_store=tiny_store,
                        audit=AuditSettings(db_path=blocker / "audit.sqlite3", flush_interval_ms=10, max_backlog=8))
    async with served_app(settings, metrics_registry=CollectorRegistry()) as (app, http):
        for _ in range(12):
            assert (await http.post(PREDICT, json={"instance": ROW})).status_code == 200
        await asyncio.to_thread(wait_for, lambda: app.state.service.audit.stats().write_errors > 0)
        ready = await http.get("/health/ready")
        # reported, but by default not a reason to leave the load balancer (AUDIT_REQUIRED_FOR_READINESS)
        assert ready.status_code == 200
        assert ready.json()["audit"]["failing"] is True and ready.json()["audit"]["dropped"] == 4
        metrics = (await http.get("/metrics")).text
        assert "prediction_audit_dropped_total 4.0" in metrics and "prediction_audit_backlog 8.0" in metrics
        # the disk comes back: the backlog is written (the writer's retry may create the directory
        # itself between these two lines)
        blocker.unlink()
        blocker.mkdir(exist_ok=True)
        await asyncio.to_thread(wait_for, lambda: app.state.service.audit.stats().written == 8)
        assert (await http.get("/health/ready")).json()["audit"]["failing"] is False
    assert AuditReader(blocker / "audit.sqlite3").count() == 8


@sqlite_only
async def test_audit_failure_can_be_made_a_readiness_condition(tiny_store, tmp_path):
    blocker = tmp_path / "audit-dir"
    blocker.write_text("not a directory")
    settings = Settings(model_store=tiny_store, audit=AuditSettings(
        db_path=blocker / "audit.sqlite3", flush_interval_ms=10, required_for_readiness=True))
    async with served_app(settings, metrics_registry=CollectorRegistry()) as (app, http):
        assert (await http.post(PREDICT, json={"instance": ROW})).status_code == 200
        await asyncio.to_thread(wait_for, lambda: app.state.service.audit.stats().write_errors > 0)
        ready = await http.get("/health/ready")
        assert ready.status_code == 503 and any("audit" in r for r in ready.json()["reasons"])
        app.state.service.audit.close(timeout_s=0.1)


@sqlite_only
def test_a_full_disk_is_reported_as_such(tmp_path):
    """SQLite rolls a transaction back itself when the disk fills; the error must name that, not the
    failed ROLLBACK after it, and the batch stays waiting (nothing of it written)."""
    from sqlalchemy import event

    log = AuditLog(AuditSettings(record_payloads="full", flush_interval_ms=10), tmp_path / "audit.sqlite3")
    db = log._open()  # the schema, then a disk with room for one more page
    with db.read() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
    event.listen(db.engine, "connect", lambda conn, _: conn.execute(f"PRAGMA max_page_count = {pages + 1}"))
    db.engine.dispose()
    log.start()
    for _ in range(2000):
        log.observe(record(time.time()))
    wait_for(lambda: log.stats().write_errors > 0)
    stats = log.stats()
    assert stats.failing and "full" in stats.last_error and "rollback" not in stats.last_error.lower()
    assert stats.written == 0 and stats.backlog == 2000
    log.close(timeout_s=0.2)
    assert AuditReader(tmp_path / "audit.sqlite3").count() == 0
