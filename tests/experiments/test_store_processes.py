"""Several worker processes share one state database (SQLite file, PostgreSQL): one running experiment
wins, concurrent writes all land."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from prediction_service.errors import Conflict
from prediction_service.experiments.models import ExperimentSpec
from prediction_service.experiments.service import ExperimentService
from prediction_service.experiments.store import ExperimentStore
from prediction_service.settings import ExperimentSettings

from .conftest import version_exists

pytestmark = pytest.mark.usefixtures("state_backend")  # SQLite and PostgreSQL


def _service(db_path: str) -> ExperimentService:
    return ExperimentService(ExperimentStore(Path(db_path)), ExperimentSettings(route_cache_ttl_seconds=0), None,
                             version_exists)


def _try_create(db_path: str, challenger: str, barrier, results) -> None:
    service = _service(db_path)
    barrier.wait()
    try:
        service.create(ExperimentSpec(model_name="sentiment", champion_version="1.0.0",
                                      challenger_version=challenger))
        results.put("created")
    except Conflict:
        results.put("conflict")


def _serve(db_path: str, worker: int, n: int, barrier) -> None:
    service = _service(db_path)
    barrier.wait()
    for i in range(n):
        assignment = service.route("sentiment", f"{worker}-{i}")
        service.record_prediction(f"w{worker}-{i}", assignment, 1.0, False, None)
        service.record_outcome(f"w{worker}-{i}", 0)


def test_racing_creates_yield_one_running_experiment(tmp_path):
    db = str(tmp_path / "exp.sqlite3")
    ExperimentStore(Path(db)).close()  # schema first, so the race is about the experiment
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_try_create, args=(db, v, barrier, results)) for v in ("1.1.0", "1.2.0", "1.1.0")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == ["conflict", "conflict", "created"]
    assert len(_service(db).list()) == 1


def test_concurrent_writers_lose_nothing(tmp_path):
    db = str(tmp_path / "exp.sqlite3")
    creator = _service(db)
    exp = creator.create(ExperimentSpec(model_name="sentiment", champion_version="1.0.0",
                                        challenger_version="1.1.0", traffic_split=0.5))
    # No SQLite connection may be open across fork() (SQLite's rule): the children open their own.
    creator.store.close()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_serve, args=(db, w, 150, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    data = _service(db).store.arm_data(exp.id)
    assert sum(d.requests for d in data.values()) == 300
    assert sum(d.actual.size for d in data.values()) == 300
