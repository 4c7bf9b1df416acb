"""ExperimentService: the one entry point the API and the prediction path use for A/B experiments.

Hot path: ``route(model, routing_key)`` (served from a per-process cache refreshed every
``route_cache_ttl_seconds``, so most requests never touch SQLite) and, after serving,
``record_prediction(...)`` (one small SQLite insert: call it off the event loop). Trading systems later
report what happened with ``record_outcome(request_id, actual, pnl, reporter)``; ``analyze(id)`` computes
metrics, tests and the decision, and applies it when the experiment has ``auto_apply``.

Who may report an outcome: in an experiment with ``auto_apply`` an outcome is a vote on production, so it
comes only from a key with outcome (or admin) scope: the system that reports fills and P&L. A read key is
handed to strategies and dashboards, and one that made its own predictions could vote with them too.
Elsewhere a prediction's outcome comes from the key that made the prediction or from an outcome key, and an
anonymous prediction's outcome from any read key. ``anonymous_outcomes_auto_apply`` opts auto_apply
experiments back into those per-prediction rules.

Safe defaults: auto_apply acts on always-valid (sequential) tests, or on a fixed-horizon test once, at its
planned size; create refuses anything else, a champion that is not what production serves, and a
challenger the registry would refuse to promote (its validation gate; a serving contract that differs from
production's, 409 contract_changed: production's clients would break on its share of traffic), so a
PROMOTE cannot fail later. The promoter is the registry's own promote, without any override. If a promotion fails
anyway, the experiment stops with the reason instead of retrying (and failing) on every analysis.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from ..errors import (BadRequest, Conflict, Forbidden, InvalidInput, NotFound, PredictionServiceError,
                      VersionNotFound)
from ..request_ids import issued_at
from ..settings import ExperimentSettings
from . import router
from .decision import DecisionContext, decide, scored_units, worst_abs_error
from .metrics import ArmData, arm_metrics
from .models import (Analysis, Arm, Assignment, Decision, DecisionResult, Experiment, ExperimentKind, ExperimentMode,
                     ExperimentSpec, ExperimentStatus, OutcomeRecord, PredictionRecord, ShadowRecord, Thresholds)
from .paired import PairedData, decide_paired
from .store import ExperimentStore

log = logging.getLogger(__name__)

PENDING_RECORD_S = 10.0
"""How recent a request id must be for an outcome to wait for its prediction's record."""
OUTCOME_POLL_S = 0.02
Promoter = Callable[[str, str], None]
"""promoter(model_name, version): make ``version`` the production version (the registry's promote)."""
VersionExists = Callable[[str, str], bool]
"""version_exists(model_name, version) -> bool."""


@dataclass(frozen=True)
class VersionFacts:
    status: str
    """none | staging | production | archived."""
    validation_passed: bool
    promotion_refused: PredictionServiceError | None = None
    """What the registry's promotion into production would refuse the version with (its validation gate, a
    serving contract that differs from production's: 409 contract_changed); None when it would pass."""


class VersionCatalog(Protocol):
    """What create() asks the registry: which version serves production, and what a version is."""

    def production(self, model_name: str) -> str | None: ...

    def facts(self, model_name: str, version: str) -> VersionFacts | None: ...


class ExperimentObserver(Protocol):
    """What monitoring learns from experiments (monitoring/metrics.py's ServiceMetrics implements it).
    Called after the fact; an observer that fails is logged and never fails the experiment."""

    def experiment_seen(self, experiment: Experiment) -> None: ...

    def experiment_prediction(self, experiment: Experiment, arm: str, count: int = 1) -> None: ...

    def experiment_outcome(self, experiment: Experiment, arm: str) -> None: ...

    def experiment_analysis(self, analysis: Analysis) -> None: ...

    def experiment_applied_decision(self, experiment: Experiment, decision: str) -> None: ...


class RegistryCatalog:
    """VersionCatalog over the model registry's public API (``stages`` and ``get``)."""

    def __init__(self, registry: Any):
        self.registry = registry

    def production(self, model_name: str) -> str | None:
        try:
            return self.registry.stages(model_name).get("production")
        except PredictionServiceError:
            return None

    def facts(self, model_name: str, version: str) -> VersionFacts | None:
        try:
            metadata = self.registry.get(model_name, version).metadata
            refusal = self.registry.production_refusal(model_name, version)
        except PredictionServiceError:
            return None
        return VersionFacts(status=metadata.status,
                            validation_passed=metadata.validation is not None and metadata.validation.passed,
                            promotion_refused=refusal)


