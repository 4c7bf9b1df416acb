"""Persistence of experiments, the predictions served under them, and their outcomes, in the state
database (prediction_service/state: SQLite file by default, PostgreSQL with STATE_DATABASE_URL).

Every write is one transaction (on SQLite ``BEGIN IMMEDIATE``), so a failing statement leaves nothing
behind. "One running experiment per model" is a partial unique index: two processes racing to create one
cannot both win. While the database is unreachable, writes and analyses raise ``StateUnavailable``
(503); serving keeps going: routing falls back to the experiments this process last read, and a
prediction that cannot be recorded is served but not counted (as for a stale route).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, Table, bindparam, cast, exists, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import Conflict, NotFound
from ..log_throttle import ThrottledLog
from ..settings import StateSettings
from ..state import StateUnavailable, open_area
from ..state.driver_sql import insert_rows, placeholders
from ..state.tables import EXPERIMENTS
from ..state.tables import experiment_outcomes as outcomes
from ..state.tables import experiment_predictions as predictions
from ..state.tables import experiment_shadow_predictions as shadows
from ..state.tables import experiments
from .metrics import ArmData
from .models import (Arm, Experiment, ExperimentSpec, ExperimentStatus, OutcomeRecord, PredictionRecord,
                     ShadowRecord)

log = logging.getLogger(__name__)

_EXPERIMENT_COLUMNS = (experiments.c.id, experiments.c.status, experiments.c.spec, experiments.c.created_at,
                       experiments.c.ended_at, experiments.c.end_reason)
_PREDICTION_COLUMNS = tuple(predictions.c[name] for name in PredictionRecord.model_fields)
# the unit: the routing key's digest, or the request itself when it had no key
_UNIT = func.coalesce(predictions.c.unit, literal("request:") + predictions.c.request_id)

# The statements of the per-request calls, built once (building one costs more than running it on SQLite).
_RUNNING = experiments.c.status == "running"
_GET_EXPERIMENT = select(*_EXPERIMENT_COLUMNS).where(experiments.c.id == bindparam("id"))
_RUNNING_EXPERIMENT = select(*_EXPERIMENT_COLUMNS).where(experiments.c.model_name == bindparam("model"), _RUNNING)
# INSERT ... SELECT <values> WHERE the experiment runs: the check and the insert are one statement (CASTs:
# PostgreSQL cannot infer the types of a select list's parameters, a NULL's least of all)
_INSERT_PREDICTION = insert(predictions).from_select(
    [c.name for c in _PREDICTION_COLUMNS],
    select(*[cast(bindparam(c.name, type_=c.type), c.type) for c in _PREDICTION_COLUMNS])
    .where(exists().where(experiments.c.id == bindparam("experiment_id"), _RUNNING))
).returning(predictions.c.request_id)  # a row back when stored (psycopg reports no rowcount for INSERT ... SELECT)
_SHADOW_COLUMNS = tuple(shadows.c[name] for name in ShadowRecord.model_fields)
_EXPERIMENT_EXISTS = select(experiments.c.id).where(experiments.c.id == bindparam("id"))
_GET_PREDICTION = select(*_PREDICTION_COLUMNS).where(predictions.c.request_id == bindparam("request_id"))
_INSERT_OUTCOME = insert(outcomes)


@dataclass(frozen=True)
class PairedRows:
    """A shadow experiment's scored requests, both models' predictions side by side (NaN: none)."""

    actual: np.ndarray
    champion_class: np.ndarray
    champion_value: np.ndarray
    champion_error: np.ndarray
    challenger_class: np.ndarray
    challenger_value: np.ndarray
    challenger_error: np.ndarray
    served_at: np.ndarray
    units: np.ndarray
    """The randomization unit of each request (routing-key digest, else the request)."""


_PREDICTION_NAMES = tuple(PredictionRecord.model_fields)
_SHADOW_NAMES = tuple(ShadowRecord.model_fields)


def _column_values(record: PredictionRecord | ShadowRecord, names: tuple[str, ...]) -> tuple:
    """The record's values of ``names``, in order, as the driver takes them (an arm by its value, a flag as 0/1)."""
    fields = record.__dict__
    return tuple(value.value if isinstance(value, Arm) else int(value) if isinstance(value, bool) else value
                 for value in (fields[name] for name in names))


