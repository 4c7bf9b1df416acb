"""SQLite persistence of experiments, the predictions served under them, and their outcomes.

WAL mode with a busy timeout lets several worker processes read and write the same file. Each thread
of each process gets its own connection (sqlite3 connections must not cross threads, and a forked
child must not reuse its parent's). Writes run in ``BEGIN IMMEDIATE`` transactions, so a failing
statement leaves nothing behind. "One running experiment per model" is a partial unique index: two
processes racing to create one cannot both win.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import Conflict, NotFound
from .metrics import ArmData
from .models import Arm, Experiment, ExperimentSpec, ExperimentStatus, OutcomeRecord, PredictionRecord

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id          TEXT PRIMARY KEY,
    model_name  TEXT NOT NULL,
    status      TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    ended_at    REAL,
    end_reason  TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS one_running_experiment_per_model
    ON experiments(model_name) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS predictions (
    request_id      TEXT PRIMARY KEY,
    experiment_id   TEXT NOT NULL REFERENCES experiments(id),
    arm             TEXT NOT NULL CHECK (arm IN ('champion', 'challenger')),
    version         TEXT NOT NULL,
    served_at       REAL NOT NULL,
    latency_ms      REAL NOT NULL,
    error           INTEGER NOT NULL,
    predicted_class INTEGER,
    predicted_value REAL,
    unit            TEXT,
    api_key_id      TEXT
);
CREATE INDEX IF NOT EXISTS predictions_by_experiment ON predictions(experiment_id, arm);
CREATE TABLE IF NOT EXISTS outcomes (
    request_id  TEXT PRIMARY KEY REFERENCES predictions(request_id),
    actual      REAL NOT NULL,
    correct     INTEGER,
    abs_error   REAL,
    pnl         REAL,
    recorded_at REAL NOT NULL,
    worst_case  INTEGER NOT NULL DEFAULT 0
);
"""

# Columns added after the first release: (table, column, declaration) added to older files on open.
_ADDED_COLUMNS = [("predictions", "unit", "TEXT"), ("predictions", "api_key_id", "TEXT"),
                  ("outcomes", "worst_case", "INTEGER NOT NULL DEFAULT 0")]


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


