"""ExperimentService over a real SQLite file: lifecycle, validation, outcomes, persistence, auto-apply."""

from __future__ import annotations

import numpy as np
import pytest

from prediction_service.errors import BadRequest, Conflict, InvalidInput, NotFound, VersionNotFound
from prediction_service.experiments.models import (Arm, Decision, ExperimentMode, ExperimentSpec,
                                                   ExperimentStatus, ThresholdOverrides)
from prediction_service.experiments.service import ExperimentService, summarize_prediction
from prediction_service.experiments.store import ExperimentStore
from prediction_service.settings import ExperimentSettings

from .conftest import RecordingPromoter, version_exists

pytestmark = pytest.mark.usefixtures("state_backend")  # SQLite and PostgreSQL


def spec(**overrides) -> ExperimentSpec:
    values = dict(model_name="sentiment", champion_version="1.0.0", challenger_version="1.1.0", traffic_split=0.5)
    return ExperimentSpec(**(values | overrides))


def serve(service: ExperimentService, n: int, *, challenger_accuracy: float, champion_accuracy: float = 0.6,
          challenger_latency: float = 10.0, seed: int = 0, prefix: str = "r") -> None:
    """Routes n requests, records predictions (3-class probabilities) and their outcomes."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        assignment = service.route("sentiment", f"{prefix}-key-{i}")
        assert assignment is not None
        challenger = assignment.arm is Arm.CHALLENGER
        actual = int(rng.integers(0, 3))
        hit = rng.random() < (challenger_accuracy if challenger else champion_accuracy)
        predicted = actual if hit else (actual + 1) % 3
        probs = np.full((1, 3), 0.1, dtype=np.float32)
        probs[0, predicted] = 0.8
        latency = rng.normal(challenger_latency if challenger else 10.0, 1.0)
        service.record_prediction(f"{prefix}-{i}", assignment, latency, False, probs)
        service.record_outcome(f"{prefix}-{i}", actual, pnl=float(rng.normal(1.0 if hit else -1.0, 0.5)))


def test_create_get_list_stop(service: ExperimentService):
    exp = service.create(spec())
    assert exp.status is ExperimentStatus.RUNNING and exp.traffic_split == 0.5
    assert service.get(exp.id) == exp
    assert [e.id for e in service.list()] == [exp.id]
    assert service.list(model_name="price") == []
    stopped = service.stop(exp.id)
    assert stopped.status is ExperimentStatus.STOPPED and stopped.ended_at is not None
    assert service.route("sentiment", "k") is None
    with pytest.raises(Conflict):
        service.stop(exp.id)
    with pytest.raises(NotFound):
        service.get("nope")


def test_second_running_experiment_for_a_model_conflicts(service: ExperimentService):
    first = service.create(spec())
    with pytest.raises(Conflict) as info:
        service.create(spec(challenger_version="1.2.0"))
    assert info.value.details["experiment_id"] == first.id
    assert len(service.list()) == 1
    service.create(spec(model_name="price", champion_version="1.0.0", challenger_version="2.0.0"))
    service.stop(first.id)
    service.create(spec(challenger_version="1.2.0"))  # allowed once the first one ended
    assert len(service.list(status=ExperimentStatus.RUNNING)) == 2


@pytest.mark.parametrize("bad, error", [
    (dict(challenger_version="9.9.9"), VersionNotFound),
    (dict(model_name="unknown"), VersionNotFound),
    (dict(challenger_version="1.0.0"), BadRequest),
])
def test_invalid_specs_create_nothing(service: ExperimentService, bad, error):
    with pytest.raises(error):
        service.create(spec(**bad))
    assert service.list() == []
    assert service.route(bad.get("model_name", "sentiment"), "k") is None


@pytest.mark.parametrize("split", [0.0, 1.0, 1.5, -0.1])
def test_split_outside_open_interval_is_rejected(service: ExperimentService, split):
    with pytest.raises(ValueError):
        spec(traffic_split=split)
    with pytest.raises(InvalidInput):  # a spec that skipped validation is still refused
        service.create(ExperimentSpec.model_construct(**spec().model_dump() | {"traffic_split": split}))
    assert service.list() == []


def test_default_split_is_ten_percent():
    assert ExperimentSpec(model_name="m", champion_version="1", challenger_version="2").traffic_split == 0.10


def test_auto_apply_without_promoter_is_refused(db_path):
    service = ExperimentService(ExperimentStore(db_path), ExperimentSettings(), None, version_exists)
    with pytest.raises(BadRequest):
        service.create(spec(auto_apply=True))


def test_outcomes_unknown_and_duplicate(service: ExperimentService):
    exp = service.create(spec())
    with pytest.raises(NotFound):
        service.record_outcome("never-served", 1)
    assignment = service.route("sentiment", "k")
    service.record_prediction("req-1", assignment, 3.0, False, np.array([[0.1, 0.7, 0.2]]))
    with pytest.raises(Conflict):
        service.record_prediction("req-1", assignment, 3.0, False, None)
    outcome = service.record_outcome("req-1", 1, pnl=2.5)
    assert outcome.correct is True and outcome.experiment_id == exp.id and outcome.pnl == 2.5
    with pytest.raises(Conflict):
        service.record_outcome("req-1", 2)
    with pytest.raises(InvalidInput):
        service.record_outcome("req-1", 1.5)
    with pytest.raises(InvalidInput):
        service.record_outcome("req-1", float("nan"))
    data = service.store.arm_data(exp.id)
    assert sum(d.actual.size for d in data.values()) == 1  # the refused outcomes left nothing behind


def test_regression_outcome_scores_absolute_error(service: ExperimentService):
    service.create(spec(model_name="price", champion_version="1.0.0", challenger_version="2.0.0",
                        task="regression"))
    assignment = service.route("price", "k")
    service.record_prediction("p-1", assignment, 1.0, False, np.array([[101.5]], dtype=np.float32))
    assert service.record_outcome("p-1", 100.0).abs_error == pytest.approx(1.5)
    service.record_prediction("p-2", assignment, 1.0, True, None)  # failed request: counted, not scored
    outcome = service.record_outcome("p-2", 100.0)
    assert outcome.abs_error is None and outcome.correct is None


def test_summarize_prediction():
    assert summarize_prediction(np.array([[0.1, 0.2, 0.7]]), "classification") == (2, None)
    assert summarize_prediction(np.array([0.8]), "classification") == (1, None)
    assert summarize_prediction(np.array([2], dtype=np.int64), "classification") == (2, None)
    assert summarize_prediction(np.array([[3.5], [4.0]]), "regression") == (None, 3.5)
    assert summarize_prediction(None, "regression") == (None, None)


def test_state_survives_reopening_the_store(db_path, promoter):
    first = ExperimentService(ExperimentStore(db_path), ExperimentSettings(min_samples_per_arm=10), promoter,
                              version_exists)
    exp = first.create(spec())
    serve(first, 60, challenger_accuracy=0.6)
    first.store.close()
    again = ExperimentService(ExperimentStore(db_path), ExperimentSettings(min_samples_per_arm=10), promoter,
                              version_exists)
    assert again.get(exp.id) == exp
    assert again.route("sentiment", "key-1") == first.route("sentiment", "key-1")
    analysis = again.analyze(exp.id)
    assert sum(m.requests for m in analysis.arms.values()) == 60
    assert sum(m.outcomes for m in analysis.arms.values()) == 60
    with pytest.raises(Conflict):
        again.record_outcome("r-0", 1)


def test_stop_seen_by_another_worker_after_ttl(db_path, promoter):
    worker_a = ExperimentService(ExperimentStore(db_path), ExperimentSettings(route_cache_ttl_seconds=0), promoter,
                                 version_exists)
    worker_b = ExperimentService(ExperimentStore(db_path), ExperimentSettings(route_cache_ttl_seconds=3600),
                                 promoter, version_exists)
    exp = worker_a.create(spec())
    assert worker_b.route("sentiment", "k") is not None  # now cached for an hour in worker b
    worker_b.stop(exp.id)  # the stopping worker invalidates its own cache at once
    assert worker_b.route("sentiment", "k") is None
    assert worker_a.route("sentiment", "k") is None  # ttl 0: re-reads SQLite


def test_analyze_end_to_end_promotes_and_applies(make_service, promoter: RecordingPromoter):
    service = make_service(min_samples_per_arm=100)
    exp = service.create(spec(auto_apply=True))
    serve(service, 150, challenger_accuracy=0.95, seed=1)  # one arm is always under 100
    early = service.analyze(exp.id)
    assert early.decision is Decision.CONTINUE and "insufficient samples" in early.reasons[0]
    serve(service, 800, challenger_accuracy=0.95, seed=2, prefix="s")
    analysis = service.analyze(exp.id)
    assert analysis.decision is Decision.PROMOTE and analysis.applied
    assert analysis.experiment.status is ExperimentStatus.PROMOTED
    assert promoter.calls == [("sentiment", "1.1.0")]
    champion, challenger = analysis.arms[Arm.CHAMPION], analysis.arms[Arm.CHALLENGER]
    assert challenger.accuracy > 0.9 > 0.7 > champion.accuracy
    assert challenger.f1_macro is not None and challenger.sharpe is not None and challenger.win_rate > 0.8
    assert {c.metric for c in analysis.comparisons} >= {"accuracy", "latency_ms", "error_rate", "pnl"}
    assert service.route("sentiment", "k") is None
    assert not service.analyze(exp.id).applied  # applied once only
    assert promoter.calls == [("sentiment", "1.1.0")]


def test_rollback_keeps_champion(make_service, promoter: RecordingPromoter):
    service = make_service(min_samples_per_arm=50)
    exp = service.create(spec(auto_apply=True, mode=ExperimentMode.SEQUENTIAL))
    serve(service, 300, challenger_accuracy=0.6, challenger_latency=20.0)
    analysis = service.analyze(exp.id)
    assert analysis.decision is Decision.ROLLBACK and "latency" in analysis.reasons[0]
    assert analysis.experiment.status is ExperimentStatus.ROLLED_BACK
    assert promoter.calls == []


def test_failed_promotion_leaves_experiment_running(db_path):
    failing = RecordingPromoter(fail=True)
    service = ExperimentService(ExperimentStore(db_path), ExperimentSettings(min_samples_per_arm=50), failing,
                                version_exists)
    exp = service.create(spec(auto_apply=True))
    serve(service, 800, challenger_accuracy=0.95)  # PROMOTE whatever the arms (batch means: n^(2/3) batches' df)
    with pytest.raises(RuntimeError):
        service.analyze(exp.id)
    assert service.get(exp.id).status is ExperimentStatus.RUNNING


def test_threshold_overrides_apply(service: ExperimentService):
    exp = service.create(spec(min_samples_per_arm=7, thresholds=ThresholdOverrides(alpha=0.01)))
    th = service.thresholds(exp)
    assert th.alpha == 0.01 and th.min_samples_per_arm == 7 and th.promote_min_accuracy_gain == 0.01
    assert th.target_accuracy_gain == 0.02 and th.min_units_per_arm == 30


def test_recorded_in_one_batch_a_duplicate_request_id_is_refused_alone(service: ExperimentService):
    from prediction_service.experiments.service import ServedPrediction

    service.create(spec())
    assignment = service.route("sentiment", "k")
    service.record_prediction("seen", assignment, 3.0, False, np.array([[0.1, 0.7, 0.2]]))
    batch = [ServedPrediction(request_id, assignment, 2.0, False, np.array([[0.8, 0.1, 0.1]]))
             for request_id in ("a", "seen", "b")]
    assert service.record_predictions(batch) == [True, False, True]
    assert service.store.get_prediction("b").predicted_class == 0
    assert service.store.get_prediction("seen").latency_ms == 3.0  # the first record stands


async def test_an_outcome_posted_before_its_prediction_is_recorded_waits_for_the_record(service: ExperimentService):
    import threading

    from prediction_service.request_ids import new_request_id

    service.create(spec())
    assignment = service.route("sentiment", "k")
    request_id = new_request_id()  # issued now: its record may still be on its way
    writer = threading.Timer(0.2, service.record_prediction, (request_id, assignment, 2.0, False,
                                                             np.array([[0.1, 0.8, 0.1]])))
    writer.start()
    outcome = await service.record_outcome_when_served(request_id, 1)
    writer.join()
    assert outcome.correct is True

    lookups = []
    get_prediction = service.store.get_prediction
    service.store.get_prediction = lambda rid: lookups.append(rid) or get_prediction(rid)
    with pytest.raises(NotFound):
        await service.record_outcome_when_served("a-callers-own-id", 1)  # not one of ours: looked up once
    with pytest.raises(NotFound):
        await service.record_outcome_when_served("0" * 32, 1)  # not a UUIDv7 of ours either
    assert lookups == ["a-callers-own-id", "0" * 32]