@dataclass(frozen=True)
class ServedPrediction:
    """One request served under an experiment, as the data plane hands it over to be recorded."""

    request_id: str
    assignment: Assignment
    latency_ms: float
    error: bool
    prediction: np.ndarray | None = None
    api_key_id: str | None = None


@dataclass(frozen=True)
class ShadowAnswer:
    """The challenger's answer to the copy of one production request, as the shadow runner hands it over."""

    request_id: str
    assignment: Assignment
    latency_ms: float
    error: bool
    prediction: np.ndarray | None = None


@dataclass(frozen=True)
class OutcomeReporter:
    """The caller posting an outcome (from its API key)."""

    key_id: str
    any_prediction: bool = False
    """outcome or admin scope: may report the outcome of any prediction."""


def finite_output(prediction: np.ndarray | None) -> bool:
    """False when a numeric output holds NaN or inf anywhere (the request counts as an error)."""
    if prediction is None:
        return True
    arr = np.asarray(prediction)
    if arr.dtype.kind not in "fc":
        return True
    return bool(np.isfinite(arr).all())


def summarize_prediction(prediction: np.ndarray | None, task: str) -> tuple[int | None, float | None]:
    """(predicted class, predicted value) of one request's output; the first row when it has several.

    classification: an integer scalar is the class; one float is a positive-class probability
    (threshold 0.5); otherwise the argmax over the last axis (probabilities or logits).
    regression: the first element is the predicted value. (None, None) when the output is empty or
    not finite: NaN probabilities are no class (argmax would call them class 0)."""
    if prediction is None:
        return None, None
    arr = np.asarray(prediction)
    if arr.size == 0 or not finite_output(arr):
        return None, None
    if task == "regression":
        return None, float(arr.reshape(-1)[0])
    if arr.size == 1:
        value = arr.reshape(-1)[0]
        return (int(value), None) if np.issubdtype(arr.dtype, np.integer) else (int(value >= 0.5), None)
    return int(np.argmax(arr.reshape(-1, arr.shape[-1])[0])), None


async def _nothing_pending() -> None:
    """No data plane writes records behind answers for this service."""


