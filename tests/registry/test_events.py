"""The registry event log (SQLite and PostgreSQL): what happened, and what was in production at a given time."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest

from prediction_service.registry import ModelRegistry

from .conftest import run_cli

pytestmark = pytest.mark.usefixtures("state_backend")


def _now() -> datetime:
    moment = datetime.now(timezone.utc)
    time.sleep(0.002)  # keep event timestamps strictly apart from the probe times
    return moment


def test_production_at_answers_after_several_promotions(two_versions):
    reg = two_versions
    t0 = _now()
    reg.promote("price", "1.0.0", actor="alice")
    t1 = _now()
    reg.promote("price", "1.1.0", actor="bob")
    t2 = _now()
    reg.archive("price", "1.1.0", actor="bob")
    t3 = _now()
    reg.promote("price", "1.0.0", actor="carol")  # rollback: archived -> production
    t4 = _now()
    answers = [reg.production_at("price", t) for t in (t0, t1, t2, t3, t4)]
    assert answers == [None, "1.0.0", "1.1.0", None, "1.0.0"]
    assert reg.production_at("price", t4 + timedelta(days=365)) == "1.0.0"
    assert reg.production_at("other", t4) is None


def test_events_record_who_did_what_in_order(two_versions):
    reg = two_versions
    reg.promote("price", "1.1.0", "staging", actor="alice")
    reg.promote("price", "1.1.0", actor="bob")
    reg.update_metrics("price", "1.1.0", {"live_acc": 0.7}, actor="monitor")
    reg.events.record_load("price", "1.1.0", details={"adapter": "simple", "pid": 123})
    reg.events.record_unload("price", "1.1.0")
    events = reg.model_events("price")
    assert [e.event for e in events] == ["registered", "registered", "stage_change", "stage_change",
                                         "metrics_updated", "loaded", "unloaded"]
    promote = events[3]
    assert (promote.version, promote.from_stage, promote.to_stage, promote.actor) == \
        ("1.1.0", "staging", "production", "bob")
    assert events[5].details == {"adapter": "simple", "pid": 123}
    assert all(e.time.tzinfo is not None for e in events)
    assert [e.event for e in reg.model_events("price", limit=2)] == ["loaded", "unloaded"]


def test_a_second_registry_object_sees_the_same_log(two_versions, state_backend):
    # another process in production: same store root, same state database
    assert len(ModelRegistry(two_versions.root).model_events("price")) == 2
    sqlite_file = two_versions.root / ".state" / "registry_events.sqlite3"
    assert sqlite_file.exists() == (state_backend == "sqlite")
    # and so does the CLI (a separate process, configured by the same environment)
    out = run_cli("registry", "events", "price", "--store", str(two_versions.root)).stdout
    assert out.count("registered") == 2


@pytest.mark.parametrize("state_backend", ["sqlite"], indirect=True)
def test_event_log_is_sqlite_wal_under_state_dir(two_versions):
    path = two_versions.root / ".state" / "registry_events.sqlite3"
    assert path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # A second registry object (another process in production) sees the same log.
    assert len(ModelRegistry(two_versions.root).model_events("price")) == 2
