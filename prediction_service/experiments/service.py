"""ExperimentService: the one entry point the API and the prediction path use for A/B experiments.

Hot path: ``route(model, routing_key)`` (served from a per-process cache refreshed every
``route_cache_ttl_seconds``, so most requests never touch SQLite) and, after serving,
``record_prediction(...)`` (one small SQLite insert: call it off the event loop). Trading systems later
report what happened with ``record_outcome(request_id, actual, pnl)``; ``analyze(id)`` computes metrics,
tests and the decision, and applies it when the experiment has ``auto_apply``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable

import numpy as np

from ..errors import BadRequest, Conflict, InvalidInput, VersionNotFound
from ..settings import ExperimentSettings
from . import router
from .decision import DecisionContext, decide
from .metrics import arm_metrics
from .models import (Analysis, Arm, Assignment, Decision, Experiment, ExperimentSpec, ExperimentStatus,
                     OutcomeRecord, PredictionRecord, Thresholds)
from .store import ExperimentStore

log = logging.getLogger(__name__)

Promoter = Callable[[str, str], None]
"""promoter(model_name, version): make ``version`` the production version (the registry's promote)."""
VersionExists = Callable[[str, str], bool]
"""version_exists(model_name, version) -> bool."""


def summarize_prediction(prediction: np.ndarray | None, task: str) -> tuple[int | None, float | None]:
    """(predicted class, predicted value) of one request's output; the first row when it has several.

    classification: an integer scalar is the class; one float is a positive-class probability
    (threshold 0.5); otherwise the argmax over the last axis (probabilities or logits).
    regression: the first element is the predicted value."""
    if prediction is None:
        return None, None
    arr = np.asarray(prediction)
    if arr.size == 0:
        return None, None
    if task == "regression":
        return None, float(arr.reshape(-1)[0])
    if arr.size == 1:
        value = arr.reshape(-1)[0]
        return (int(value), None) if np.issubdtype(arr.dtype, np.integer) else (int(value >= 0.5), None)
    return int(np.argmax(arr.reshape(-1, arr.shape[-1])[0])), None


class ExperimentService:
    def __init__(self, store: ExperimentStore, settings: ExperimentSettings, promoter: Promoter | None,
                 version_exists: VersionExists, clock: Callable[[], float] = time.time):
        self.store = store
        self.settings = settings
        self.promoter = promoter
        self.version_exists = version_exists
        self.clock = clock
        self._route_cache: dict[str, tuple[float, Experiment | None]] = {}
        self._tasks: dict[str, str] = {}  # experiment id -> task; a spec never changes
        self._lock = threading.Lock()

    # -- management ----------------------------------------------------------------------------------
    def create(self, spec: ExperimentSpec) -> Experiment:
        if spec.champion_version == spec.challenger_version:
            raise BadRequest("champion and challenger must be different versions",
                             {"version": spec.champion_version})
        if not 0 < spec.traffic_split < 1:  # the model checks it too; guards model_construct callers
            raise InvalidInput(f"traffic_split must be strictly between 0 and 1, got {spec.traffic_split}")
        if spec.auto_apply and self.promoter is None:
            raise BadRequest("auto_apply needs a promoter; this service was built without one")
        for version in (spec.champion_version, spec.challenger_version):
            if not self.version_exists(spec.model_name, version):
                raise VersionNotFound(f"model {spec.model_name!r} has no version {version!r}",
                                      {"model": spec.model_name, "version": version})
        experiment = self.store.insert_experiment(uuid.uuid4().hex, spec, self.clock())
        self._invalidate(spec.model_name)
        log.info("experiment %s started: %s %s vs %s, challenger share %.2f", experiment.id, spec.model_name,
                 spec.champion_version, spec.challenger_version, spec.traffic_split)
        return experiment

    def get(self, experiment_id: str) -> Experiment:
        return self.store.get_experiment(experiment_id)

    def list(self, model_name: str | None = None, status: ExperimentStatus | None = None) -> list[Experiment]:
        return self.store.list_experiments(model_name, status)

    def stop(self, experiment_id: str, reason: str = "stopped by operator") -> Experiment:
        experiment = self.store.get_experiment(experiment_id)
        if not self.store.transition(experiment_id, ExperimentStatus.STOPPED, reason, self.clock()):
            raise Conflict(f"experiment {experiment_id} is {self.store.get_experiment(experiment_id).status.value},"
                           " not running", {"experiment_id": experiment_id})
        self._invalidate(experiment.model_name)
        log.info("experiment %s stopped: %s", experiment_id, reason)
        return self.store.get_experiment(experiment_id)

    # -- hot path ------------------------------------------------------------------------------------
    def _invalidate(self, model_name: str) -> None:
        with self._lock:
            self._route_cache.pop(model_name, None)

    def _running(self, model_name: str) -> Experiment | None:
        now = time.monotonic()
        cached = self._route_cache.get(model_name)
        if cached is not None and cached[0] > now:
            return cached[1]
        experiment = self.store.running_experiment(model_name)
        with self._lock:
            self._route_cache[model_name] = (now + self.settings.route_cache_ttl_seconds, experiment)
        return experiment

    def route(self, model_name: str, routing_key: str | None = None) -> Assignment | None:
        """The arm and version to serve, or None when no experiment runs for the model.

        Another process's stop/promotion is seen within route_cache_ttl_seconds."""
        experiment = self._running(model_name)
        return None if experiment is None else router.assign(experiment, routing_key)

    def _task(self, experiment_id: str) -> str:
        task = self._tasks.get(experiment_id)
        if task is None:
            task = self._tasks[experiment_id] = self.store.get_experiment(experiment_id).task
        return task

    def record_prediction(self, request_id: str, assignment: Assignment, latency_ms: float, error: bool,
                          prediction: np.ndarray | None = None) -> None:
        """Stores one served request (Conflict when the request id is already recorded)."""
        predicted_class, predicted_value = summarize_prediction(prediction, self._task(assignment.experiment_id))
        self.store.insert_prediction(PredictionRecord(
            request_id=request_id, experiment_id=assignment.experiment_id, arm=assignment.arm,
            version=assignment.version, served_at=self.clock(), latency_ms=float(latency_ms), error=bool(error),
            predicted_class=predicted_class, predicted_value=predicted_value))

    def record_outcome(self, request_id: str, actual: float, pnl: float | None = None) -> OutcomeRecord:
        """Scores a served prediction against what happened. NotFound for an unknown request id,
        Conflict when it already has an outcome."""
        if not math.isfinite(actual) or (pnl is not None and not math.isfinite(pnl)):
            raise InvalidInput("actual and pnl must be finite numbers")
        prediction = self.store.get_prediction(request_id)
        task = self._task(prediction.experiment_id)
        correct = abs_error = None
        if task == "classification":
            if actual != int(actual):
                raise InvalidInput(f"classification outcome must be a class index, got {actual}")
            if prediction.predicted_class is not None:
                correct = prediction.predicted_class == int(actual)
        elif prediction.predicted_value is not None:
            abs_error = abs(actual - prediction.predicted_value)
        record = OutcomeRecord(request_id=request_id, experiment_id=prediction.experiment_id, arm=prediction.arm,
                               actual=actual, correct=correct, abs_error=abs_error, pnl=pnl,
                               recorded_at=self.clock())
        self.store.insert_outcome(record)
        return record

    # -- analysis ------------------------------------------------------------------------------------
    def thresholds(self, experiment: ExperimentSpec) -> Thresholds:
        s, o = self.settings, experiment.thresholds
        def pick(name: str) -> float:
            value = getattr(o, name)
            return getattr(s, name) if value is None else value
        return Thresholds(alpha=pick("alpha"), power=pick("power"),
                          promote_min_accuracy_gain=pick("promote_min_accuracy_gain"),
                          max_latency_degradation_ms=pick("max_latency_degradation_ms"),
                          rollback_error_rate_increase=pick("rollback_error_rate_increase"),
                          rollback_accuracy_drop=pick("rollback_accuracy_drop"),
                          min_samples_per_arm=experiment.min_samples_per_arm or s.min_samples_per_arm,
                          msprt_tau=o.msprt_tau)

    def analyze(self, experiment_id: str) -> Analysis:
        experiment = self.store.get_experiment(experiment_id)
        thresholds = self.thresholds(experiment)
        data = self.store.arm_data(experiment_id)
        ctx = DecisionContext(task=experiment.task, thresholds=thresholds, mode=experiment.mode,
                              variance=experiment.variance, cluster_seconds=experiment.cluster_seconds,
                              traffic_split=experiment.traffic_split)
        result = decide(data[Arm.CHAMPION], data[Arm.CHALLENGER], ctx)
        applied = False
        if experiment.auto_apply and experiment.status is ExperimentStatus.RUNNING:
            applied = self._apply(experiment, result.decision, "; ".join(result.reasons))
            if applied:
                experiment = self.store.get_experiment(experiment_id)
        comparisons = [c for c in (result.primary, result.latency, result.error_rate, result.pnl) if c is not None]
        periods = self.settings.sharpe_periods_per_year
        return Analysis(experiment=experiment, thresholds=thresholds,
                        arms={arm: arm_metrics(data[arm], experiment.task, periods) for arm in Arm},
                        decision=result.decision, reasons=result.reasons, comparisons=comparisons, applied=applied)

    def apply_due_decisions(self) -> list[Analysis]:
        """Analyse every running auto_apply experiment (acting on its decision); returns the ones applied.

        Run on a schedule by every worker: the compare-and-set in ``_apply`` makes one of them win."""
        applied = []
        for experiment in self.store.list_experiments(status=ExperimentStatus.RUNNING):
            if not experiment.auto_apply:
                continue
            try:
                analysis = self.analyze(experiment.id)
            except Exception:  # noqa: BLE001 - one broken experiment must not stop the others
                log.exception("auto-apply analysis of experiment %s failed", experiment.id)
                continue
            if analysis.applied:
                applied.append(analysis)
        return applied

    def _apply(self, experiment: Experiment, decision: Decision, reason: str) -> bool:
        """Acts on a decision once (compare-and-set on the status, so one worker wins)."""
        if decision is Decision.CONTINUE:
            return False
        now = self.clock()
        if decision is Decision.ROLLBACK:
            won = self.store.transition(experiment.id, ExperimentStatus.ROLLED_BACK, reason, now)
            if won:
                log.warning("experiment %s rolled back, champion %s kept: %s", experiment.id,
                            experiment.champion_version, reason)
        else:
            won = self.store.transition(experiment.id, ExperimentStatus.PROMOTED, reason, now)
            if won:
                try:
                    if self.promoter is None:  # create() refuses auto_apply without one
                        raise BadRequest("auto_apply needs a promoter; this service was built without one")
                    self.promoter(experiment.model_name, experiment.challenger_version)
                except BaseException:
                    self.store.transition(experiment.id, ExperimentStatus.RUNNING, "", now,
                                          expected=ExperimentStatus.PROMOTED)
                    raise
                log.warning("experiment %s promoted %s %s: %s", experiment.id, experiment.model_name,
                            experiment.challenger_version, reason)
        self._invalidate(experiment.model_name)
        return won
