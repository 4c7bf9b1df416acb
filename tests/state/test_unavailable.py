"""A state database that cannot be reached is a 503 (StateUnavailable) for what needs it, never a hang
or a 500, and the audit writer keeps its records waiting instead of failing the caller."""

from __future__ import annotations

import socket
import time

import pytest

from prediction_service.experiments.store import ExperimentStore
from prediction_service.types import PredictionRecord, RequestContext
from prediction_service.monitoring.audit import AuditLog
from prediction_service.settings import AuditSettings, StateSettings
from prediction_service.state import StateUnavailable


def closed_port_url() -> str:
    with socket.socket() as sock:  # bound, then released: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://nobody@127.0.0.1:{port}/state"


def test_an_unreachable_database_is_a_503_domain_error(tmp_path):
    state = StateSettings(database_url=closed_port_url(), connect_timeout_seconds=1)
    with pytest.raises(StateUnavailable) as raised:
        ExperimentStore(tmp_path / "exp.sqlite3", state=state)
    assert int(raised.value.status) == 503 and raised.value.code == "state_unavailable"
    assert "nobody@" in str(raised.value) and not (tmp_path / "exp.sqlite3").exists()


def test_the_audit_writer_buffers_while_the_database_is_unreachable(tmp_path):
    state = StateSettings(database_url=closed_port_url(), connect_timeout_seconds=1)
    log = AuditLog(AuditSettings(flush_interval_ms=10, max_backlog=10), tmp_path / "a.sqlite3", state)
    log.start()
    for i in range(15):
        log.observe(PredictionRecord(RequestContext(received_at=time.time()), "m", "1", None, None, None, 1.0, 200))
    deadline = time.monotonic() + 10
    while log.stats().write_errors == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stats = log.stats()
    assert stats.failing and stats.backlog == 10 and stats.dropped == 5 and stats.written == 0
    assert log.problems() and "state database" in stats.last_error
    log.close(timeout_s=0.2)