class ExperimentService:
    def __init__(self, store: ExperimentStore, settings: ExperimentSettings, promoter: Promoter | None,
                 version_exists: VersionExists, clock: Callable[[], float] = time.time, *,
                 catalog: VersionCatalog | None = None, observer: ExperimentObserver | None = None):
        self.store = store
        self.settings = settings
        self.promoter = promoter
        self.version_exists = version_exists
        self.catalog = catalog
        """When given, create() checks the champion serves production and the challenger may enter it."""
        self.clock = clock
        self.observer = observer
        self.flush_pending_records: Callable[[], Awaitable[None]] = _nothing_pending
        """Writes the prediction records this worker holds behind its answers now, not after their linger,
        and returns once they are written (set by the data plane that writes them): an outcome waits for one."""
        self._route_cache: dict[str, tuple[float, Experiment | None]] = {}
        self._specs: dict[str, Experiment] = {}  # experiment id -> experiment; only its spec is read (never changes)
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
        self._check_design(spec)
        for version in (spec.champion_version, spec.challenger_version):
            if not self.version_exists(spec.model_name, version):
                raise VersionNotFound(f"model {spec.model_name!r} has no version {version!r}",
                                      {"model": spec.model_name, "version": version})
        if self.catalog is not None:
            self._check_versions(spec, self.catalog)
        experiment = self.store.insert_experiment(uuid.uuid4().hex, spec, self.clock())
        self._invalidate(spec.model_name)
        log.info("experiment %s started: %s %s vs %s, challenger share %.2f", experiment.id, spec.model_name,
                 spec.champion_version, spec.challenger_version, spec.traffic_split)
        return experiment

    def _check_design(self, spec: ExperimentSpec) -> None:
        """Refuses combinations whose decisions could not be trusted, with what to do instead."""
        th = self.thresholds(spec)
        if th.target_accuracy_gain <= th.promote_min_accuracy_gain:
            raise BadRequest(f"target_accuracy_gain ({th.target_accuracy_gain}) must exceed "
                             f"promote_min_accuracy_gain ({th.promote_min_accuracy_gain}): no sample size gives a "
                             "true gain at the margin more than 50 % power",
                             {"target_accuracy_gain": th.target_accuracy_gain,
                              "promote_min_accuracy_gain": th.promote_min_accuracy_gain})
        if spec.kind is ExperimentKind.SHADOW and spec.mode is not ExperimentMode.SEQUENTIAL:
            raise BadRequest("a shadow experiment is sequential: its paired test may be analysed after every outcome",
                             {"kind": spec.kind.value, "mode": spec.mode.value})
        if spec.mode is ExperimentMode.FIXED:
            if spec.auto_apply and spec.planned_outcomes is None:
                raise BadRequest("auto_apply with mode=fixed needs planned_outcomes: a fixed-horizon test is valid "
                                 "for one look at a planned size, and auto_apply analyses on a schedule. Use "
                                 "mode=sequential (the default), or set planned_outcomes (an analysis reports "
                                 "planned_total)", {"mode": spec.mode.value, "auto_apply": True})
            if spec.planned_outcomes is not None:
                smaller = min(spec.traffic_split, 1 - spec.traffic_split)
                if spec.planned_outcomes * smaller < th.min_samples_per_arm:
                    raise BadRequest(f"planned_outcomes={spec.planned_outcomes} gives the smaller arm about "
                                     f"{spec.planned_outcomes * smaller:.0f} outcomes; it needs "
                                     f"min_samples_per_arm={th.min_samples_per_arm}",
                                     {"planned_outcomes": spec.planned_outcomes})
        elif spec.planned_outcomes is not None:
            raise BadRequest("planned_outcomes is for mode=fixed; a sequential experiment may stop at any look",
                             {"mode": spec.mode.value})

    @staticmethod
    def _check_versions(spec: ExperimentSpec, catalog: VersionCatalog) -> None:
        production = catalog.production(spec.model_name)
        if production != spec.champion_version:
            raise Conflict(f"champion {spec.champion_version} is not what production serves "
                           f"({production or 'no production version'}): the champion must be the production "
                           "version, or a promotion would replace something the experiment never measured",
                           {"model": spec.model_name, "champion_version": spec.champion_version,
                            "production_version": production})
        facts = catalog.facts(spec.model_name, spec.challenger_version)
        if facts is not None and not facts.validation_passed:
            raise Conflict(f"challenger {spec.challenger_version} has no passing validation report, so the registry "
                           "would refuse to promote it: validate it first",
                           {"model": spec.model_name, "challenger_version": spec.challenger_version})
        if facts is not None and facts.promotion_refused is not None:
            # the same error the promotion would raise (a changed serving contract: 409 contract_changed):
            # production's clients would also break on the challenger's share of traffic
            refusal = facts.promotion_refused
            raise type(refusal)(f"challenger {spec.challenger_version}: {refusal.message} (the registry would "
                                "refuse to promote it, and the experiment would route production traffic to it)",
                                {**refusal.details, "challenger_version": spec.challenger_version})

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

    def _spec(self, experiment_id: str) -> Experiment:
        experiment = self._specs.get(experiment_id)
        if experiment is None:
            experiment = self._specs[experiment_id] = self.store.get_experiment(experiment_id)
            self._observe("experiment_seen", experiment)
        return experiment

    def _task(self, experiment_id: str) -> str:
        return self._spec(experiment_id).task

    def _observe(self, method: str, *args: Any) -> None:
        if self.observer is not None:
            try:
                getattr(self.observer, method)(*args)
            except Exception:  # noqa: BLE001 - metrics never fail an experiment
                log.exception("experiment observer %s failed", method)

    def record_prediction(self, request_id: str, assignment: Assignment, latency_ms: float, error: bool,
                          prediction: np.ndarray | None = None, *, api_key_id: str | None = None) -> bool:
        """Stores one served request (Conflict when the request id is already recorded). A NaN/inf output
        counts as an error. False, and nothing stored, when the experiment ended after the assignment was
        made (a stale route): such a prediction is not part of the experiment."""
        served = ServedPrediction(request_id, assignment, latency_ms, error, prediction, api_key_id)
        recorded = self.store.insert_prediction(self._prediction_record(served))
        if recorded:
            self._observe("experiment_prediction", self._spec(assignment.experiment_id), assignment.arm.value)
        return recorded

    def record_predictions(self, served: list[ServedPrediction]) -> list[bool]:
        """``record_prediction`` for many served requests, in one transaction; for each, whether it was stored
        (a request id recorded before is not, and is logged, instead of failing the others)."""
        stored = self.store.insert_predictions([self._prediction_record(one) for one in served])
        counts = Counter((one.assignment.experiment_id, one.assignment.arm.value)
                         for one, recorded in zip(served, stored) if recorded)
        for (experiment_id, arm), count in counts.items():  # one metric update per arm, not per request
            self._observe("experiment_prediction", self._spec(experiment_id), arm, count)
        return stored

    def _prediction_record(self, served: ServedPrediction) -> PredictionRecord:
        assignment = served.assignment
        predicted_class, predicted_value = summarize_prediction(served.prediction,
                                                                self._task(assignment.experiment_id))
        return PredictionRecord(
            request_id=served.request_id, experiment_id=assignment.experiment_id, arm=assignment.arm,
            version=assignment.version, served_at=self.clock(), latency_ms=float(served.latency_ms),
            error=bool(served.error) or not finite_output(served.prediction), predicted_class=predicted_class,
            predicted_value=predicted_value, unit=assignment.unit, api_key_id=served.api_key_id)

    def record_shadows(self, answers: list[ShadowAnswer]) -> list[bool]:
        """Stores challengers' answers to copies of requests (kind=shadow), one transaction for the lot; for
        each, whether it was stored (an answer whose experiment ended meanwhile is not). A NaN/inf output
        counts as an error."""
        records = []
        for answer in answers:
            assignment = answer.assignment
            if assignment.shadow_version is None:
                raise BadRequest("this request was not copied to a shadow challenger",
                                 {"request_id": answer.request_id})
            predicted_class, predicted_value = summarize_prediction(answer.prediction,
                                                                    self._task(assignment.experiment_id))
            records.append(ShadowRecord(
                request_id=answer.request_id, experiment_id=assignment.experiment_id,
                version=assignment.shadow_version, served_at=self.clock(), latency_ms=float(answer.latency_ms),
                error=answer.error or not finite_output(answer.prediction), predicted_class=predicted_class,
                predicted_value=predicted_value))
        return self.store.insert_shadows(records)

    def shadow_prediction(self, experiment_id: str, request_id: str) -> ShadowRecord:
        """The challenger's stored answer to the copy of ``request_id``; NotFound when there is none (yet)."""
        record = self.store.get_shadow(request_id)
        if record is None or record.experiment_id != experiment_id:
            raise NotFound(f"experiment {experiment_id!r} has no shadow answer for request {request_id!r}",
                           {"experiment_id": experiment_id, "request_id": request_id})
        return record

    def authorize_outcome(self, prediction: PredictionRecord, reporter: OutcomeReporter | None) -> None:
        """Forbidden unless ``reporter`` may report this prediction's outcome (None: a trusted in-process
        caller, or an API without keys)."""
        if reporter is None or reporter.any_prediction:
            return
        details = {"request_id": prediction.request_id}
        # Checked before ownership: a read key that made its own predictions must not vote on production either.
        if self._spec(prediction.experiment_id).auto_apply and not self.settings.anonymous_outcomes_auto_apply:
            raise Forbidden("this experiment applies decisions by itself (auto_apply): its outcomes need a key of "
                            "outcome scope or an admin key (or EXPERIMENT_ANONYMOUS_OUTCOMES_AUTO_APPLY=true)", details)
        if prediction.api_key_id is not None and reporter.key_id != prediction.api_key_id:
            raise Forbidden("an outcome may be posted only with the API key that made the prediction, or with "
                            "a key of outcome scope", details)

    async def record_outcome_when_served(self, request_id: str, actual: float, pnl: float | None = None,
                                         reporter: OutcomeReporter | None = None) -> OutcomeRecord:
        """``record_outcome`` off the event loop, for an outcome that may arrive before its prediction's record:
        predictions are written behind their responses (a batch per commit), so for a request id this server
        issued in the last PENDING_RECORD_S seconds a NotFound is retried for up to ``outcome_wait_seconds``
        (the wait holds no thread). Any other unknown id is NotFound at once."""
        deadline = time.monotonic() + self.settings.outcome_wait_seconds
        flushed = False
        while True:
            try:
                return await asyncio.to_thread(self.record_outcome, request_id, actual, pnl, reporter)
            except NotFound:
                issued = issued_at(request_id)
                if issued is None or self.clock() - issued > PENDING_RECORD_S or time.monotonic() >= deadline:
                    raise
                if not flushed:  # most often its record waits in this worker's batch: write it now
                    flushed = True
                    await self.flush_pending_records()
                    continue
                await asyncio.sleep(OUTCOME_POLL_S)  # another worker served it: its batch lands shortly

    def record_outcome(self, request_id: str, actual: float, pnl: float | None = None,
                       reporter: OutcomeReporter | None = None) -> OutcomeRecord:
        """Scores a served prediction against what happened. NotFound for an unknown request id, Forbidden
        when ``reporter`` may not report it (authorize_outcome), Conflict when it already has an outcome.
        A failed or non-finite prediction scores as the worst case."""
        if not math.isfinite(actual) or (pnl is not None and not math.isfinite(pnl)):
            raise InvalidInput("actual and pnl must be finite numbers")
        prediction = self.store.get_prediction(request_id)
        self.authorize_outcome(prediction, reporter)
        task = self._task(prediction.experiment_id)
        correct = abs_error = None
        if task == "classification":
            if actual != int(actual):
                raise InvalidInput(f"classification outcome must be a class index, got {actual}")
            if prediction.predicted_class is not None:
                correct = prediction.predicted_class == int(actual)
            elif prediction.error:
                correct = False
        elif prediction.predicted_value is not None:
            abs_error = abs(actual - prediction.predicted_value)
        record = OutcomeRecord(request_id=request_id, experiment_id=prediction.experiment_id, arm=prediction.arm,
                               actual=actual, correct=correct, abs_error=abs_error, pnl=pnl,
                               recorded_at=self.clock(), worst_case=prediction.error)
        self.store.insert_outcome(record)
        self._observe("experiment_outcome", self._spec(prediction.experiment_id), prediction.arm.value)
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
                          target_accuracy_gain=pick("target_accuracy_gain"),
                          min_units_per_arm=pick("min_units_per_arm"),
                          msprt_tau=o.msprt_tau)

    async def analyze_answered(self, experiment_id: str) -> Analysis:
        """``analyze`` once the records this worker holds behind its answers are written (they wait up to
        EXPERIMENT_RECORD_LINGER_MS for company): it counts every request this worker has answered."""
        await self.flush_pending_records()
        return await asyncio.to_thread(self.analyze, experiment_id)

    def analyze(self, experiment_id: str) -> Analysis:
        experiment = self.store.get_experiment(experiment_id)
        self._spec(experiment_id)  # observers see the experiment before a decision is applied
        thresholds = self.thresholds(experiment)
        ctx = DecisionContext(task=experiment.task, thresholds=thresholds, mode=experiment.mode,
                              variance=experiment.variance, cluster_seconds=experiment.cluster_seconds,
                              traffic_split=experiment.traffic_split)
        horizon = experiment.planned_outcomes if experiment.mode is ExperimentMode.FIXED else None
        reached = None
        if horizon is not None:
            reached = self.store.outcome_count(experiment_id) >= horizon
        # At the horizon the data is frozen (the first planned outcomes), so every later analysis repeats
        # the one decision; before it there is no decision to take.
        data = self.store.arm_data(experiment_id, first_outcomes=horizon if reached else None)
        if experiment.kind is ExperimentKind.SHADOW:  # the challenger answered copies: its arm is its shadow answers
            data[Arm.CHALLENGER] = self.store.shadow_data(experiment_id)
            result = self._decide_shadow(experiment_id, data, ctx)
        else:
            result = decide(data[Arm.CHAMPION], data[Arm.CHALLENGER], ctx)
        if reached is False:
            result.decision = Decision.CONTINUE
            result.reasons = [f"fixed horizon: {self.store.outcome_count(experiment_id)} of {horizon} planned "
                              "outcomes; the experiment decides once, at its planned size"]
        applied = False
        if experiment.auto_apply and experiment.status is ExperimentStatus.RUNNING:
            if reached and result.decision is Decision.CONTINUE:
                result.reasons.insert(0, f"fixed horizon of {horizon} outcomes reached without a promotion or "
                                         "rollback: experiment stopped, champion kept")
                self._end(experiment, ExperimentStatus.STOPPED, "; ".join(result.reasons))
            else:
                applied = self._apply(experiment, result.decision, "; ".join(result.reasons))
            experiment = self.store.get_experiment(experiment_id)
        comparisons = [c for c in (result.primary, result.latency, result.error_rate, result.pnl) if c is not None]
        periods = self.settings.sharpe_periods_per_year
        worst = worst_abs_error(data[Arm.CHAMPION], data[Arm.CHALLENGER]) if experiment.task == "regression" else None
        arms = {}
        for arm in Arm:
            metrics = arm_metrics(data[arm], experiment.task, periods, worst)
            if ctx.time_buckets:
                _, times, units = data[arm].primary_values(experiment.task, worst)
                metrics.time_buckets = int(np.unique(np.floor(times / ctx.cluster_seconds)).size)
                metrics.scored_units, metrics.effective_units = scored_units(units, times, times.size, ctx)
            arms[arm] = metrics
        analysis = Analysis(experiment=experiment, thresholds=thresholds, arms=arms, decision=result.decision,
                            reasons=result.reasons, comparisons=comparisons, applied=applied,
                            horizon_reached=reached, reachability=result.reachability)
        self._observe("experiment_analysis", analysis)
        return analysis

    def _decide_shadow(self, experiment_id: str, data: dict[Arm, ArmData], ctx: DecisionContext) -> DecisionResult:
        """The paired test on the requests both models answered and that have an outcome: each model scored on
        the same request (a failed or non-finite answer as the worst case, as in a split)."""
        rows = self.store.paired_rows(experiment_id)
        if ctx.task == "classification":
            def score(classes: np.ndarray, failed: np.ndarray) -> np.ndarray:
                right = (classes == rows.actual).astype(np.float64)
                return np.where(failed | np.isnan(classes), 0.0, right)
            champion = score(rows.champion_class, rows.champion_error)
            challenger = score(rows.challenger_class, rows.challenger_error)
        else:
            worst = worst_abs_error(data[Arm.CHAMPION], data[Arm.CHALLENGER])
            def score(values: np.ndarray, failed: np.ndarray) -> np.ndarray:
                errors = np.abs(values - rows.actual)
                return np.where(failed | np.isnan(errors), np.nan if worst is None else worst, errors)
            champion = score(rows.champion_value, rows.champion_error)
            challenger = score(rows.challenger_value, rows.challenger_error)
            keep = ~(np.isnan(champion) | np.isnan(challenger))
            champion, challenger = champion[keep], challenger[keep]
            rows = replace(rows, served_at=rows.served_at[keep], units=rows.units[keep])
        return decide_paired(PairedData(champion=champion, challenger=challenger, served_at=rows.served_at,
                                        units=rows.units), ctx)

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

    def _end(self, experiment: Experiment, status: ExperimentStatus, reason: str) -> bool:
        won = self.store.transition(experiment.id, status, reason, self.clock())
        if won:
            log.warning("experiment %s %s: %s", experiment.id, status.value, reason)
        self._invalidate(experiment.model_name)
        return won

    def _apply(self, experiment: Experiment, decision: Decision, reason: str) -> bool:
        """Acts on a decision once (compare-and-set on the status, so one worker wins).

        A promotion the registry refuses (a domain error: validation withdrawn, version archived since
        create) stops the experiment with that reason: retrying could only fail again on every analysis.
        Any other failure (the registry unreachable) puts it back to running and propagates."""
        if decision is Decision.CONTINUE:
            return False
        now = self.clock()
        if decision is Decision.ROLLBACK:
            won = self.store.transition(experiment.id, ExperimentStatus.ROLLED_BACK, reason, now)
            if won:
                log.warning("experiment %s rolled back, champion %s kept: %s", experiment.id,
                            experiment.champion_version, reason)
                self._observe("experiment_applied_decision", experiment, decision.value)
        else:
            won = self.store.transition(experiment.id, ExperimentStatus.PROMOTED, reason, now)
            if won:
                try:
                    if self.promoter is None:  # create() refuses auto_apply without one
                        raise BadRequest("auto_apply needs a promoter; this service was built without one")
                    self.promoter(experiment.model_name, experiment.challenger_version)
                except PredictionServiceError as exc:
                    self.store.transition(experiment.id, ExperimentStatus.STOPPED,
                                          f"promotion of {experiment.challenger_version} failed: {exc.message}; "
                                          f"champion kept (decision was: {reason})", now,
                                          expected=ExperimentStatus.PROMOTED)
                    log.error("experiment %s: promotion of %s %s refused, experiment stopped: %s", experiment.id,
                              experiment.model_name, experiment.challenger_version, exc.message)
                    self._invalidate(experiment.model_name)
                    return False
                except BaseException:
                    self.store.transition(experiment.id, ExperimentStatus.RUNNING, "", now,
                                          expected=ExperimentStatus.PROMOTED)
                    raise
                log.warning("experiment %s promoted %s %s: %s", experiment.id, experiment.model_name,
                            experiment.challenger_version, reason)
                self._observe("experiment_applied_decision", experiment, decision.value)
        self._invalidate(experiment.model_name)
        return won