class ExperimentStore:
    def __init__(self, path: Path, busy_timeout_ms: int = 5000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)  # idempotent; concurrent openers wait on busy_timeout
        self._migrate()

    def _migrate(self) -> None:
        with self._write() as conn:
            for table, column, declaration in _ADDED_COLUMNS:
                present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    # -- connections and transactions -------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None,
                                   check_same_thread=True)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Closes this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- experiments ---------------------------------------------------------------------------------
    @staticmethod
    def _experiment(row: tuple) -> Experiment:
        exp_id, status, spec_json, created_at, ended_at, end_reason = row
        spec = ExperimentSpec.model_validate_json(spec_json)
        return Experiment(**spec.model_dump(), id=exp_id, status=ExperimentStatus(status),
                          created_at=_dt(created_at), ended_at=_dt(ended_at), end_reason=end_reason)

    _EXPERIMENT_COLUMNS = "id, status, spec, created_at, ended_at, end_reason"

    def insert_experiment(self, experiment_id: str, spec: ExperimentSpec, created_at: float) -> Experiment:
        """Stores a running experiment; Conflict when the model already has one."""
        try:
            with self._write() as conn:
                running = conn.execute("SELECT id FROM experiments WHERE model_name = ? AND status = 'running'",
                                       (spec.model_name,)).fetchone()
                if running:
                    raise Conflict(f"model {spec.model_name!r} already has a running experiment {running[0]}",
                                   {"experiment_id": running[0]})
                conn.execute("INSERT INTO experiments (id, model_name, status, spec, created_at) "
                             "VALUES (?, ?, 'running', ?, ?)",
                             (experiment_id, spec.model_name, spec.model_dump_json(), created_at))
        except sqlite3.IntegrityError as exc:  # lost a race with another process
            raise Conflict(f"model {spec.model_name!r} already has a running experiment") from exc
        return self.get_experiment(experiment_id)

    def get_experiment(self, experiment_id: str) -> Experiment:
        row = self._conn().execute(f"SELECT {self._EXPERIMENT_COLUMNS} FROM experiments WHERE id = ?",
                                   (experiment_id,)).fetchone()
        if row is None:
            raise NotFound(f"experiment {experiment_id!r} not found", {"experiment_id": experiment_id})
        return self._experiment(row)

    def list_experiments(self, model_name: str | None = None,
                         status: ExperimentStatus | None = None) -> list[Experiment]:
        sql = f"SELECT {self._EXPERIMENT_COLUMNS} FROM experiments WHERE 1 = 1"
        args: list[str] = []
        if model_name is not None:
            sql, args = sql + " AND model_name = ?", [*args, model_name]
        if status is not None:
            sql, args = sql + " AND status = ?", [*args, status.value]
        rows = self._conn().execute(sql + " ORDER BY created_at DESC, id", args).fetchall()
        return [self._experiment(r) for r in rows]

    def running_experiment(self, model_name: str) -> Experiment | None:
        row = self._conn().execute(f"SELECT {self._EXPERIMENT_COLUMNS} FROM experiments "
                                   "WHERE model_name = ? AND status = 'running'", (model_name,)).fetchone()
        return None if row is None else self._experiment(row)

    def transition(self, experiment_id: str, to: ExperimentStatus, reason: str, at: float,
                   expected: ExperimentStatus = ExperimentStatus.RUNNING) -> bool:
        """Compare-and-set of the status; False when it was not ``expected`` (another worker acted first)."""
        ended_at = None if to is ExperimentStatus.RUNNING else at
        with self._write() as conn:
            cursor = conn.execute("UPDATE experiments SET status = ?, ended_at = ?, end_reason = ? "
                                  "WHERE id = ? AND status = ?",
                                  (to.value, ended_at, reason if ended_at else None, experiment_id,
                                   expected.value))
            return cursor.rowcount == 1

    # -- predictions and outcomes --------------------------------------------------------------------
    def insert_prediction(self, record: PredictionRecord) -> bool:
        """Stores a prediction of a RUNNING experiment; False (nothing stored) when the experiment has ended:
        an assignment handed out before a stop or promotion (a worker's route cache) is not counted."""
        try:
            with self._write() as conn:
                cursor = conn.execute(
                    "INSERT INTO predictions (request_id, experiment_id, arm, version, served_at, latency_ms, "
                    "error, predicted_class, predicted_value, unit, api_key_id) "
                    "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
                    "WHERE EXISTS (SELECT 1 FROM experiments WHERE id = ? AND status = 'running')",
                    (record.request_id, record.experiment_id, record.arm.value, record.version, record.served_at,
                     record.latency_ms, int(record.error), record.predicted_class, record.predicted_value,
                     record.unit, record.api_key_id, record.experiment_id))
                if cursor.rowcount == 1:
                    return True
                if conn.execute("SELECT 1 FROM experiments WHERE id = ?", (record.experiment_id,)).fetchone() is None:
                    raise NotFound(f"experiment {record.experiment_id!r} not found")
                return False
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"prediction {record.request_id!r} is already recorded",
                           {"request_id": record.request_id}) from exc

    def get_prediction(self, request_id: str) -> PredictionRecord:
        row = self._conn().execute(
            "SELECT request_id, experiment_id, arm, version, served_at, latency_ms, error, predicted_class, "
            "predicted_value, unit, api_key_id FROM predictions WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            raise NotFound(f"no prediction served under an experiment has request id {request_id!r}",
                           {"request_id": request_id})
        fields = dict(zip(PredictionRecord.model_fields, row))
        fields["error"] = bool(fields["error"])
        return PredictionRecord(**fields)

    def insert_outcome(self, record: OutcomeRecord) -> None:
        correct = None if record.correct is None else int(record.correct)
        try:
            with self._write() as conn:
                conn.execute("INSERT INTO outcomes (request_id, actual, correct, abs_error, pnl, recorded_at, "
                             "worst_case) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (record.request_id, record.actual, correct, record.abs_error, record.pnl,
                              record.recorded_at, int(record.worst_case)))
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"request {record.request_id!r} already has an outcome",
                           {"request_id": record.request_id}) from exc

    def outcome_count(self, experiment_id: str) -> int:
        return int(self._conn().execute(
            "SELECT COUNT(*) FROM outcomes o JOIN predictions p ON p.request_id = o.request_id "
            "WHERE p.experiment_id = ?", (experiment_id,)).fetchone()[0])

    def arm_data(self, experiment_id: str, first_outcomes: int | None = None) -> dict[Arm, ArmData]:
        """All samples of an experiment, per arm, as arrays (one query per table).

        ``first_outcomes``: only the first that many outcomes (by recording order) and the predictions
        served up to when the last of them was recorded: the frozen data of a fixed-horizon decision."""
        conn = self._conn()
        served_until, outcome_filter, args = float("inf"), "", []
        if first_outcomes is not None:
            first = ("SELECT o2.rowid FROM outcomes o2 JOIN predictions p2 ON p2.request_id = o2.request_id "
                     "WHERE p2.experiment_id = ? ORDER BY o2.recorded_at, o2.rowid LIMIT ?")
            last = conn.execute(f"SELECT MAX(recorded_at) FROM outcomes WHERE rowid IN ({first})",
                                (experiment_id, first_outcomes)).fetchone()[0]
            served_until = float("-inf") if last is None else last
            outcome_filter, args = f" AND o.rowid IN ({first})", [experiment_id, first_outcomes]
        data: dict[Arm, ArmData] = {}
        for arm in Arm:
            # the unit: the routing key's digest, or the request itself when it had no key
            rows = conn.execute("SELECT latency_ms, error, served_at, COALESCE(unit, 'request:' || request_id) "
                                "FROM predictions WHERE experiment_id = ? AND arm = ? AND served_at <= ?",
                                (experiment_id, arm.value, served_until)).fetchall()
            pred = np.array([r[:3] for r in rows], dtype=np.float64).reshape(-1, 3)
            units = np.array([r[3] for r in rows], dtype=object)
            rows = conn.execute(
                "SELECT o.actual, p.predicted_class, o.correct, o.abs_error, o.pnl, p.served_at, o.worst_case, "
                "COALESCE(p.unit, 'request:' || p.request_id) "
                "FROM outcomes o JOIN predictions p ON p.request_id = o.request_id "
                f"WHERE p.experiment_id = ? AND p.arm = ?{outcome_filter}",
                (experiment_id, arm.value, *args)).fetchall()
            out = np.array([r[:7] for r in rows], dtype=np.float64).reshape(-1, 7)  # NULL -> nan
            data[arm] = ArmData(latency_ms=pred[:, 0], error=pred[:, 1].astype(bool), served_at=pred[:, 2],
                                actual=out[:, 0], predicted_class=out[:, 1], correct=out[:, 2],
                                abs_error=out[:, 3], pnl=out[:, 4], outcome_served_at=out[:, 5],
                                worst_case=out[:, 6] == 1, unit=units,
                                outcome_unit=np.array([r[7] for r in rows], dtype=object))
        return data