def _running_among(conn: Connection, experiment_ids: set[str]) -> set[str]:
    """Which of ``experiment_ids`` are running (driver SQL: these run on the record writers' thread)."""
    ids = list(experiment_ids)
    return {row[0] for row in conn.exec_driver_sql(
        f"SELECT id FROM {experiments.name} WHERE status = 'running' AND id IN ({placeholders(conn, len(ids))})",
        tuple(ids))}


def _recorded_among(conn: Connection, table: Table, request_ids: list[str]) -> set[str]:
    """Which of ``request_ids`` ``table`` holds already."""
    return {row[0] for row in conn.exec_driver_sql(
        f"SELECT request_id FROM {table.name} WHERE request_id IN ({placeholders(conn, len(request_ids))})",
        tuple(request_ids))}


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


class ExperimentStore:
    def __init__(self, path: Path, busy_timeout_ms: int = 5000, state: StateSettings | None = None):
        """``path``: the SQLite file when no STATE_DATABASE_URL is set; ``state``: None reads STATE_* from the
        environment."""
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.db = open_area(EXPERIMENTS, self.path, state, busy_timeout_ms / 1000)
        self._seen: dict[str, Experiment] = {}  # last copy read of each experiment: serving during an outage
        self._seen_lock = threading.Lock()
        self._outage_log = ThrottledLog(log, 10.0)

    def close(self) -> None:
        """Returns pooled connections (the engine is shared per process and reopens on demand)."""
        self.db.engine.dispose()

    # -- experiments ---------------------------------------------------------------------------------
    def _experiment(self, row) -> Experiment:
        exp_id, status, spec_json, created_at, ended_at, end_reason = row
        spec = ExperimentSpec.model_validate_json(spec_json)
        experiment = Experiment(**spec.model_dump(), id=exp_id, status=ExperimentStatus(status),
                                created_at=_dt(created_at), ended_at=_dt(ended_at), end_reason=end_reason)
        with self._seen_lock:
            self._seen[exp_id] = experiment
        return experiment

    def insert_experiment(self, experiment_id: str, spec: ExperimentSpec, created_at: float) -> Experiment:
        """Stores a running experiment; Conflict when the model already has one."""
        try:
            with self.db.write() as conn:
                running = conn.execute(select(experiments.c.id).where(
                    experiments.c.model_name == spec.model_name, experiments.c.status == "running")).first()
                if running:
                    raise Conflict(f"model {spec.model_name!r} already has a running experiment {running[0]}",
                                   {"experiment_id": running[0]})
                conn.execute(insert(experiments).values(id=experiment_id, model_name=spec.model_name,
                                                        status="running", spec=spec.model_dump_json(),
                                                        created_at=created_at))
        except IntegrityError as exc:  # lost a race with another process
            raise Conflict(f"model {spec.model_name!r} already has a running experiment") from exc
        return self.get_experiment(experiment_id)

    def get_experiment(self, experiment_id: str) -> Experiment:
        """NotFound for an unknown id. While the database is unreachable: the copy this process last read,
        if any (an experiment's definition never changes; its status may be stale)."""
        try:
            with self.db.read() as conn:
                row = conn.execute(_GET_EXPERIMENT, {"id": experiment_id}).first()
        except StateUnavailable:
            seen = self._seen.get(experiment_id)
            if seen is None:
                raise
            return seen
        if row is None:
            raise NotFound(f"experiment {experiment_id!r} not found", {"experiment_id": experiment_id})
        return self._experiment(row)

    def list_experiments(self, model_name: str | None = None,
                         status: ExperimentStatus | None = None) -> list[Experiment]:
        query = select(*_EXPERIMENT_COLUMNS)
        if model_name is not None:
            query = query.where(experiments.c.model_name == model_name)
        if status is not None:
            query = query.where(experiments.c.status == status.value)
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(experiments.c.created_at.desc(), experiments.c.id)).all()
        return [self._experiment(r) for r in rows]

    def running_experiment(self, model_name: str) -> Experiment | None:
        """While the database is unreachable: what this process last knew to run (serving keeps its route)."""
        try:
            with self.db.read() as conn:
                row = conn.execute(_RUNNING_EXPERIMENT, {"model": model_name}).first()
        except StateUnavailable as exc:
            self._outage_log.warning("route", f"experiments: routing {model_name} from memory: {exc.message}")
            return next((e for e in self._seen.values()
                         if e.model_name == model_name and e.status is ExperimentStatus.RUNNING), None)
        if row is None:
            with self._seen_lock:  # ended elsewhere: never route to it from memory later
                for exp_id, seen in list(self._seen.items()):
                    if seen.model_name == model_name and seen.status is ExperimentStatus.RUNNING:
                        del self._seen[exp_id]
            return None
        return self._experiment(row)

    def transition(self, experiment_id: str, to: ExperimentStatus, reason: str, at: float,
                   expected: ExperimentStatus = ExperimentStatus.RUNNING) -> bool:
        """Compare-and-set of the status; False when it was not ``expected`` (another worker acted first)."""
        ended_at = None if to is ExperimentStatus.RUNNING else at
        with self.db.write() as conn:
            result = conn.execute(update(experiments)
                                  .where(experiments.c.id == experiment_id, experiments.c.status == expected.value)
                                  .values(status=to.value, ended_at=ended_at, end_reason=reason if ended_at else None))
            won = result.rowcount == 1
        if won:
            with self._seen_lock:
                self._seen.pop(experiment_id, None)
        return won

    # -- predictions and outcomes --------------------------------------------------------------------
    def insert_prediction(self, record: PredictionRecord) -> bool:
        """Stores a prediction of a RUNNING experiment; False (nothing stored) when the experiment has ended:
        an assignment handed out before a stop or promotion (a worker's route cache) is not counted. False
        too while the database is unreachable: the prediction is served, but not part of the experiment."""
        values = record.model_dump(mode="json")
        values["error"] = int(record.error)
        try:
            with self.db.write() as conn:
                if conn.execute(_INSERT_PREDICTION, values).first() is not None:
                    return True
                if conn.execute(_EXPERIMENT_EXISTS, {"id": record.experiment_id}).first() is None:
                    raise NotFound(f"experiment {record.experiment_id!r} not found")
                return False
        except IntegrityError as exc:
            raise Conflict(f"prediction {record.request_id!r} is already recorded",
                           {"request_id": record.request_id}) from exc
        except StateUnavailable as exc:
            self._outage_log.warning("predict", f"experiments: predictions served but not counted: {exc.message}")
            return False

    def insert_shadows(self, records: list[ShadowRecord]) -> list[bool]:
        """Stores challengers' answers to copies of requests, in one transaction, for the experiments still
        running; for each, whether it was stored (none while the database is unreachable). Conflict when a
        request id was stored before (nothing is stored then)."""
        if not records:
            return []
        ids = [record.request_id for record in records]
        try:
            with self.db.write() as conn:
                recorded = _recorded_among(conn, shadows, ids)
                if recorded:
                    raise Conflict("a shadow prediction is already recorded", {"request_ids": sorted(recorded)[:10]})
                running = _running_among(conn, {record.experiment_id for record in records})
                stored = [record.experiment_id in running for record in records]
                insert_rows(conn, shadows, _SHADOW_NAMES,
                            [_column_values(record, _SHADOW_NAMES) for record, new in zip(records, stored) if new])
                return stored
        except IntegrityError as exc:
            raise Conflict("a shadow prediction is already recorded",
                           {"request_ids": [r.request_id for r in records][:10]}) from exc
        except StateUnavailable as exc:
            self._outage_log.warning("shadow", f"experiments: shadow answers not counted: {exc.message}")
            return [False] * len(records)

    def get_shadow(self, request_id: str) -> ShadowRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(*_SHADOW_COLUMNS).where(shadows.c.request_id == request_id)).first()
        if row is None:
            return None
        fields = dict(zip(ShadowRecord.model_fields, row))
        fields["error"] = bool(fields["error"])
        return ShadowRecord(**fields)

    def shadow_data(self, experiment_id: str) -> ArmData:
        """The challenger's side of a shadow experiment as an arm: its shadow answers (latency, errors) and, for
        each scored request it answered, the outcome scored against its own prediction. Rows in time order;
        ``correct`` and ``abs_error`` are computed here from the actual value (the outcome table scores the
        champion)."""
        with self.db.read() as conn:
            rows = conn.execute(select(shadows.c.latency_ms, shadows.c.error, shadows.c.served_at, _UNIT)
                                .select_from(shadows.join(predictions, predictions.c.request_id == shadows.c.request_id,
                                                          isouter=True))
                                .where(shadows.c.experiment_id == experiment_id)
                                .order_by(shadows.c.served_at, shadows.c.request_id)).all()
            scored = conn.execute(
                select(outcomes.c.actual, shadows.c.predicted_class, shadows.c.predicted_value, shadows.c.error,
                       outcomes.c.pnl, predictions.c.served_at, _UNIT)
                .select_from(shadows.join(predictions, predictions.c.request_id == shadows.c.request_id)
                             .join(outcomes, outcomes.c.request_id == shadows.c.request_id))
                .where(shadows.c.experiment_id == experiment_id)
                .order_by(predictions.c.served_at, predictions.c.request_id)).all()
        pred = np.array([r[:3] for r in rows], dtype=np.float64).reshape(-1, 3)
        out = np.array([tuple(np.nan if v is None else v for v in r[:6]) for r in scored],
                       dtype=np.float64).reshape(-1, 6)
        actual, predicted_class, predicted_value, error = out[:, 0], out[:, 1], out[:, 2], out[:, 3] == 1
        with np.errstate(invalid="ignore"):
            correct = np.where(np.isnan(predicted_class), np.where(error, 0.0, np.nan),
                               (predicted_class == actual).astype(np.float64))
        return ArmData(latency_ms=pred[:, 0], error=pred[:, 1].astype(bool), served_at=pred[:, 2],
                       unit=np.array([r[3] for r in rows], dtype=object), actual=actual,
                       predicted_class=predicted_class, correct=correct, abs_error=np.abs(actual - predicted_value),
                       pnl=np.full(len(scored), np.nan), outcome_served_at=out[:, 5], worst_case=error,
                       outcome_unit=np.array([r[6] for r in scored], dtype=object))

    def paired_rows(self, experiment_id: str) -> PairedRows:
        """Every request of a shadow experiment that both models answered and that has an outcome, in the
        order it was served."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(outcomes.c.actual, predictions.c.predicted_class, predictions.c.predicted_value,
                       predictions.c.error, shadows.c.predicted_class, shadows.c.predicted_value, shadows.c.error,
                       predictions.c.served_at, _UNIT)
                .select_from(predictions.join(shadows, shadows.c.request_id == predictions.c.request_id)
                             .join(outcomes, outcomes.c.request_id == predictions.c.request_id))
                .where(predictions.c.experiment_id == experiment_id)
                .order_by(predictions.c.served_at, predictions.c.request_id)).all()
        values = np.array([tuple(np.nan if v is None else v for v in r[:8]) for r in rows],
                          dtype=np.float64).reshape(-1, 8)
        return PairedRows(actual=values[:, 0], champion_class=values[:, 1], champion_value=values[:, 2],
                          champion_error=values[:, 3] == 1, challenger_class=values[:, 4],
                          challenger_value=values[:, 5], challenger_error=values[:, 6] == 1,
                          served_at=values[:, 7], units=np.array([r[8] for r in rows], dtype=object))

    def insert_predictions(self, records: list[PredictionRecord]) -> list[bool]:
        """``insert_prediction`` for many, in one transaction and one multi-row INSERT (the per-request
        records of busy experiments share commits); for each, whether it was stored. Records of experiments
        that are not running, and request ids recorded before, are not stored (the latter logged); should
        another process store one of the same ids meanwhile, the batch is retried one by one."""
        if not records:
            return []
        ids = [record.request_id for record in records]
        try:
            with self.db.write() as conn:
                running = _running_among(conn, {r.experiment_id for r in records})
                taken = _recorded_among(conn, predictions, ids)
                stored = []
                for record in records:
                    new = record.experiment_id in running and record.request_id not in taken
                    if new:
                        taken.add(record.request_id)
                    elif record.request_id in taken and record.experiment_id in running:
                        self._outage_log.warning("conflict", f"experiments: prediction {record.request_id!r} "
                                                             "is already recorded; not counted again")
                    stored.append(new)
                insert_rows(conn, predictions, _PREDICTION_NAMES,
                            [_column_values(r, _PREDICTION_NAMES) for r, new in zip(records, stored) if new])
                return stored
        except IntegrityError:
            return [self._insert_or_refuse(record) for record in records]
        except StateUnavailable as exc:
            self._outage_log.warning("predict", f"experiments: predictions served but not counted: {exc.message}")
            return [False] * len(records)

    def _insert_or_refuse(self, record: PredictionRecord) -> bool:
        try:
            return self.insert_prediction(record)
        except (Conflict, NotFound) as exc:
            self._outage_log.warning(exc.code, f"experiments: prediction not counted: {exc.message}")
            return False

    def get_prediction(self, request_id: str) -> PredictionRecord:
        with self.db.read() as conn:
            row = conn.execute(_GET_PREDICTION, {"request_id": request_id}).first()
        if row is None:
            raise NotFound(f"no prediction served under an experiment has request id {request_id!r}",
                           {"request_id": request_id})
        fields = dict(zip(PredictionRecord.model_fields, row))
        fields["error"] = bool(fields["error"])
        return PredictionRecord(**fields)

    def insert_outcome(self, record: OutcomeRecord) -> None:
        correct = None if record.correct is None else int(record.correct)
        try:
            with self.db.write() as conn:
                conn.execute(_INSERT_OUTCOME, {
                    "request_id": record.request_id, "actual": record.actual, "correct": correct,
                    "abs_error": record.abs_error, "pnl": record.pnl, "recorded_at": record.recorded_at,
                    "worst_case": int(record.worst_case)})
        except IntegrityError as exc:
            raise Conflict(f"request {record.request_id!r} already has an outcome",
                           {"request_id": record.request_id}) from exc

    def outcome_count(self, experiment_id: str) -> int:
        with self.db.read() as conn:
            return int(conn.execute(
                select(func.count()).select_from(outcomes.join(predictions))
                .where(predictions.c.experiment_id == experiment_id)).scalar_one())

    def arm_data(self, experiment_id: str, first_outcomes: int | None = None) -> dict[Arm, ArmData]:
        """All samples of an experiment, per arm, as arrays (one query per table), read in one transaction.

        ``first_outcomes``: only the first that many outcomes (by recording order) and the predictions
        served up to when the last of them was recorded: the frozen data of a fixed-horizon decision."""
        with self.db.read() as conn:
            return self._arm_data(conn, experiment_id, first_outcomes)

    @staticmethod
    def _arm_data(conn: Connection, experiment_id: str, first_outcomes: int | None) -> dict[Arm, ArmData]:
        served_until, outcome_filter = float("inf"), None
        if first_outcomes is not None:
            first = (select(outcomes.c.request_id).select_from(outcomes.join(predictions))
                     .where(predictions.c.experiment_id == experiment_id)
                     .order_by(outcomes.c.recorded_at, outcomes.c.request_id).limit(first_outcomes))
            last = conn.execute(select(func.max(outcomes.c.recorded_at))
                                .where(outcomes.c.request_id.in_(first.scalar_subquery()))).scalar_one()
            served_until = float("-inf") if last is None else last
            outcome_filter = outcomes.c.request_id.in_(first.scalar_subquery())
        data: dict[Arm, ArmData] = {}
        for arm in Arm:
            rows = conn.execute(select(predictions.c.latency_ms, predictions.c.error, predictions.c.served_at, _UNIT)
                                .where(predictions.c.experiment_id == experiment_id, predictions.c.arm == arm.value,
                                       predictions.c.served_at <= served_until)
                                .order_by(predictions.c.served_at, predictions.c.request_id)).all()
            pred = np.array([r[:3] for r in rows], dtype=np.float64).reshape(-1, 3)
            units = np.array([r[3] for r in rows], dtype=object)
            query = (select(outcomes.c.actual, predictions.c.predicted_class, outcomes.c.correct, outcomes.c.abs_error,
                            outcomes.c.pnl, predictions.c.served_at, outcomes.c.worst_case, _UNIT)
                     .select_from(outcomes.join(predictions))
                     .where(predictions.c.experiment_id == experiment_id, predictions.c.arm == arm.value)
                     .order_by(predictions.c.served_at, predictions.c.request_id))  # batch means: in time order
            if outcome_filter is not None:
                query = query.where(outcome_filter)
            rows = conn.execute(query).all()
            out = np.array([tuple(np.nan if v is None else v for v in r[:7]) for r in rows],
                           dtype=np.float64).reshape(-1, 7)
            data[arm] = ArmData(latency_ms=pred[:, 0], error=pred[:, 1].astype(bool), served_at=pred[:, 2],
                                actual=out[:, 0], predicted_class=out[:, 1], correct=out[:, 2],
                                abs_error=out[:, 3], pnl=out[:, 4], outcome_served_at=out[:, 5],
                                worst_case=out[:, 6] == 1, unit=units,
                                outcome_unit=np.array([r[7] for r in rows], dtype=object))
        return data
